import GRDB
import GRPCCore
import Logging
import ShopProtos
import ShopSupport
import SwiftProtobuf

/// `shop.v1.OrderService` over its own SQLite database, with the customer records it keeps
/// from users' `user.created` events (`Customers.swift`) and, given a payments client, the saga
/// that charges each order (`OrderSaga.swift`).
public struct OrderService: Shop_V1_OrderService.SimpleServiceProtocol {
  let database: DatabasePool
  /// Without payments, orders stay PENDING (the service alone, as in its unit tests).
  let saga: OrderSaga?

  /// Opens (creating and migrating if needed) the database at `path`.
  public init(
    databasePath path: String, payments: PaymentsClient? = nil,
    saga settings: OrderSaga.Settings = .init(), tracing: SagaTracing? = nil,
    logger: Logger = Logger(label: "order-service")
  ) throws {
    let database = try openShopDatabase(path: path, migrator: Self.migrator)
    self.database = database
    self.saga = payments.map {
      OrderSaga(
        database: database, payments: $0, settings: settings, tracing: tracing, logger: logger)
    }
  }

  /// The background worker that finishes sagas: those whose payment could not be reached at
  /// once, and those another instance — or this one, before a restart — left unfinished.
  public var sagaWorker: SagaWorker? { saga.map { SagaWorker(saga: $0) } }

  public func createOrder(
    request: Shop_V1_CreateOrderRequest, context: ServerContext
  ) async throws -> Shop_V1_Order {
    try Validate.required(request.userID, "user_id")
    let total = try Self.validatedTotal(request.lineItems)
    let now = nowNanos()
    let order = Shop_V1_Order.with {
      $0.id = ResourceID.make(prefix: "ord")
      $0.userID = request.userID
      $0.lineItems = request.lineItems
      $0.total = total
      $0.status = .pending
      $0.createTime = Google_Protobuf_Timestamp(nanosSinceEpoch: now)
      $0.updateTime = $0.createTime
    }
    let traceHeaders = saga?.currentTraceHeaders() ?? [:]
    try await database.write { [saga] db in
      try db.execute(
        sql: """
          INSERT INTO orders (id, user_id, status, currency_code, total_minor, payment_id,
                              create_time_ns, update_time_ns)
          VALUES (?, ?, ?, ?, ?, '', ?, ?)
          """,
        arguments: [
          order.id, order.userID, order.status.rawValue, total.currencyCode, total.minorUnits,
          now, now,
        ])
      for (position, item) in order.lineItems.enumerated() {
        try db.execute(
          sql: """
            INSERT INTO line_items (order_id, position, sku, quantity, currency_code, unit_minor)
            VALUES (?, ?, ?, ?, ?, ?)
            """,
          arguments: [
            order.id, position, item.sku, item.quantity, item.unitPrice.currencyCode,
            item.unitPrice.minorUnits,
          ])
      }
      try saga?.begin(db, orderID: order.id, now: now, traceHeaders: traceHeaders)
    }
    guard let saga else { return order }
    // The first step runs now, in this call (and its trace); what it leaves undone the worker
    // finishes.
    await saga.work(orderID: order.id)
    return try await database.read { db in try Self.fetchOrder(db, id: order.id) }
  }

  public func getOrder(
    request: Shop_V1_GetOrderRequest, context: ServerContext
  ) async throws -> Shop_V1_Order {
    try Validate.required(request.id, "id")
    return try await database.read { db in try Self.fetchOrder(db, id: request.id) }
  }

  public func listOrders(
    request: Shop_V1_ListOrdersRequest, context: ServerContext
  ) async throws -> Shop_V1_ListOrdersResponse {
    try Validate.required(request.userID, "user_id")
    let pageSize = try PageToken.pageSize(request.pageSize)
    let query = "orders:user=\(request.userID)"
    let after =
      request.pageToken.isEmpty
      ? 0 : try PageToken(decoding: request.pageToken, query: query).afterSequence
    return try await database.read { db in
      let rows = try Row.fetchAll(
        db, sql: "SELECT * FROM orders WHERE user_id = ? AND seq > ? ORDER BY seq LIMIT ?",
        arguments: [request.userID, after, pageSize + 1])
      let page = rows.prefix(pageSize)
      return try .with {
        $0.orders = try page.map { try Self.order(from: $0, db) }
        if rows.count > pageSize, let last = page.last {
          $0.nextPageToken = PageToken(afterSequence: last["seq"], query: query).encoded
        }
      }
    }
  }

  public func cancelOrder(
    request: Shop_V1_CancelOrderRequest, context: ServerContext
  ) async throws -> Shop_V1_Order {
    try Validate.required(request.id, "id")
    let (order, compensating) = try await database.write { [saga] db in
      let order = try Self.fetchOrder(db, id: request.id)
      switch order.status {
      case .cancelled:
        return (order, false)  // CancelOrder is idempotent: a repeat changes nothing.
      case .confirmed:
        throw RPCError(
          code: .failedPrecondition,
          message:
            """
            order \(order.id) is confirmed (payment \(order.paymentID)); refund it before \
            cancelling
            """
        )
      default:
        let now = nowNanos()
        let reason = "cancelled by request"
        try OrderSaga.cancelOrder(db, id: order.id, reason: reason, now: now)
        try saga?.compensate(db, orderID: order.id, reason: reason, now: now)
        return (try Self.fetchOrder(db, id: order.id), saga != nil)
      }
    }
    // A charge that may have landed is cancelled now; the worker retries if payments is away.
    if compensating, let saga { await saga.work(orderID: order.id) }
    return order
  }

  /// Checks the line items and sums them; every price must be in one currency and the sum must
  /// fit in 64 bits.
  static func validatedTotal(_ items: [Shop_V1_LineItem]) throws -> Shop_V1_Money {
    guard !items.isEmpty else { throw Validate.invalid("line_items", "at least one is required") }
    guard items.count <= 100 else {
      throw Validate.invalid("line_items", "at most 100 are allowed")
    }
    var total = Shop_V1_Money()
    for (i, item) in items.enumerated() {
      let field = "line_items[\(i)]"
      try Validate.required(item.sku, "\(field).sku", maxLength: 64)
      guard (1...10_000).contains(item.quantity) else {
        throw Validate.invalid("\(field).quantity", "must be from 1 to 10000")
      }
      guard item.hasUnitPrice else { throw Validate.invalid("\(field).unit_price", "is required") }
      try Validate.money(item.unitPrice, "\(field).unit_price", positive: false)
      if i == 0 { total.currencyCode = item.unitPrice.currencyCode }
      guard item.unitPrice.currencyCode == total.currencyCode else {
        throw Validate.invalid(
          "\(field).unit_price.currency_code",
          "is \(item.unitPrice.currencyCode) but the order is in \(total.currencyCode)")
      }
      let (line, lineOverflow) = item.unitPrice.minorUnits.multipliedReportingOverflow(
        by: Int64(item.quantity))
      let (sum, sumOverflow) = total.minorUnits.addingReportingOverflow(line)
      guard !lineOverflow, !sumOverflow else {
        throw Validate.invalid("line_items", "the order total is too large")
      }
      total.minorUnits = sum
    }
    return total
  }

  private static func fetchOrder(_ db: Database, id: String) throws -> Shop_V1_Order {
    guard let row = try Row.fetchOne(db, sql: "SELECT * FROM orders WHERE id = ?", arguments: [id])
    else { throw RPCError(code: .notFound, message: "order \(id) not found") }
    return try order(from: row, db)
  }

  private static func order(from row: Row, _ db: Database) throws -> Shop_V1_Order {
    let id: String = row["id"]
    let items = try Row.fetchAll(
      db, sql: "SELECT * FROM line_items WHERE order_id = ? ORDER BY position", arguments: [id])
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
    registerCustomers(in: &migrator)
    OrderSaga.registerSagas(in: &migrator)
    return migrator
  }
}
