import Foundation
import Logging
import PostgresNIO
import ShopProtos
import ShopSupport
import SwiftProtobuf

/// Orders, customers and sagas in a PostgreSQL database that instances on several hosts share.
/// A saga step reads its saga row `FOR UPDATE`; due sagas are claimed `FOR UPDATE SKIP
/// LOCKED`, so two instances never claim one saga, nor wait for each other's claims.
public struct PostgresOrderRepository: OrderRepository {
  let database: PostgresShopDatabase

  /// Opens a pool to the database at `location` and applies the migrations not yet applied.
  public init(_ location: PostgresLocation, logger: Logger) async throws {
    database = try await PostgresShopDatabase(
      name: "orders", location: location, migrations: Self.migrations, logger: logger)
  }

  static let migrations = [
    PostgresShopDatabase.Migration(
      "v1: orders, line items, customers, sagas",
      [
        """
        CREATE TABLE orders (
          seq BIGSERIAL PRIMARY KEY,
          id TEXT NOT NULL UNIQUE,
          user_id TEXT NOT NULL,
          status INTEGER NOT NULL,
          currency_code TEXT NOT NULL,
          total_minor BIGINT NOT NULL,
          payment_id TEXT NOT NULL,
          cancel_reason TEXT NOT NULL DEFAULT '',
          create_time_ns BIGINT NOT NULL,
          update_time_ns BIGINT NOT NULL
        )
        """,
        "CREATE INDEX orders_by_user ON orders (user_id, seq)",
        """
        CREATE TABLE line_items (
          order_id TEXT NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
          position INTEGER NOT NULL,
          sku TEXT NOT NULL,
          quantity INTEGER NOT NULL,
          currency_code TEXT NOT NULL,
          unit_minor BIGINT NOT NULL,
          PRIMARY KEY (order_id, position)
        )
        """,
        """
        CREATE TABLE customers (
          user_id TEXT PRIMARY KEY,
          email TEXT NOT NULL,
          name TEXT NOT NULL,
          create_time_ns BIGINT NOT NULL
        )
        """,
        """
        CREATE TABLE handled_events (
          event_id TEXT PRIMARY KEY,
          handled_time_ns BIGINT NOT NULL
        )
        """,
        """
        CREATE TABLE sagas (
          order_id TEXT PRIMARY KEY REFERENCES orders (id),
          step TEXT NOT NULL,
          attempts INTEGER NOT NULL,
          deadline_ns BIGINT NOT NULL,
          next_attempt_ns BIGINT NOT NULL,
          lease_owner TEXT NOT NULL,
          lease_until_ns BIGINT NOT NULL,
          last_error TEXT NOT NULL,
          trace_headers TEXT NOT NULL,
          update_time_ns BIGINT NOT NULL
        )
        """,
        "CREATE INDEX sagas_due ON sagas (next_attempt_ns) WHERE step != 'done'",
      ])
  ]

  var logger: Logger { database.logger }

  // MARK: Orders

  public func create(_ order: Shop_V1_Order, saga: NewSaga?) async throws {
    let logger = logger
    try await database.transaction { connection in
      let now = order.createTime.nanosSinceEpoch
      try await connection.query(
        """
        INSERT INTO orders (id, user_id, status, currency_code, total_minor, payment_id,
                            create_time_ns, update_time_ns)
        VALUES (\(order.id), \(order.userID), \(Int32(order.status.rawValue)), \
        \(order.total.currencyCode), \(order.total.minorUnits), '', \(now), \(now))
        """, logger: logger)
      for (position, item) in order.lineItems.enumerated() {
        try await connection.query(
          """
          INSERT INTO line_items (order_id, position, sku, quantity, currency_code, unit_minor)
          VALUES (\(order.id), \(Int32(position)), \(item.sku), \(item.quantity), \
          \(item.unitPrice.currencyCode), \(item.unitPrice.minorUnits))
          """, logger: logger)
      }
      guard let saga else { return }
      try await connection.query(
        """
        INSERT INTO sagas (order_id, step, attempts, deadline_ns, next_attempt_ns, lease_owner,
                           lease_until_ns, last_error, trace_headers, update_time_ns)
        VALUES (\(order.id), 'charge', 0, \(saga.deadline), \(now), \(saga.owner), \
        \(saga.leaseUntil), '', \(OrderSaga.encode(saga.traceHeaders)), \(now))
        """, logger: logger)
    }
  }

  public func order(id: String) async throws -> Shop_V1_Order? {
    let logger = logger
    return try await database.connection { connection in
      try await Self.orders(
        "SELECT \(unescaped: Self.orderColumns) FROM orders WHERE id = \(id)", connection,
        logger
      ).first?.order
    }
  }

  public func orders(
    user: String, after sequence: Int64, limit: Int
  ) async throws
    -> [(sequence: Int64, order: Shop_V1_Order)]
  {
    let logger = logger
    return try await database.connection { connection in
      try await Self.orders(
        """
        SELECT \(unescaped: Self.orderColumns) FROM orders WHERE user_id = \(user) \
        AND seq > \(sequence) ORDER BY seq LIMIT \(limit)
        """, connection, logger)
    }
  }

  public func cancel(
    id: String, reason: String, compensation: SagaLease?, now: Int64
  )
    async throws -> CancelOutcome
  {
    let logger = logger
    return try await database.transaction { connection in
      guard
        let order = try await Self.orders(
          "SELECT \(unescaped: Self.orderColumns) FROM orders WHERE id = \(id) FOR UPDATE",
          connection, logger
        ).first?.order
      else { return .notFound }
      switch order.status {
      case .cancelled: return .alreadyCancelled(order)
      case .confirmed: return .confirmed(order)
      default: break
      }
      try await Self.cancelOrder(connection, id: id, reason: reason, now: now, logger)
      if let compensation {
        try await connection.query(
          """
          UPDATE sagas SET step = 'cancel_charge', next_attempt_ns = \(now), \
          lease_owner = \(compensation.owner), lease_until_ns = \(compensation.until), \
          last_error = \(reason), update_time_ns = \(now)
          WHERE order_id = \(id) AND step != 'done'
          """, logger: logger)
      }
      let cancelled = try await Self.orders(
        "SELECT \(unescaped: Self.orderColumns) FROM orders WHERE id = \(id)", connection, logger)
      return .cancelled(cancelled[0].order)
    }
  }

  // MARK: Customers

  public func handleUserCreated(
    eventID: String, _ created: Shop_V1_UserCreated
  ) async throws
    -> Bool
  {
    let logger = logger
    return try await database.transaction { connection in
      // The note first: of two instances handling one event, the second waits on its row and
      // then finds it, changing nothing.
      var handled = false
      for try await _ in try await connection.query(
        """
        INSERT INTO handled_events (event_id, handled_time_ns) VALUES (\(eventID), \(nowNanos()))
        ON CONFLICT (event_id) DO NOTHING RETURNING event_id
        """, logger: logger
      ).decode(String.self) {
        handled = true
      }
      guard handled else { return false }
      try await connection.query(
        """
        INSERT INTO customers (user_id, email, name, create_time_ns)
        VALUES (\(created.userID), \(created.email), \(created.name), \
        \(created.createTime.nanosSinceEpoch))
        ON CONFLICT (user_id) DO UPDATE SET email = excluded.email, name = excluded.name
        """, logger: logger)
      return true
    }
  }

  public func customer(userID: String) async throws -> Shop_V1_Customer? {
    let logger = logger
    return try await database.connection { connection in
      for try await (user, email, name, created) in try await connection.query(
        "SELECT user_id, email, name, create_time_ns FROM customers WHERE user_id = \(userID)",
        logger: logger
      ).decode((String, String, String, Int64).self) {
        return Shop_V1_Customer.with {
          $0.userID = user
          $0.email = email
          $0.name = name
          $0.createTime = Google_Protobuf_Timestamp(nanosSinceEpoch: created)
        }
      }
      return nil
    }
  }

  // MARK: Sagas

  public func nextStep(
    orderID: String, owner: String, lease: Int64, now: Int64,
    timedOut: @escaping @Sendable (String) -> String
  ) async throws -> SagaStep? {
    let logger = logger
    return try await database.transaction { connection -> SagaStep? in
      var found: (step: String, deadline: Int64, attempts: Int32, lastError: String)?
      for try await row in try await connection.query(
        """
        SELECT step, deadline_ns, attempts, last_error FROM sagas
        WHERE order_id = \(orderID) AND lease_owner = \(owner) FOR UPDATE
        """, logger: logger
      ).decode((String, Int64, Int32, String).self) {
        found = row
      }
      guard let found, var step = SagaStep(rawValue: found.step), step != .done else {
        return nil
      }
      if step == .charge, now >= found.deadline, found.attempts > 0 {
        let reason = timedOut(found.lastError)
        try await Self.cancelOrder(connection, id: orderID, reason: reason, now: now, logger)
        try await connection.query(
          """
          UPDATE sagas SET step = 'cancel_charge', attempts = 0, last_error = \(reason), \
          update_time_ns = \(now) WHERE order_id = \(orderID)
          """, logger: logger)
        step = .cancelCharge
      }
      try await connection.query(
        "UPDATE sagas SET lease_until_ns = \(now + lease) WHERE order_id = \(orderID)",
        logger: logger)
      return step
    }
  }

  public func chargeRequest(
    orderID: String
  ) async throws
    -> (request: Shop_V1_ChargeRequest, traceHeaders: [String: String])
  {
    let logger = logger
    return try await database.connection { connection in
      var request = Shop_V1_ChargeRequest()
      request.idempotencyKey = orderID
      request.orderID = orderID
      var headers = ""
      for try await (currency, total, trace) in try await connection.query(
        """
        SELECT o.currency_code, o.total_minor, s.trace_headers
        FROM orders o JOIN sagas s ON s.order_id = o.id WHERE o.id = \(orderID)
        """, logger: logger
      ).decode((String, Int64, String).self) {
        request.amount.currencyCode = currency
        request.amount.minorUnits = total
        headers = trace
      }
      return (request, OrderSaga.decode(headers))
    }
  }

  @discardableResult
  public func charged(
    orderID: String, payment: Shop_V1_Payment, now: Int64
  ) async throws -> Bool {
    let logger = logger
    return try await database.transaction { connection in
      try await connection.query(
        """
        UPDATE orders SET status = \(Int32(Shop_V1_OrderStatus.confirmed.rawValue)), \
        payment_id = \(payment.id), update_time_ns = \(now)
        WHERE id = \(orderID) AND status = \(Int32(Shop_V1_OrderStatus.pending.rawValue))
        """, logger: logger)
      var finished = false
      for try await _ in try await connection.query(
        """
        UPDATE sagas SET step = 'done', lease_owner = '', lease_until_ns = 0, last_error = '', \
        update_time_ns = \(now) WHERE order_id = \(orderID) AND step = 'charge'
        RETURNING order_id
        """, logger: logger
      ).decode(String.self) {
        finished = true
      }
      return finished
    }
  }

  public func declined(orderID: String, message: String, now: Int64) async throws {
    let logger = logger
    try await database.transaction { connection in
      try await Self.cancelOrder(
        connection, id: orderID, reason: "payment declined: \(message)", now: now, logger)
      try await connection.query(
        """
        UPDATE sagas SET step = 'done', lease_owner = '', lease_until_ns = 0, \
        last_error = \(message), update_time_ns = \(now)
        WHERE order_id = \(orderID) AND step = 'charge'
        """, logger: logger)
    }
  }

  public func retryLater(
    orderID: String, step: SagaStep, error: String, owner: String, now: Int64
  ) async throws {
    let logger = logger
    try await database.transaction { connection in
      var attempts = 0
      for try await value in try await connection.query(
        "SELECT attempts FROM sagas WHERE order_id = \(orderID) FOR UPDATE", logger: logger
      ).decode(Int32.self) {
        attempts = Int(value)
      }
      let next = now + OrderSaga.backoff(attempts: attempts)
      try await connection.query(
        """
        UPDATE sagas SET attempts = attempts + 1, last_error = \(error), lease_owner = '', \
        lease_until_ns = 0, update_time_ns = \(now), \
        next_attempt_ns = CASE WHEN step = 'charge' THEN LEAST(\(next), deadline_ns) \
        ELSE \(next) END
        WHERE order_id = \(orderID) AND step = \(step.rawValue) AND lease_owner = \(owner)
        """, logger: logger)
    }
  }

  public func compensation(
    orderID: String
  ) async throws
    -> (reason: String, traceHeaders: [String: String])
  {
    let logger = logger
    return try await database.connection { connection in
      for try await (reason, trace) in try await connection.query(
        "SELECT last_error, trace_headers FROM sagas WHERE order_id = \(orderID)",
        logger: logger
      ).decode((String, String).self) {
        return (reason, OrderSaga.decode(trace))
      }
      return ("", [:])
    }
  }

  public func compensated(orderID: String, now: Int64) async throws {
    let logger = logger
    try await database.connection { connection in
      try await connection.query(
        """
        UPDATE sagas SET step = 'done', lease_owner = '', lease_until_ns = 0, \
        update_time_ns = \(now) WHERE order_id = \(orderID) AND step = 'cancel_charge'
        """, logger: logger)
      return ()
    }
  }

  public func claimDue(
    limit: Int, owner: String, lease: Int64, now: Int64
  ) async throws
    -> [String]
  {
    let logger = logger
    return try await database.connection { connection in
      var due: [String] = []
      for try await id in try await connection.query(
        """
        UPDATE sagas SET lease_owner = \(owner), lease_until_ns = \(now + lease)
        WHERE order_id IN (
          SELECT order_id FROM sagas
          WHERE step != 'done' AND next_attempt_ns <= \(now) AND lease_until_ns <= \(now)
          ORDER BY next_attempt_ns LIMIT \(limit) FOR UPDATE SKIP LOCKED)
        RETURNING order_id
        """, logger: logger
      ).decode(String.self) {
        due.append(id)
      }
      return due
    }
  }

  // MARK: Rows

  static func cancelOrder(
    _ connection: PostgresConnection, id: String, reason: String, now: Int64, _ logger: Logger
  ) async throws {
    try await connection.query(
      """
      UPDATE orders SET status = \(Int32(Shop_V1_OrderStatus.cancelled.rawValue)), \
      cancel_reason = \(String(reason.prefix(500))), update_time_ns = \(now)
      WHERE id = \(id) AND status = \(Int32(Shop_V1_OrderStatus.pending.rawValue))
      """, logger: logger)
  }

  static let orderColumns =
    "seq, id, user_id, status, currency_code, total_minor, payment_id, cancel_reason, "
    + "create_time_ns, update_time_ns"

  /// Orders with their line items.
  private static func orders(
    _ query: PostgresQuery, _ connection: PostgresConnection, _ logger: Logger
  ) async throws -> [(sequence: Int64, order: Shop_V1_Order)] {
    var orders: [(sequence: Int64, order: Shop_V1_Order)] = []
    for try await (seq, id, user, status, currency, total, payment, reason, created, updated)
      in try await connection.query(query, logger: logger).decode(
        (Int64, String, String, Int32, String, Int64, String, String, Int64, Int64).self)
    {
      orders.append(
        (
          seq,
          .with {
            $0.id = id
            $0.userID = user
            $0.status = Shop_V1_OrderStatus(rawValue: Int(status)) ?? .unspecified
            $0.total = .with {
              $0.currencyCode = currency
              $0.minorUnits = total
            }
            $0.paymentID = payment
            $0.cancelReason = reason
            $0.createTime = Google_Protobuf_Timestamp(nanosSinceEpoch: created)
            $0.updateTime = Google_Protobuf_Timestamp(nanosSinceEpoch: updated)
          }
        ))
    }
    guard !orders.isEmpty else { return [] }
    let ids = orders.map(\.order.id)
    var items: [String: [Shop_V1_LineItem]] = [:]
    for try await (order, sku, quantity, currency, unit) in try await connection.query(
      """
      SELECT order_id, sku, quantity, currency_code, unit_minor FROM line_items
      WHERE order_id = ANY(\(ids)) ORDER BY order_id, position
      """, logger: logger
    ).decode((String, String, Int32, String, Int64).self) {
      items[order, default: []].append(
        .with {
          $0.sku = sku
          $0.quantity = quantity
          $0.unitPrice = .with {
            $0.currencyCode = currency
            $0.minorUnits = unit
          }
        })
    }
    return orders.map { entry in
      var order = entry.order
      order.lineItems = items[order.id] ?? []
      return (entry.sequence, order)
    }
  }
}
