import Foundation
import GRDB
import GRPCCore
import ShopProtos
import ShopSupport
import SwiftProtobuf

/// Orders, customers and sagas in a SQLite file: every operation is one transaction of
/// SQLite's one writer.
public struct SQLiteOrderRepository: OrderRepository {
  let database: DatabasePool

  /// Opens (creating and migrating if needed) the database at `path`.
  public init(path: String) throws {
    database = try openShopDatabase(path: path, migrator: Self.migrator)
  }

  // MARK: Orders

  public func create(_ order: Shop_V1_Order, saga: NewSaga?) async throws {
    try await database.transaction { db in
      let now = order.createTime.nanosSinceEpoch
      try db.cachedStatement(
        sql: """
          INSERT INTO orders (id, user_id, status, currency_code, total_minor, payment_id,
                              create_time_ns, update_time_ns)
          VALUES (?, ?, ?, ?, ?, '', ?, ?)
          """
      ).execute(
        arguments: [
          order.id, order.userID, order.status.rawValue, order.total.currencyCode,
          order.total.minorUnits, now, now,
        ])
      for (position, item) in order.lineItems.enumerated() {
        try db.cachedStatement(
          sql: """
            INSERT INTO line_items (order_id, position, sku, quantity, currency_code, unit_minor)
            VALUES (?, ?, ?, ?, ?, ?)
            """
        ).execute(
          arguments: [
            order.id, position, item.sku, item.quantity, item.unitPrice.currencyCode,
            item.unitPrice.minorUnits,
          ])
      }
      guard let saga else { return }
      try db.cachedStatement(
        sql: """
          INSERT INTO sagas (order_id, step, attempts, deadline_ns, next_attempt_ns, lease_owner,
                             lease_until_ns, last_error, trace_headers, update_time_ns)
          VALUES (?, 'charge', 0, ?, ?, ?, ?, '', ?, ?)
          """
      ).execute(
        arguments: [
          order.id, saga.deadline, now, saga.owner, saga.leaseUntil,
          OrderSaga.encode(saga.traceHeaders), now,
        ])
    }
  }

  public func order(id: String) async throws -> Shop_V1_Order? {
    try await database.read { db in try Self.fetchOrder(db, id: id) }
  }

  public func orders(
    user: String, after sequence: Int64, limit: Int
  ) async throws
    -> [(sequence: Int64, order: Shop_V1_Order)]
  {
    try await database.read { db in
      try Row.fetchAll(
        db.cachedStatement(
          sql: "SELECT * FROM orders WHERE user_id = ? AND seq > ? ORDER BY seq LIMIT ?"),
        arguments: [user, sequence, limit]
      ).map { (sequence: $0["seq"], order: try Self.order(from: $0, db)) }
    }
  }

  public func cancel(
    id: String, reason: String, compensation: SagaLease?, now: Int64
  )
    async throws -> CancelOutcome
  {
    try await database.write { db in
      guard let order = try Self.fetchOrder(db, id: id) else { return .notFound }
      switch order.status {
      case .cancelled: return .alreadyCancelled(order)
      case .confirmed: return .confirmed(order)
      default: break
      }
      try Self.cancelOrder(db, id: id, reason: reason, now: now)
      if let compensation {
        try db.cachedStatement(
          sql: """
            UPDATE sagas SET step = 'cancel_charge', next_attempt_ns = ?, lease_owner = ?,
                             lease_until_ns = ?, last_error = ?, update_time_ns = ?
            WHERE order_id = ? AND step != 'done'
            """
        ).execute(
          arguments: [now, compensation.owner, compensation.until, reason, now, id])
      }
      return .cancelled(try Self.fetchOrder(db, id: id)!)
    }
  }

  // MARK: Customers

  public func handleUserCreated(
    eventID: String, _ created: Shop_V1_UserCreated
  ) async throws
    -> Bool
  {
    try await database.write { db in
      if try Bool.fetchOne(
        db.cachedStatement(sql: "SELECT 1 FROM handled_events WHERE event_id = ?"),
        arguments: [eventID]) == true
      {
        return false
      }
      try db.cachedStatement(
        sql: """
          INSERT INTO customers (user_id, email, name, create_time_ns) VALUES (?, ?, ?, ?)
          ON CONFLICT (user_id) DO UPDATE SET email = excluded.email, name = excluded.name
          """
      ).execute(
        arguments: [
          created.userID, created.email, created.name, created.createTime.nanosSinceEpoch,
        ])
      try db.cachedStatement(
        sql: "INSERT INTO handled_events (event_id, handled_time_ns) VALUES (?, ?)"
      ).execute(
        arguments: [eventID, nowNanos()])
      return true
    }
  }

  public func customer(userID: String) async throws -> Shop_V1_Customer? {
    try await database.read { db -> Shop_V1_Customer? in
      try Row.fetchOne(
        db.cachedStatement(sql: "SELECT * FROM customers WHERE user_id = ?"), arguments: [userID]
      ).map { row in
        .with {
          $0.userID = row["user_id"]
          $0.email = row["email"]
          $0.name = row["name"]
          $0.createTime = Google_Protobuf_Timestamp(nanosSinceEpoch: row["create_time_ns"])
        }
      }
    }
  }

  // MARK: Sagas

  public func nextStep(
    orderID: String, owner: String, lease: Int64, now: Int64,
    timedOut: @escaping @Sendable (String) -> String
  ) async throws -> SagaStep? {
    try await database.write { db -> SagaStep? in
      guard
        let row = try Row.fetchOne(
          db.cachedStatement(sql: "SELECT * FROM sagas WHERE order_id = ? AND lease_owner = ?"),
          arguments: [orderID, owner])
      else { return nil }
      guard var step = SagaStep(rawValue: row["step"]), step != .done else { return nil }
      if step == .charge, now >= row["deadline_ns"] as Int64, row["attempts"] as Int > 0 {
        let reason = timedOut(row["last_error"])
        try Self.cancelOrder(db, id: orderID, reason: reason, now: now)
        try db.cachedStatement(
          sql: """
            UPDATE sagas SET step = 'cancel_charge', attempts = 0, last_error = ?,
                             update_time_ns = ? WHERE order_id = ?
            """
        ).execute(
          arguments: [reason, now, orderID])
        step = .cancelCharge
      }
      try db.cachedStatement(sql: "UPDATE sagas SET lease_until_ns = ? WHERE order_id = ?").execute(
        arguments: [now + lease, orderID])
      return step
    }
  }

  public func chargeRequest(
    orderID: String
  ) async throws
    -> (request: Shop_V1_ChargeRequest, traceHeaders: [String: String])
  {
    try await database.read { db in
      let order = try Row.fetchOne(
        db.cachedStatement(sql: "SELECT currency_code, total_minor FROM orders WHERE id = ?"),
        arguments: [orderID])
      let headers = try String.fetchOne(
        db.cachedStatement(sql: "SELECT trace_headers FROM sagas WHERE order_id = ?"),
        arguments: [orderID])
      var request = Shop_V1_ChargeRequest()
      request.idempotencyKey = orderID
      request.orderID = orderID
      if let order {
        request.amount.currencyCode = order["currency_code"]
        request.amount.minorUnits = order["total_minor"]
      }
      return (request, OrderSaga.decode(headers ?? ""))
    }
  }

  @discardableResult
  public func charged(
    orderID: String, payment: Shop_V1_Payment, now: Int64
  ) async throws -> Bool {
    try await database.transaction { db in
      try db.cachedStatement(
        sql: """
          UPDATE orders SET status = ?, payment_id = ?, update_time_ns = ?
          WHERE id = ? AND status = ?
          """
      ).execute(
        arguments: [
          Shop_V1_OrderStatus.confirmed.rawValue, payment.id, now, orderID,
          Shop_V1_OrderStatus.pending.rawValue,
        ])
      try db.cachedStatement(
        sql: """
          UPDATE sagas SET step = 'done', lease_owner = '', lease_until_ns = 0,
                           last_error = '', update_time_ns = ?
          WHERE order_id = ? AND step = 'charge'
          """
      ).execute(
        arguments: [now, orderID])
      return db.changesCount > 0
    }
  }

  public func declined(orderID: String, message: String, now: Int64) async throws {
    try await database.write { db in
      try Self.cancelOrder(db, id: orderID, reason: "payment declined: \(message)", now: now)
      try db.cachedStatement(
        sql: """
          UPDATE sagas SET step = 'done', lease_owner = '', lease_until_ns = 0,
                           last_error = ?, update_time_ns = ?
          WHERE order_id = ? AND step = 'charge'
          """
      ).execute(
        arguments: [message, now, orderID])
    }
  }

  public func retryLater(
    orderID: String, step: SagaStep, error: String, owner: String, now: Int64
  ) async throws {
    try await database.write { db in
      let attempts =
        try Int.fetchOne(
          db.cachedStatement(sql: "SELECT attempts FROM sagas WHERE order_id = ?"),
          arguments: [orderID]) ?? 0
      let next = now + OrderSaga.backoff(attempts: attempts)
      try db.cachedStatement(
        sql: """
          UPDATE sagas SET attempts = attempts + 1, last_error = ?, lease_owner = '',
                 lease_until_ns = 0, update_time_ns = ?,
                 next_attempt_ns = CASE WHEN step = 'charge' THEN min(?, deadline_ns) ELSE ? END
          WHERE order_id = ? AND step = ? AND lease_owner = ?
          """
      ).execute(
        arguments: [error, now, next, next, orderID, step.rawValue, owner])
    }
  }

  public func compensation(
    orderID: String
  ) async throws
    -> (reason: String, traceHeaders: [String: String])
  {
    try await database.read { db in
      let row = try Row.fetchOne(
        db.cachedStatement(sql: "SELECT last_error, trace_headers FROM sagas WHERE order_id = ?"),
        arguments: [orderID])
      return (
        (row?["last_error"] as String?) ?? "", OrderSaga.decode(row?["trace_headers"] ?? "")
      )
    }
  }

  public func compensated(orderID: String, now: Int64) async throws {
    try await database.write { db in
      try db.cachedStatement(
        sql: """
          UPDATE sagas SET step = 'done', lease_owner = '', lease_until_ns = 0, update_time_ns = ?
          WHERE order_id = ? AND step = 'cancel_charge'
          """
      ).execute(
        arguments: [now, orderID])
    }
  }

  public func claimDue(
    limit: Int, owner: String, lease: Int64, now: Int64
  ) async throws
    -> [String]
  {
    try await database.write { db in
      let due = try String.fetchAll(
        db,
        sql: """
          SELECT order_id FROM sagas
          WHERE step != 'done' AND next_attempt_ns <= ? AND lease_until_ns <= ?
          ORDER BY next_attempt_ns LIMIT ?
          """,
        arguments: [now, now, limit])
      for id in due {
        try db.cachedStatement(
          sql: "UPDATE sagas SET lease_owner = ?, lease_until_ns = ? WHERE order_id = ?"
        ).execute(
          arguments: [owner, now + lease, id])
      }
      return due
    }
  }

  // MARK: Rows

  /// Cancels a pending order with a reason; any other order is left as it is.
  static func cancelOrder(_ db: Database, id: String, reason: String, now: Int64) throws {
    try db.cachedStatement(
      sql: """
        UPDATE orders SET status = ?, cancel_reason = ?, update_time_ns = ?
        WHERE id = ? AND status = ?
        """
    ).execute(
      arguments: [
        Shop_V1_OrderStatus.cancelled.rawValue, String(reason.prefix(500)), now, id,
        Shop_V1_OrderStatus.pending.rawValue,
      ])
  }

  private static func fetchOrder(_ db: Database, id: String) throws -> Shop_V1_Order? {
    try Row.fetchOne(db.cachedStatement(sql: "SELECT * FROM orders WHERE id = ?"), arguments: [id])
      .map { try order(from: $0, db) }
  }

  private static func order(from row: Row, _ db: Database) throws -> Shop_V1_Order {
    let id: String = row["id"]
    let items = try Row.fetchAll(
      db.cachedStatement(sql: "SELECT * FROM line_items WHERE order_id = ? ORDER BY position"),
      arguments: [id])
    return .with {
      $0.id = id
      $0.userID = row["user_id"]
      $0.status = Shop_V1_OrderStatus(rawValue: row["status"]) ?? .unspecified
      $0.total = .with {
        $0.currencyCode = row["currency_code"]
        $0.minorUnits = row["total_minor"]
      }
      $0.paymentID = row["payment_id"]
      $0.cancelReason = row["cancel_reason"]
      $0.createTime = Google_Protobuf_Timestamp(nanosSinceEpoch: row["create_time_ns"])
      $0.updateTime = Google_Protobuf_Timestamp(nanosSinceEpoch: row["update_time_ns"])
      $0.lineItems = items.map { item in
        .with {
          $0.sku = item["sku"]
          $0.quantity = item["quantity"]
          $0.unitPrice = .with {
            $0.currencyCode = item["currency_code"]
            $0.minorUnits = item["unit_minor"]
          }
        }
      }
    }
  }

  static var migrator: DatabaseMigrator {
    var migrator = DatabaseMigrator()
    migrator.registerMigration("v1: orders and line items") { db in
      try db.execute(
        sql: """
          CREATE TABLE orders (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            user_id TEXT NOT NULL,
            status INTEGER NOT NULL,
            currency_code TEXT NOT NULL,
            total_minor INTEGER NOT NULL,
            payment_id TEXT NOT NULL,
            create_time_ns INTEGER NOT NULL,
            update_time_ns INTEGER NOT NULL
          );
          CREATE INDEX orders_by_user ON orders (user_id, seq);
          CREATE TABLE line_items (
            order_id TEXT NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            sku TEXT NOT NULL,
            quantity INTEGER NOT NULL,
            currency_code TEXT NOT NULL,
            unit_minor INTEGER NOT NULL,
            PRIMARY KEY (order_id, position)
          );
          """)
    }
    migrator.registerMigration("v2: customers from user.created") { db in
      try db.execute(
        sql: """
          CREATE TABLE customers (
            user_id TEXT PRIMARY KEY,
            email TEXT NOT NULL,
            name TEXT NOT NULL,
            create_time_ns INTEGER NOT NULL
          );
          CREATE TABLE handled_events (
            event_id TEXT PRIMARY KEY,
            handled_time_ns INTEGER NOT NULL
          );
          """)
    }
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
    return migrator
  }
}
