import GRPCCore
import Logging
import ShopProtos
import ShopSupport
import SwiftProtobuf

/// `shop.v1.OrderService` over its own database (SQLite or PostgreSQL), with the customer
/// records it keeps from users' `user.created` events (`Customers.swift`) and, given a payments
/// client, the saga that charges each order (`OrderSaga.swift`).
public struct OrderService: Shop_V1_OrderService.SimpleServiceProtocol {
  let repository: any OrderRepository
  /// Without payments, orders stay PENDING (the service alone, as in its unit tests).
  let saga: OrderSaga?

  public init(
    repository: any OrderRepository, payments: PaymentsClient? = nil,
    saga settings: OrderSaga.Settings = .init(), tracing: SagaTracing? = nil,
    logger: Logger = Logger(label: "order-service")
  ) {
    self.repository = repository
    self.saga = payments.map {
      OrderSaga(
        repository: repository, payments: $0, settings: settings, tracing: tracing,
        logger: logger)
    }
  }

  /// Over the SQLite file at `path` (created and migrated if needed).
  public init(
    databasePath path: String, payments: PaymentsClient? = nil,
    saga settings: OrderSaga.Settings = .init(), tracing: SagaTracing? = nil,
    logger: Logger = Logger(label: "order-service")
  ) throws {
    self.init(
      repository: try SQLiteOrderRepository(path: path), payments: payments, saga: settings,
      tracing: tracing, logger: logger)
  }

  /// Over the database `location` names.
  public static func open(
    _ location: ShopDatabaseLocation, payments: PaymentsClient? = nil,
    saga settings: OrderSaga.Settings = .init(), tracing: SagaTracing? = nil,
    logger: Logger = Logger(label: "order-service")
  ) async throws -> OrderService {
    switch location {
    case .sqlite(let path):
      return try OrderService(
        databasePath: path, payments: payments, saga: settings, tracing: tracing, logger: logger)
    case .postgres(let postgres):
      return OrderService(
        repository: try await PostgresOrderRepository(postgres, logger: logger),
        payments: payments, saga: settings, tracing: tracing, logger: logger)
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
    let begun = saga?.begin(orderID: order.id, now: now)
    try await repository.create(order, saga: begun)
    guard let saga, let begun else { return order }
    // The first step runs now, in this call (and its trace); what it leaves undone the worker
    // finishes. A charge that confirmed the order answers with it as stored; otherwise it is
    // read.
    if let confirmed = await saga.workNew(order, begun) { return confirmed }
    return try await fetchOrder(id: order.id)
  }

  public func getOrder(
    request: Shop_V1_GetOrderRequest, context: ServerContext
  ) async throws -> Shop_V1_Order {
    try Validate.required(request.id, "id")
    return try await fetchOrder(id: request.id)
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
    let rows = try await repository.orders(
      user: request.userID, after: after, limit: pageSize + 1)
    let page = rows.prefix(pageSize)
    return .with {
      $0.orders = page.map(\.order)
      if rows.count > pageSize, let last = page.last {
        $0.nextPageToken = PageToken(afterSequence: last.sequence, query: query).encoded
      }
    }
  }

  public func cancelOrder(
    request: Shop_V1_CancelOrderRequest, context: ServerContext
  ) async throws -> Shop_V1_Order {
    try Validate.required(request.id, "id")
    let now = nowNanos()
    switch try await repository.cancel(
      id: request.id, reason: "cancelled by request", compensation: saga?.lease(now: now),
      now: now)
    {
    case .notFound:
      throw RPCError(code: .notFound, message: "order \(request.id) not found")
    case .alreadyCancelled(let order):
      return order  // CancelOrder is idempotent: a repeat changes nothing.
    case .confirmed(let order):
      throw RPCError(
        code: .failedPrecondition,
        message: """
          order \(order.id) is confirmed (payment \(order.paymentID)); refund it before \
          cancelling
          """)
    case .cancelled(let order):
      // A charge that may have landed is cancelled now; the worker retries if payments is
      // away.
      if let saga { await saga.work(orderID: order.id) }
      return order
    }
  }

  private func fetchOrder(id: String) async throws -> Shop_V1_Order {
    guard let order = try await repository.order(id: id) else {
      throw RPCError(code: .notFound, message: "order \(id) not found")
    }
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
}
