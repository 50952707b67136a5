import Foundation
import GRPCCore
import OrderService
import PaymentService
import ServiceLifecycle
import ShopProtos
import Synchronization
import Testing

/// A real `PaymentService` on its own database, reached through a desk that can be closed
/// (calls fail UNAVAILABLE before reaching it) or made to lose its replies (the charge lands,
/// the caller hears UNAVAILABLE), and that counts what reached it.
final class PaymentsDesk: Sendable {
  let service: PaymentService
  private let state = Mutex(State())
  private struct State {
    var reachable = true
    var loseReplies = false
    var charges: [String: Int] = [:]
    var cancelled: [String] = []
    var duringCharge: (@Sendable (String) async -> Void)?
  }

  init(on backend: Backend, limit: Int64 = 1_000_000) async throws {
    service = try await PaymentService.open(
      try await database("payments", on: backend), chargeLimitMinorUnits: limit,
      logger: TestPostgres.logger)
  }

  var reachable: Bool {
    get { state.withLock { $0.reachable } }
    set { state.withLock { $0.reachable = newValue } }
  }
  var loseReplies: Bool {
    get { state.withLock { $0.loseReplies } }
    set { state.withLock { $0.loseReplies = newValue } }
  }
  /// Charge calls that reached payments, by idempotency key.
  var charges: [String: Int] { state.withLock { $0.charges } }
  /// Runs with each charge's key after the charge is made, before payments answers.
  var duringCharge: (@Sendable (String) async -> Void)? {
    get { state.withLock { $0.duringCharge } }
    set { state.withLock { $0.duringCharge = newValue } }
  }
  var cancelled: [String] { state.withLock { $0.cancelled } }

  var client: PaymentsClient {
    PaymentsClient(
      charge: { request in
        try self.enter()
        self.state.withLock { $0.charges[request.idempotencyKey, default: 0] += 1 }
        let payment = try await self.service.charge(request: request, context: context())
        await self.duringCharge?(request.idempotencyKey)
        if self.loseReplies { throw RPCError(code: .unavailable, message: "reply lost") }
        return payment
      },
      cancelCharge: { request in
        try self.enter()
        let response = try await self.service.cancelCharge(request: request, context: context())
        self.state.withLock { $0.cancelled.append(request.idempotencyKey) }
        return response
      })
  }

  private func enter() throws {
    guard reachable else { throw RPCError(code: .unavailable, message: "payments unreachable") }
  }

  /// The payment made with an order's key, read through CancelCharge — which is idempotent,
  /// so on a cancelled key it changes nothing and answers what was done.
  func payment(forCancelledOrder id: String) async throws -> Shop_V1_Payment? {
    let response = try await service.cancelCharge(
      request: .with { $0.idempotencyKey = id }, context: context())
    return response.hasPayment ? response.payment : nil
  }
}

/// The order saga against real SQLite files, and a real PostgreSQL server, for orders and
/// payments.
@Suite struct OrderSagaTests {
  func order(_ minor: Int64 = 500) -> Shop_V1_CreateOrderRequest {
    .with {
      $0.userID = "usr_1"
      $0.lineItems = [
        .with {
          $0.sku = "A"
          $0.quantity = 1
          $0.unitPrice = .with {
            $0.currencyCode = "USD"
            $0.minorUnits = minor
          }
        }
      ]
    }
  }

  func settings(timeout: Duration = .seconds(600)) -> OrderSaga.Settings {
    var settings = OrderSaga.Settings()
    settings.timeout = timeout
    settings.pollInterval = .milliseconds(20)
    // Longer than any step takes on a loaded machine: two instances never hold one saga.
    settings.lease = .seconds(120)
    return settings
  }

  /// Polls until `condition` holds, for up to `seconds` (long: in a loaded run, async tests
  /// may wait a long time for a thread).
  func eventually(
    _ seconds: Double = 600, _ condition: () async throws -> Bool
  ) async throws -> Bool {
    let end = Date().addingTimeInterval(seconds)
    while Date() < end {
      if try await condition() { return true }
      try await Task.sleep(for: .milliseconds(20))
    }
    return try await condition()
  }

  /// Runs the services' saga workers while `body` runs.
  func withWorkers(
    _ services: [OrderService], _ body: () async throws -> Void
  ) async throws {
    try await withThrowingTaskGroup(of: Void.self) { group in
      for service in services {
        let worker = try #require(service.sagaWorker)
        group.addTask { try await worker.run() }
      }
      try await body()
      group.cancelAll()
    }
  }

  @Test(arguments: Backend.allCases) func aChargedOrderIsConfirmedInTheCreateCall(
    _ backend: Backend
  ) async throws {
    let payments = try await PaymentsDesk(on: backend)
    let orders = try await OrderService.open(
      try await database("orders", on: backend), payments: payments.client)
    let created = try await orders.createOrder(request: order(1234), context: context())
    #expect(created.status == .confirmed)
    #expect(created.paymentID.hasPrefix("pay_"))
    let payment = try await payments.service.getPayment(
      request: .with { $0.id = created.paymentID }, context: context())
    #expect(payment.idempotencyKey == created.id)
    #expect(payment.orderID == created.id)
    #expect(payment.amount.minorUnits == 1234)
    #expect(payment.status == .charged)
    #expect(payments.charges == [created.id: 1])
    // The answer is the order as stored.
    #expect(
      try await orders.getOrder(request: .with { $0.id = created.id }, context: context())
        == created)
  }

  /// An order cancelled while its charge is on its way: the charge does not confirm it, and the
  /// create call goes on to refund the charge (the saga's compensation) and answers with the
  /// cancelled order.
  @Test(arguments: Backend.allCases) func anOrderCancelledDuringItsChargeIsRefundedInTheCall(
    _ backend: Backend
  ) async throws {
    let payments = try await PaymentsDesk(on: backend)
    let orders = try await OrderService.open(
      try await database("orders", on: backend), payments: payments.client, saga: settings())
    payments.duringCharge = { id in
      _ = try? await orders.cancelOrder(request: .with { $0.id = id }, context: context())
    }
    let created = try await orders.createOrder(request: order(700), context: context())
    #expect(created.status == .cancelled && created.cancelReason == "cancelled by request")
    #expect(created.paymentID.isEmpty)
    #expect(payments.charges == [created.id: 1])
    #expect(payments.cancelled == [created.id])
    let refunded = try await payments.payment(forCancelledOrder: created.id)
    #expect(refunded?.status == .refunded, "\(String(describing: refunded))")
    #expect(
      try await orders.getOrder(request: .with { $0.id = created.id }, context: context())
        == created)
  }

  @Test(arguments: Backend.allCases) func aDeclinedChargeCancelsTheOrderWithTheReason(
    _ backend: Backend
  ) async throws {
    let payments = try await PaymentsDesk(on: backend, limit: 1000)
    let orders = try await OrderService.open(
      try await database("orders", on: backend), payments: payments.client)
    let created = try await orders.createOrder(request: order(5000), context: context())
    #expect(created.status == .cancelled)
    #expect(
      created.cancelReason
        == "payment declined: charge declined: 5000 USD minor units exceeds the limit of 1000")
    #expect(created.paymentID.isEmpty)
  }

  @Test(arguments: Backend.allCases) func anUnreachablePaymentsIsRetriedUntilTheOrderIsConfirmed(
    _ backend: Backend
  ) async throws {
    let payments = try await PaymentsDesk(on: backend)
    let orders = try await OrderService.open(
      try await database("orders", on: backend), payments: payments.client, saga: settings())
    payments.reachable = false
    let created = try await orders.createOrder(request: order(), context: context())
    #expect(created.status == .pending)
    try await withWorkers([orders]) { () async throws in
      try await Task.sleep(for: .milliseconds(600))  // several failed attempts
      payments.reachable = true
      #expect(
        try await eventually {
          try await orders.getOrder(request: .with { $0.id = created.id }, context: context())
            .status == .confirmed
        })
    }
    #expect(payments.charges == [created.id: 1])
  }

  /// The charge lands but its reply is lost until the saga's timeout: the order is cancelled
  /// and the compensation refunds the charge, so no charge stands without a confirmed order.
  @Test(arguments: Backend.allCases) func aTimedOutSagaCancelsTheOrderAndRefundsAChargeThatLanded(
    _ backend: Backend
  ) async throws {
    let payments = try await PaymentsDesk(on: backend)
    let orders = try await OrderService.open(
      try await database("orders", on: backend), payments: payments.client,
      saga: settings(timeout: .seconds(3)))
    payments.loseReplies = true
    let created = try await orders.createOrder(request: order(), context: context())
    #expect(created.status == .pending)
    try await withWorkers([orders]) { () async throws in
      #expect(
        try await eventually {
          payments.cancelled.contains(created.id)
        })
    }
    let final = try await orders.getOrder(request: .with { $0.id = created.id }, context: context())
    #expect(final.status == .cancelled)
    #expect(final.cancelReason.hasPrefix("payment did not complete within 3.0 seconds"))
    #expect(final.cancelReason.contains("reply lost"), "\(final.cancelReason)")
    let charged = try #require(try await payments.payment(forCancelledOrder: created.id))
    #expect(charged.status == .refunded)
    #expect(charged.refundReason.hasPrefix("order cancelled: payment did not complete"))
  }

  /// The timeout with payments away the whole time: the order is cancelled at its deadline,
  /// and once payments is back the key is cancelled, so a charge still on its way is declined.
  @Test(arguments: Backend.allCases)
  func aSagaTimesOutWhilePaymentsIsAwayAndCompensatesWhenItIsBack(_ backend: Backend) async throws {
    let payments = try await PaymentsDesk(on: backend)
    let orders = try await OrderService.open(
      try await database("orders", on: backend), payments: payments.client,
      saga: settings(timeout: .seconds(2)))
    payments.reachable = false
    let created = try await orders.createOrder(request: order(), context: context())
    try await withWorkers([orders]) { () async throws in
      #expect(
        try await eventually {
          try await orders.getOrder(request: .with { $0.id = created.id }, context: context())
            .status == .cancelled
        })
      payments.reachable = true
      #expect(try await eventually { payments.cancelled.contains(created.id) })
    }
    #expect(payments.charges.isEmpty)
    let late = await expectStatus(.failedPrecondition) {
      _ = try await payments.service.charge(
        request: .with {
          $0.idempotencyKey = created.id
          $0.orderID = created.id
          $0.amount = created.total
        }, context: context())
    }
    #expect(late.contains("was cancelled"))
  }

  /// Two instances on one database: each saga is worked by one of them at a time, so every
  /// order is charged once although both workers see every saga.
  @Test(arguments: Backend.allCases) func instancesSharingADatabaseClaimEachSagaOnce(
    _ backend: Backend
  ) async throws {
    let payments = try await PaymentsDesk(on: backend)
    let location = try await database("orders", on: backend)
    let first = try await OrderService.open(
      location, payments: payments.client, saga: settings())
    let second = try await OrderService.open(
      location, payments: payments.client, saga: settings())
    payments.reachable = false
    var ids: [String] = []
    for i in 0..<40 {
      ids.append(
        try await (i % 2 == 0 ? first : second).createOrder(request: order(), context: context())
          .id)
    }
    try await withWorkers([first, second]) { () async throws in
      payments.reachable = true
      #expect(
        try await eventually {
          var confirmed = 0
          for id in ids {
            let order = try await first.getOrder(request: .with { $0.id = id }, context: context())
            if order.status == .confirmed { confirmed += 1 }
          }
          return confirmed == ids.count
        })
    }
    #expect(payments.charges.count == ids.count)
    #expect(payments.charges.values.allSatisfy { $0 == 1 }, "\(payments.charges)")
  }
}
