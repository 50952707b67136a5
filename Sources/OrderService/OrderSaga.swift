import Foundation
import GRDB
import GRPCCore
import Logging
import ServiceLifecycle
import ShopProtos
import ShopSupport
import SwiftProtobuf
import Synchronization

/// What the order saga asks of payments.
public struct PaymentsClient: Sendable {
  public var charge: @Sendable (Shop_V1_ChargeRequest) async throws -> Shop_V1_Payment
  public var cancelCharge:
    @Sendable (Shop_V1_CancelChargeRequest) async throws -> Shop_V1_CancelChargeResponse

  public init(
    charge: @escaping @Sendable (Shop_V1_ChargeRequest) async throws -> Shop_V1_Payment,
    cancelCharge:
      @escaping @Sendable (Shop_V1_CancelChargeRequest) async throws ->
      Shop_V1_CancelChargeResponse
  ) {
    self.charge = charge
    self.cancelCharge = cancelCharge
  }

  /// Calls a `shop.v1.PaymentService` client, each call with `timeout`.
  public init(_ client: Shop_V1_PaymentService.Client<some ClientTransport>, timeout: Duration) {
    var options = CallOptions.defaults
    options.timeout = timeout
    let callOptions = options
    self.charge = { try await client.charge($0, options: callOptions) }
    self.cancelCharge = { try await client.cancelCharge($0, options: callOptions) }
  }
}

/// How a saga step that runs later, in the background, rejoins the trace of the call that
/// started the saga: `capture` gives the current trace context as headers (stored with the
/// saga), `resume` runs a step under a span in the trace those headers name.
public struct SagaTracing: Sendable {
  public var capture: @Sendable () -> [String: String]
  public var resume:
    @Sendable (
      _ name: String, _ headers: [String: String], _ step: @Sendable () async throws -> Void
    ) async throws -> Void

  public init(
    capture: @escaping @Sendable () -> [String: String],
    resume:
      @escaping @Sendable (String, [String: String], @Sendable () async throws -> Void)
      async throws -> Void
  ) {
    self.capture = capture
    self.resume = resume
  }
}

/// The order saga: PENDING → payments.Charge (the order id is the idempotency key) →
/// CONFIRMED; a declined charge → CANCELLED with the reason; no answer within `timeout` (and at
/// least one attempt made) → CANCELLED, then payments.CancelCharge until payments answers
/// (compensation: a charge that landed is refunded, one still on its way is declined).
///
/// The saga's state is a row in `sagas`, written in the same transaction as each change of the
/// order, so a process killed at any point resumes where it was. A step is worked under a
/// lease (`lease_owner`, `lease_until_ns`): instances sharing the database each claim due sagas
/// and work only those. A lease that runs out — its holder died or hung — lets another claim
/// the saga; a step done twice is harmless, because the charge is idempotent by key and every
/// change of an order is conditional on the state it expects.
public final class OrderSaga: Sendable {
  public struct Settings: Sendable {
    /// A pending order whose charge did not complete in this long is cancelled.
    public var timeout: Duration = .seconds(30)
    /// How long a claim lasts; more than a step takes.
    public var lease: Duration = .seconds(10)
    /// The limit on one call to payments.
    public var callTimeout: Duration = .seconds(3)
    /// How often the worker looks for due sagas when nothing nudges it.
    public var pollInterval: Duration = .milliseconds(250)
    public init() {}
  }

  enum Step: String {
    case charge
    case cancelCharge = "cancel_charge"
    case done
  }

  let database: DatabasePool
  let payments: PaymentsClient
  let settings: Settings
  let tracing: SagaTracing?
  /// This instance's name in leases.
  let owner = ResourceID.make(prefix: "saga-worker")
  let logger: Logger

  init(
    database: DatabasePool, payments: PaymentsClient, settings: Settings, tracing: SagaTracing?,
    logger: Logger
  ) {
    self.database = database
    self.payments = payments
    self.settings = settings
    self.tracing = tracing
    self.logger = logger
  }

  /// The trace context to store with a saga begun now (read outside the database's queue,
  /// where the task's context is not).
  func currentTraceHeaders() -> [String: String] { tracing?.capture() ?? [:] }

  /// Writes the saga of a new order, claimed by this instance, in the order's transaction.
  func begin(
    _ db: Database, orderID: String, now: Int64, traceHeaders headers: [String: String]
  )
    throws
  {
    try db.execute(
      sql: """
        INSERT INTO sagas (order_id, step, attempts, deadline_ns, next_attempt_ns, lease_owner,
                           lease_until_ns, last_error, trace_headers, update_time_ns)
        VALUES (?, 'charge', 0, ?, ?, ?, ?, '', ?, ?)
        """,
      arguments: [
        orderID, now + settings.timeout.nanoseconds, now, owner, now + settings.lease.nanoseconds,
        Self.encode(headers), now,
      ])
  }

  /// Moves a pending order's saga to compensation (the caller cancelled the order in `db`'s
  /// transaction). The lease is cleared, so whoever holds it stops and the compensation is due
  /// at once.
  func compensate(_ db: Database, orderID: String, reason: String, now: Int64) throws {
    try db.execute(
      sql: """
        UPDATE sagas SET step = 'cancel_charge', next_attempt_ns = ?, lease_owner = ?,
                         lease_until_ns = ?, last_error = ?, update_time_ns = ?
        WHERE order_id = ? AND step != 'done'
        """,
      arguments: [now, owner, now + settings.lease.nanoseconds, reason, now, orderID])
  }

  /// Works the saga of `orderID`, which this instance has claimed, until it is done or must
  /// wait (payments unreachable: it is due again after a backoff).
  func work(orderID: String) async {
    do {
      while let step = try await nextStep(orderID: orderID) {
        switch step {
        case .charge:
          guard try await charge(orderID: orderID) else { return }
        case .cancelCharge:
          guard try await cancelCharge(orderID: orderID) else { return }
        case .done:
          return
        }
      }
    } catch {
      logger.error(
        "saga step failed", metadata: ["order_id": "\(orderID)", "error": "\(error)"])
    }
  }

  /// The saga's step, if this instance still holds its lease. A charge past its deadline is
  /// turned into compensation here.
  private func nextStep(orderID: String) async throws -> Step? {
    let owner = self.owner
    let lease = settings.lease.nanoseconds
    let timeout = settings.timeout
    return try await database.write { db -> Step? in
      guard
        let row = try Row.fetchOne(
          db, sql: "SELECT * FROM sagas WHERE order_id = ? AND lease_owner = ?",
          arguments: [orderID, owner])
      else { return nil }
      let now = nowNanos()
      guard var step = Step(rawValue: row["step"]), step != .done else { return nil }
      // Past the deadline, a charge that has been tried — and failed — at least once gives up.
      // (The first attempt is always made, however late it comes: the charge is idempotent,
      // and a saga never times out without having asked payments.)
      if step == .charge, now >= row["deadline_ns"] as Int64, row["attempts"] as Int > 0 {
        let lastError: String = row["last_error"]
        let reason =
          "payment did not complete within \(timeout)"
          + (lastError.isEmpty ? "" : " (last error: \(lastError))")
        try Self.cancelOrder(db, id: orderID, reason: reason, now: now)
        try db.execute(
          sql: """
            UPDATE sagas SET step = 'cancel_charge', attempts = 0, last_error = ?,
                             update_time_ns = ? WHERE order_id = ?
            """,
          arguments: [reason, now, orderID])
        step = .cancelCharge
      }
      // A step is worked under a fresh lease.
      try db.execute(
        sql: "UPDATE sagas SET lease_until_ns = ? WHERE order_id = ?",
        arguments: [now + lease, orderID])
      return step
    }
  }

  /// One charge attempt. True when the saga moved on (confirmed or cancelled).
  private func charge(orderID: String) async throws -> Bool {
    let (request, headers) = try await database.read { db in
      let order = try Row.fetchOne(
        db, sql: "SELECT user_id, currency_code, total_minor FROM orders WHERE id = ?",
        arguments: [orderID])
      let saga = try String.fetchOne(
        db, sql: "SELECT trace_headers FROM sagas WHERE order_id = ?", arguments: [orderID])
      var request = Shop_V1_ChargeRequest()
      request.idempotencyKey = orderID
      request.orderID = orderID
      if let order {
        request.amount.currencyCode = order["currency_code"]
        request.amount.minorUnits = order["total_minor"]
      }
      return (request, Self.decode(saga ?? ""))
    }
    let outcome: Result<Shop_V1_Payment, any Error>
    do {
      outcome = .success(
        try await traced("saga charge", headers) { try await self.payments.charge(request) })
    } catch {
      outcome = .failure(error)
    }
    let owner = self.owner
    let settings = self.settings
    return try await database.write { db in
      let now = nowNanos()
      switch outcome {
      case .success(let payment):
        // Confirmed only if still pending: an order cancelled meanwhile keeps its saga in
        // compensation, which refunds this payment.
        try db.execute(
          sql: """
            UPDATE orders SET status = ?, payment_id = ?, update_time_ns = ?
            WHERE id = ? AND status = ?
            """,
          arguments: [
            Shop_V1_OrderStatus.confirmed.rawValue, payment.id, now, orderID,
            Shop_V1_OrderStatus.pending.rawValue,
          ])
        try db.execute(
          sql: """
            UPDATE sagas SET step = 'done', lease_owner = '', lease_until_ns = 0,
                             last_error = '', update_time_ns = ?
            WHERE order_id = ? AND step = 'charge'
            """,
          arguments: [now, orderID])
        return true
      case .failure(let error as RPCError) where Self.isDecline(error.code):
        try Self.cancelOrder(
          db, id: orderID, reason: "payment declined: \(error.message)", now: now)
        try db.execute(
          sql: """
            UPDATE sagas SET step = 'done', lease_owner = '', lease_until_ns = 0,
                             last_error = ?, update_time_ns = ?
            WHERE order_id = ? AND step = 'charge'
            """,
          arguments: [error.message, now, orderID])
        return true
      case .failure(let error):
        try Self.retryLater(
          db, orderID: orderID, step: .charge, error: error, owner: owner, settings: settings,
          now: now)
        return false
      }
    }
  }

  /// One compensation attempt. True when payments answered.
  private func cancelCharge(orderID: String) async throws -> Bool {
    let (reason, headers) = try await database.read { db in
      let row = try Row.fetchOne(
        db, sql: "SELECT last_error, trace_headers FROM sagas WHERE order_id = ?",
        arguments: [orderID])
      return ((row?["last_error"] as String?) ?? "", Self.decode(row?["trace_headers"] ?? ""))
    }
    let request = Shop_V1_CancelChargeRequest.with {
      $0.idempotencyKey = orderID
      $0.reason = String(("order cancelled: " + reason).prefix(500))
    }
    let outcome: (any Error)?
    do {
      _ = try await traced("saga cancel charge", headers) {
        try await self.payments.cancelCharge(request)
      }
      outcome = nil
    } catch {
      outcome = error
    }
    let owner = self.owner
    let settings = self.settings
    return try await database.write { db in
      let now = nowNanos()
      if let error = outcome {
        try Self.retryLater(
          db, orderID: orderID, step: .cancelCharge, error: error, owner: owner,
          settings: settings, now: now)
        return false
      }
      try db.execute(
        sql: """
          UPDATE sagas SET step = 'done', lease_owner = '', lease_until_ns = 0, update_time_ns = ?
          WHERE order_id = ? AND step = 'cancel_charge'
          """,
        arguments: [now, orderID])
      return true
    }
  }

  private func traced<T: Sendable>(
    _ name: String, _ headers: [String: String], _ body: @escaping @Sendable () async throws -> T
  ) async throws -> T {
    guard let tracing, !headers.isEmpty else { return try await body() }
    let result = Mutex<T?>(nil)
    try await tracing.resume(name, headers) {
      let value = try await body()
      result.withLock { $0 = value }
    }
    return result.withLock { $0! }
  }

  /// A step that could not reach payments is due again after a backoff (0.2 s doubling to
  /// 5 s), and no later than the charge's deadline. The lease is given up.
  private static func retryLater(
    _ db: Database, orderID: String, step: Step, error: any Error, owner: String,
    settings: Settings, now: Int64
  ) throws {
    let attempts =
      try Int.fetchOne(
        db, sql: "SELECT attempts FROM sagas WHERE order_id = ?", arguments: [orderID]) ?? 0
    let backoff = min(200_000_000 << min(attempts, 5), 5_000_000_000)
    let message = (error as? RPCError).map { "\($0.code): \($0.message)" } ?? "\(error)"
    try db.execute(
      sql: """
        UPDATE sagas SET attempts = attempts + 1, last_error = ?, lease_owner = '',
               lease_until_ns = 0, update_time_ns = ?,
               next_attempt_ns = CASE WHEN step = 'charge' THEN min(?, deadline_ns) ELSE ? END
        WHERE order_id = ? AND step = ? AND lease_owner = ?
        """,
      arguments: [
        String(message.prefix(400)), now, now + Int64(backoff), now + Int64(backoff), orderID,
        step.rawValue, owner,
      ])
  }

  /// Payments' answers that retrying will not change: the charge is declined.
  private static func isDecline(_ code: RPCError.Code) -> Bool {
    code == .failedPrecondition || code == .invalidArgument || code == .outOfRange
  }

  /// Cancels a pending order with a reason; any other order is left as it is.
  static func cancelOrder(_ db: Database, id: String, reason: String, now: Int64) throws {
    try db.execute(
      sql: """
        UPDATE orders SET status = ?, cancel_reason = ?, update_time_ns = ?
        WHERE id = ? AND status = ?
        """,
      arguments: [
        Shop_V1_OrderStatus.cancelled.rawValue, String(reason.prefix(500)), now, id,
        Shop_V1_OrderStatus.pending.rawValue,
      ])
  }

  /// Claims up to `limit` due sagas whose lease is free or has run out.
  func claimDue(limit: Int) async throws -> [String] {
    let owner = self.owner
    let lease = settings.lease.nanoseconds
    return try await database.write { db in
      let now = nowNanos()
      let due = try String.fetchAll(
        db,
        sql: """
          SELECT order_id FROM sagas
          WHERE step != 'done' AND next_attempt_ns <= ? AND lease_until_ns <= ?
          ORDER BY next_attempt_ns LIMIT ?
          """,
        arguments: [now, now, limit])
      for id in due {
        try db.execute(
          sql: "UPDATE sagas SET lease_owner = ?, lease_until_ns = ? WHERE order_id = ?",
          arguments: [owner, now + lease, id])
      }
      return due
    }
  }

  static func encode(_ headers: [String: String]) -> String {
    guard !headers.isEmpty,
      let data = try? JSONSerialization.data(withJSONObject: headers, options: [.sortedKeys])
    else { return "" }
    return String(decoding: data, as: UTF8.self)
  }

  static func decode(_ text: String) -> [String: String] {
    guard !text.isEmpty,
      let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)),
      let headers = object as? [String: String]
    else { return [:] }
    return headers
  }

  static func registerSagas(in migrator: inout DatabaseMigrator) {
    migrator.registerMigration("v3: order sagas") { db in
      try db.execute(
        sql: """
          ALTER TABLE orders ADD COLUMN cancel_reason TEXT NOT NULL DEFAULT '';
          CREATE TABLE sagas (
            order_id TEXT PRIMARY KEY REFERENCES orders (id),
            step TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            deadline_ns INTEGER NOT NULL,
            next_attempt_ns INTEGER NOT NULL,
            lease_owner TEXT NOT NULL,
            lease_until_ns INTEGER NOT NULL,
            last_error TEXT NOT NULL,
            trace_headers TEXT NOT NULL,
            update_time_ns INTEGER NOT NULL
          );
          CREATE INDEX sagas_due ON sagas (next_attempt_ns) WHERE step != 'done';
          """)
    }
  }
}

/// Works the sagas of every instance that shares the database, as long as the service runs:
/// due sagas are claimed by lease (up to 16 at a time, worked concurrently).
public struct SagaWorker: Service {
  let saga: OrderSaga

  public func run() async throws {
    await cancelWhenGracefulShutdown {
      while !Task.isCancelled {
        do {
          let due = try await saga.claimDue(limit: 16)
          if !due.isEmpty {
            await withTaskGroup(of: Void.self) { group in
              for id in due { group.addTask { await saga.work(orderID: id) } }
            }
            continue
          }
        } catch {
          saga.logger.error("claiming due sagas failed", metadata: ["error": "\(error)"])
        }
        try? await Task.sleep(for: saga.settings.pollInterval)
      }
    }
  }
}

extension Duration {
  var nanoseconds: Int64 {
    let (seconds, attoseconds) = components
    return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
  }
}
