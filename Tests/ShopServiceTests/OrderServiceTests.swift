import GRPCCore
import OrderService
import ShopProtos
import Testing

/// `OrderService` against a real SQLite file.
@Suite struct OrderServiceTests {
  func item(
    _ sku: String, _ quantity: Int32, _ minor: Int64, _ currency: String = "USD"
  )
    -> Shop_V1_LineItem
  {
    .with {
      $0.sku = sku
      $0.quantity = quantity
      $0.unitPrice = .with {
        $0.currencyCode = currency
        $0.minorUnits = minor
      }
    }
  }

  @Test(arguments: Backend.allCases) func createsAnOrderWithItsTotal(
    _ backend: Backend
  ) async throws {
    let service = try await OrderService.open(
      try await database("orders", on: backend))
    let order = try await service.createOrder(
      request: .with {
        $0.userID = "usr_1"
        $0.lineItems = [item("BOOK", 2, 1999), item("PEN", 3, 150)]
      }, context: context())
    #expect(order.status == .pending)
    #expect(order.total.currencyCode == "USD")
    #expect(order.total.minorUnits == 2 * 1999 + 3 * 150)
    let fetched = try await service.getOrder(
      request: .with { $0.id = order.id }, context: context())
    #expect(fetched == order)
  }

  @Test(arguments: Backend.allCases) func validatesLineItems(_ backend: Backend) async throws {
    let service = try await OrderService.open(
      try await database("orders", on: backend))
    func create(_ items: [Shop_V1_LineItem], user: String = "usr_1") async -> String {
      await expectStatus(.invalidArgument) {
        _ = try await service.createOrder(
          request: .with {
            $0.userID = user
            $0.lineItems = items
          }, context: context())
      }
    }
    #expect(await create([]) == "line_items: at least one is required")
    #expect(await create([item("A", 1, 1)], user: "") == "user_id: is required")
    #expect(await create([item("A", 0, 1)]) == "line_items[0].quantity: must be from 1 to 10000")
    #expect(await create([item("", 1, 1)]) == "line_items[0].sku: is required")
    #expect(
      await create([item("A", 1, 1), item("B", 1, 1, "EUR")])
        == "line_items[1].unit_price.currency_code: is EUR but the order is in USD")
    #expect(
      await create([item("A", 1, 1, "usd")])
        == #"line_items[0].unit_price.currency_code: "usd" is not an ISO 4217 code such as USD"#)
    #expect(await create([item("A", 10000, .max)]) == "line_items: the order total is too large")
  }

  @Test(arguments: Backend.allCases) func cancelIsIdempotentAndRefusedOnceConfirmed(
    _ backend: Backend
  ) async throws {
    let payments = try await PaymentsDesk(on: backend)
    let service = try await OrderService.open(
      try await database("orders", on: backend), payments: payments.client)
    payments.reachable = false
    let order = try await service.createOrder(
      request: .with {
        $0.userID = "usr_1"
        $0.lineItems = [item("A", 1, 500)]
      }, context: context())
    #expect(order.status == .pending)
    payments.reachable = true
    let cancelled = try await service.cancelOrder(
      request: .with { $0.id = order.id }, context: context())
    #expect(cancelled.status == .cancelled)
    #expect(cancelled.cancelReason == "cancelled by request")
    let again = try await service.cancelOrder(
      request: .with { $0.id = order.id }, context: context())
    #expect(again == cancelled)
    // The compensation ran: a charge with the order's key is declined from now on.
    #expect(payments.cancelled == [order.id])

    let confirmed = try await service.createOrder(
      request: .with {
        $0.userID = "usr_1"
        $0.lineItems = [item("A", 1, 500)]
      }, context: context())
    #expect(confirmed.status == .confirmed)
    let message = await expectStatus(.failedPrecondition) {
      _ = try await service.cancelOrder(
        request: .with { $0.id = confirmed.id }, context: context())
    }
    #expect(message.contains("is confirmed (payment \(confirmed.paymentID))"))
    await expectStatus(.notFound) {
      _ = try await service.cancelOrder(
        request: .with { $0.id = "ord_missing" }, context: context())
    }
  }

  @Test(arguments: Backend.allCases) func listsOneUsersOrdersInPages(
    _ backend: Backend
  ) async throws {
    let service = try await OrderService.open(
      try await database("orders", on: backend))
    var mine: [String] = []
    for i in 0..<5 {
      for user in ["usr_a", "usr_b"] {
        let order = try await service.createOrder(
          request: .with {
            $0.userID = user
            $0.lineItems = [item("SKU\(i)", 1, 100)]
          }, context: context())
        if user == "usr_a" { mine.append(order.id) }
      }
    }
    let first = try await service.listOrders(
      request: .with {
        $0.userID = "usr_a"
        $0.pageSize = 2
      }, context: context())
    var seen = first.orders.map(\.id)
    var token = first.nextPageToken
    while !token.isEmpty {
      let page = try await service.listOrders(
        request: .with {
          $0.userID = "usr_a"
          $0.pageSize = 2
          $0.pageToken = token
        }, context: context())
      seen += page.orders.map(\.id)
      token = page.nextPageToken
    }
    #expect(seen == mine)
    // A token belongs to its query: another user's listing refuses it.
    await expectStatus(.invalidArgument) {
      _ = try await service.listOrders(
        request: .with {
          $0.userID = "usr_b"
          $0.pageToken = first.nextPageToken
        }, context: context())
    }
  }
}
