import GRDB
import GRPCCore
import ShopProtos
import ShopSupport
import SwiftProtobuf

/// `shop.v1.PaymentService` over its own SQLite database.
///
/// A charge happens once per idempotency key: the key is unique in the database and the
/// check-then-insert runs in one write transaction, so repeats — a client's retry, the mesh's
/// retry, another instance racing on the same file — return the first payment.
public struct PaymentService: Shop_V1_PaymentService.SimpleServiceProtocol {
  private let database: DatabasePool
  /// A charge above this many minor units is declined.
  public let chargeLimitMinorUnits: Int64

  /// Opens (creating and migrating if needed) the database at `path`.
  public init(databasePath path: String, chargeLimitMinorUnits: Int64 = 1_000_000) throws {
    self.database = try openShopDatabase(path: path, migrator: Self.migrator)
    self.chargeLimitMinorUnits = chargeLimitMinorUnits
  }

  public func charge(
    request: Shop_V1_ChargeRequest, context: ServerContext
  ) async throws -> Shop_V1_Payment {
    try Validate.required(request.idempotencyKey, "idempotency_key", maxLength: 255)
    try Validate.required(request.orderID, "order_id")
    guard request.hasAmount else { throw Validate.invalid("amount", "is required") }
    try Validate.money(request.amount, "amount", positive: true)
    let limit = chargeLimitMinorUnits
    return try await database.write { db in
      if let row = try Row.fetchOne(
        db, sql: "SELECT * FROM payments WHERE idempotency_key = ?",
        arguments: [request.idempotencyKey])
      {
        let first = Self.payment(from: row)
        guard first.orderID == request.orderID, first.amount == request.amount else {
          throw RPCError(
            code: .failedPrecondition,
            message: "idempotency_key \(request.idempotencyKey) was already used for "
              + "\(first.amount.minorUnits) \(first.amount.currencyCode) on order "
              + "\(first.orderID); use a new key for a different charge")
        }
        return first
      }
      if let reason = try String.fetchOne(
        db, sql: "SELECT reason FROM cancelled_charges WHERE idempotency_key = ?",
        arguments: [request.idempotencyKey])
      {
        throw RPCError(
          code: .failedPrecondition,
          message: "charge declined: idempotency_key \(request.idempotencyKey) was cancelled"
            + (reason.isEmpty ? "" : " (\(reason))"))
      }
      guard request.amount.minorUnits <= limit else {
        throw RPCError(
          code: .failedPrecondition,
          message: "charge declined: \(request.amount.minorUnits) \(request.amount.currencyCode) "
            + "minor units exceeds the limit of \(limit)")
      }
      let now = nowNanos()
      let payment = Shop_V1_Payment.with {
        $0.id = ResourceID.make(prefix: "pay")
        $0.orderID = request.orderID
        $0.amount = request.amount
        $0.status = .charged
        $0.idempotencyKey = request.idempotencyKey
        $0.createTime = Google_Protobuf_Timestamp(nanosSinceEpoch: now)
        $0.updateTime = $0.createTime
      }
      try db.execute(
        sql: """
          INSERT INTO payments (id, idempotency_key, order_id, currency_code, minor_units, status,
                                refund_reason, create_time_ns, update_time_ns)
          VALUES (?, ?, ?, ?, ?, ?, '', ?, ?)
          """,
        arguments: [
          payment.id, payment.idempotencyKey, payment.orderID, payment.amount.currencyCode,
          payment.amount.minorUnits, payment.status.rawValue, now, now,
        ])
      return payment
    }
  }

  public func refund(
    request: Shop_V1_RefundRequest, context: ServerContext
  ) async throws -> Shop_V1_Payment {
    try Validate.required(request.id, "id")
    guard request.reason.count <= 500 else {
      throw Validate.invalid("reason", "is longer than 500 characters")
    }
    return try await database.write { db in
      // Refund is idempotent: a refunded payment is returned unchanged.
      try Self.refund(try Self.fetchPayment(db, id: request.id), reason: request.reason, db)
    }
  }

  public func cancelCharge(
    request: Shop_V1_CancelChargeRequest, context: ServerContext
  ) async throws -> Shop_V1_CancelChargeResponse {
    try Validate.required(request.idempotencyKey, "idempotency_key", maxLength: 255)
    guard request.reason.count <= 500 else {
      throw Validate.invalid("reason", "is longer than 500 characters")
    }
    return try await database.write { db in
      // One transaction, as Charge's check-then-insert is: a charge either landed before this
      // (and is refunded here) or comes after it (and finds the key cancelled).
      try db.execute(
        sql: """
          INSERT INTO cancelled_charges (idempotency_key, reason, create_time_ns) VALUES (?, ?, ?)
          ON CONFLICT (idempotency_key) DO NOTHING
          """,
        arguments: [request.idempotencyKey, request.reason, nowNanos()])
      var response = Shop_V1_CancelChargeResponse()
      guard
        let row = try Row.fetchOne(
          db, sql: "SELECT * FROM payments WHERE idempotency_key = ?",
          arguments: [request.idempotencyKey])
      else { return response }
      response.payment = try Self.refund(Self.payment(from: row), reason: request.reason, db)
      return response
    }
  }

  public func getPayment(
    request: Shop_V1_GetPaymentRequest, context: ServerContext
  ) async throws -> Shop_V1_Payment {
    try Validate.required(request.id, "id")
    return try await database.read { db in try Self.fetchPayment(db, id: request.id) }
  }

  /// Refunds a charged payment in `db`'s transaction; any other is returned as it is.
  private static func refund(
    _ payment: Shop_V1_Payment, reason: String, _ db: Database
  ) throws
    -> Shop_V1_Payment
  {
    guard payment.status == .charged else { return payment }
    var refunded = payment
    let now = nowNanos()
    try db.execute(
      sql: "UPDATE payments SET status = ?, refund_reason = ?, update_time_ns = ? WHERE id = ?",
      arguments: [Shop_V1_PaymentStatus.refunded.rawValue, reason, now, payment.id])
    refunded.status = .refunded
    refunded.refundReason = reason
    refunded.updateTime = Google_Protobuf_Timestamp(nanosSinceEpoch: now)
    return refunded
  }

  private static func fetchPayment(_ db: Database, id: String) throws -> Shop_V1_Payment {
    guard
      let row = try Row.fetchOne(db, sql: "SELECT * FROM payments WHERE id = ?", arguments: [id])
    else { throw RPCError(code: .notFound, message: "payment \(id) not found") }
    return payment(from: row)
  }

  private static func payment(from row: Row) -> Shop_V1_Payment {
    .with {
      $0.id = row["id"]
      $0.orderID = row["order_id"]
      $0.amount = .with {
        $0.currencyCode = row["currency_code"]
        $0.minorUnits = row["minor_units"]
      }
      $0.status = Shop_V1_PaymentStatus(rawValue: row["status"]) ?? .unspecified
      $0.idempotencyKey = row["idempotency_key"]
      $0.refundReason = row["refund_reason"]
      $0.createTime = Google_Protobuf_Timestamp(nanosSinceEpoch: row["create_time_ns"])
      $0.updateTime = Google_Protobuf_Timestamp(nanosSinceEpoch: row["update_time_ns"])
    }
  }

  static var migrator: DatabaseMigrator {
    var migrator = DatabaseMigrator()
    migrator.registerMigration("v1: payments") { db in
      try db.execute(
        sql: """
          CREATE TABLE payments (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            idempotency_key TEXT NOT NULL UNIQUE,
            order_id TEXT NOT NULL,
            currency_code TEXT NOT NULL,
            minor_units INTEGER NOT NULL,
            status INTEGER NOT NULL,
            refund_reason TEXT NOT NULL,
            create_time_ns INTEGER NOT NULL,
            update_time_ns INTEGER NOT NULL
          )
          """)
    }
    migrator.registerMigration("v2: cancelled charges") { db in
      try db.execute(
        sql: """
          CREATE TABLE cancelled_charges (
            idempotency_key TEXT PRIMARY KEY,
            reason TEXT NOT NULL,
            create_time_ns INTEGER NOT NULL
          )
          """)
    }
    return migrator
  }
}
