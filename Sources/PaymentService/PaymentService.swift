import GRPCCore
import Logging
import ShopProtos
import ShopSupport
import SwiftProtobuf

/// `shop.v1.PaymentService` over its own database (SQLite or PostgreSQL).
///
/// A charge happens once per idempotency key: the key is unique in the database and the
/// check-then-insert runs alone for its key (`PaymentRepository`), so repeats — a client's
/// retry, the mesh's retry, another instance on the same database — return the first payment.
public struct PaymentService: Shop_V1_PaymentService.SimpleServiceProtocol {
  private let repository: any PaymentRepository
  /// A charge above this many minor units is declined.
  public let chargeLimitMinorUnits: Int64

  public init(repository: any PaymentRepository, chargeLimitMinorUnits: Int64 = 1_000_000) {
    self.repository = repository
    self.chargeLimitMinorUnits = chargeLimitMinorUnits
  }

  /// Over the SQLite file at `path` (created and migrated if needed).
  public init(databasePath path: String, chargeLimitMinorUnits: Int64 = 1_000_000) throws {
    self.init(
      repository: try SQLitePaymentRepository(path: path),
      chargeLimitMinorUnits: chargeLimitMinorUnits)
  }

  /// Over the database `location` names.
  public static func open(
    _ location: ShopDatabaseLocation, chargeLimitMinorUnits: Int64 = 1_000_000, logger: Logger
  ) async throws -> PaymentService {
    switch location {
    case .sqlite(let path):
      return try PaymentService(databasePath: path, chargeLimitMinorUnits: chargeLimitMinorUnits)
    case .postgres(let postgres):
      return PaymentService(
        repository: try await PostgresPaymentRepository(postgres, logger: logger),
        chargeLimitMinorUnits: chargeLimitMinorUnits)
    }
  }

  public func charge(
    request: Shop_V1_ChargeRequest, context: ServerContext
  ) async throws -> Shop_V1_Payment {
    try Validate.required(request.idempotencyKey, "idempotency_key", maxLength: 255)
    try Validate.required(request.orderID, "order_id")
    guard request.hasAmount else { throw Validate.invalid("amount", "is required") }
    try Validate.money(request.amount, "amount", positive: true)
    let limit = chargeLimitMinorUnits
    let outcome = try await repository.charge(key: request.idempotencyKey) {
      guard request.amount.minorUnits <= limit else {
        throw RPCError(
          code: .failedPrecondition,
          message: "charge declined: \(request.amount.minorUnits) \(request.amount.currencyCode) "
            + "minor units exceeds the limit of \(limit)")
      }
      let now = nowNanos()
      return Shop_V1_Payment.with {
        $0.id = ResourceID.make(prefix: "pay")
        $0.orderID = request.orderID
        $0.amount = request.amount
        $0.status = .charged
        $0.idempotencyKey = request.idempotencyKey
        $0.createTime = Google_Protobuf_Timestamp(nanosSinceEpoch: now)
        $0.updateTime = $0.createTime
      }
    }
    switch outcome {
    case .inserted(let payment):
      return payment
    case .existing(let first):
      guard first.orderID == request.orderID, first.amount == request.amount else {
        throw RPCError(
          code: .failedPrecondition,
          message: "idempotency_key \(request.idempotencyKey) was already used for "
            + "\(first.amount.minorUnits) \(first.amount.currencyCode) on order "
            + "\(first.orderID); use a new key for a different charge")
      }
      return first
    case .cancelled(let reason):
      throw RPCError(
        code: .failedPrecondition,
        message: "charge declined: idempotency_key \(request.idempotencyKey) was cancelled"
          + (reason.isEmpty ? "" : " (\(reason))"))
    }
  }

  public func refund(
    request: Shop_V1_RefundRequest, context: ServerContext
  ) async throws -> Shop_V1_Payment {
    try Validate.required(request.id, "id")
    guard request.reason.count <= 500 else {
      throw Validate.invalid("reason", "is longer than 500 characters")
    }
    // Refund is idempotent: a refunded payment is returned unchanged.
    guard let payment = try await repository.refund(id: request.id, reason: request.reason) else {
      throw RPCError(code: .notFound, message: "payment \(request.id) not found")
    }
    return payment
  }

  public func cancelCharge(
    request: Shop_V1_CancelChargeRequest, context: ServerContext
  ) async throws -> Shop_V1_CancelChargeResponse {
    try Validate.required(request.idempotencyKey, "idempotency_key", maxLength: 255)
    guard request.reason.count <= 500 else {
      throw Validate.invalid("reason", "is longer than 500 characters")
    }
    // A charge either landed before this (and is refunded here) or comes after it (and finds
    // the key cancelled).
    var response = Shop_V1_CancelChargeResponse()
    if let payment = try await repository.cancel(
      key: request.idempotencyKey, reason: request.reason)
    {
      response.payment = payment
    }
    return response
  }

  public func getPayment(
    request: Shop_V1_GetPaymentRequest, context: ServerContext
  ) async throws -> Shop_V1_Payment {
    try Validate.required(request.id, "id")
    guard let payment = try await repository.payment(id: request.id) else {
      throw RPCError(code: .notFound, message: "payment \(request.id) not found")
    }
    return payment
  }
}
