import EventService
import Foundation
import GRPCCore
import Logging
import OrderService
import ShopProtos
import ShopSupport
import SwiftProtobuf
import Testing
import UserService

/// `user.created` goes through the users service's outbox: written with the user in one
/// transaction, published by the relay to a real event bus, and not lost when the process
/// stops between the two.
@Suite struct OutboxTests {
  @Test(arguments: Backend.allCases)
  func aUserCreatedIsPublishedOnceEvenAcrossARestart(_ backend: Backend) async throws {
    let usersDatabase = try await database("outbox_users", on: backend)
    let bus = try await EventService.open(
      try await database("outbox_events", on: backend), logger: Logger(label: "test"))
    let publish: OutboxRelay.Publish = { event in
      var request = Shop_V1_PublishRequest()
      request.event = event
      _ = try await bus.publish(request: request, context: context())
    }
    var users = try await UserService.open(
      usersDatabase, logger: Logger(label: "test"),
      eventHeaders: { ["traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"] })
    var request = Shop_V1_CreateUserRequest()
    request.email = "ada@example.com"
    request.name = "Ada"
    let ada = try await users.createUser(request: request, context: context())
    // The process stops before its relay ran: the event waits in the outbox.
    #expect(try await users.outbox.unpublished(limit: 10).map(\.id) == ["user.created/\(ada.id)"])

    users = try await UserService.open(usersDatabase, logger: Logger(label: "test"))
    let relay = OutboxRelay(outbox: users.outbox, logger: Logger(label: "test"), publish: publish)
    #expect(try await relay.relayOnce() == 1)
    #expect(try await relay.relayOnce() == 0)
    #expect(try await users.outbox.unpublished(limit: 10).isEmpty)

    // Published again (a crash after publishing, before marking): the bus keeps one.
    let event = try #require(try await users.outbox.all().first)
    try await publish(event)

    var subscription = Shop_V1_SubscribeRequest()
    subscription.topic = "user.created"
    subscription.consumerGroup = "orders"
    // Never acknowledged: a deadline no starved run reaches, so a second delivery could only be
    // the second publish.
    subscription.ackDeadlineSeconds = 3600
    let collector = EventServiceTests.Collector()
    let task = Task {
      try await bus.subscribe(
        request: subscription, response: RPCWriter(wrapping: collector), context: context())
    }
    // Generous: async tests share a loaded test run's threads with blocking ones.
    let deadline = ContinuousClock.now + .seconds(300)
    while collector.deliveries.isEmpty, ContinuousClock.now < deadline {
      try await Task.sleep(for: .milliseconds(20))
    }
    try await Task.sleep(for: .milliseconds(500))  // a second delivery would be here by now
    task.cancel()
    _ = try? await task.value
    #expect(collector.deliveries.count == 1)
    let delivered = try #require(collector.deliveries.first?.event)
    #expect(delivered.id == "user.created/\(ada.id)" && delivered.type == "shop.v1.UserCreated")
    #expect(
      delivered.headers["traceparent"]?.hasPrefix("00-4bf92f3577b34da6a3ce929d0e0e4736") == true)
    let created = try Shop_V1_UserCreated(serializedBytes: delivered.payload)
    #expect(created.userID == ada.id && created.email == "ada@example.com" && created.name == "Ada")

    // A user that cannot be created writes no event.
    await expectStatus(.alreadyExists) {
      _ = try await users.createUser(request: request, context: context())
    }
    #expect(try await users.outbox.all().count == 1)
  }
}

/// orders consumes `user.created` from a real event bus and keeps one customer record per
/// user, whatever is delivered twice (on either backend).
@Suite struct CustomerRecordTests {
  /// Forwards what a subscription writes to the consumer's handler.
  final class Forwarder: RPCWriterProtocol, Sendable {
    let each: @Sendable (Shop_V1_Delivery) async throws -> Void
    init(_ each: @escaping @Sendable (Shop_V1_Delivery) async throws -> Void) { self.each = each }
    func write(_ element: Shop_V1_Delivery) async throws { try await each(element) }
    func write(contentsOf elements: some Sequence<Shop_V1_Delivery>) async throws {
      for element in elements { try await write(element) }
    }
  }

  @Test(arguments: Backend.allCases)
  func eachUserBecomesOneCustomer(_ backend: Backend) async throws {
    let logger = Logger(label: "test")
    let bus = try await EventService.open(
      try await database("customers_events", on: backend), pollInterval: .milliseconds(50),
      logger: logger)
    let users = try await UserService.open(
      try await database("customers_users", on: backend), logger: logger)
    let orders = try await OrderService.open(
      try await database("customers_orders", on: backend), logger: logger)
    let publish: OutboxRelay.Publish = { event in
      var request = Shop_V1_PublishRequest()
      request.event = event
      _ = try await bus.publish(request: request, context: context())
    }
    var ids: [String] = []
    for name in ["Ada", "Grace", "Edsger"] {
      var request = Shop_V1_CreateUserRequest()
      request.email = "\(name.lowercased())@example.com"
      request.name = name
      ids.append(try await users.createUser(request: request, context: context()).id)
    }
    var lookup = Shop_V1_GetCustomerRequest()
    lookup.userID = ids[0]
    await expectStatus(.notFound) {
      _ = try await orders.getCustomer(request: lookup, context: context())
    }
    try await OutboxRelay(outbox: users.outbox, logger: Logger(label: "test"), publish: publish)
      .relayOnce()

    let consumer = EventConsumer(
      topic: "user.created", group: "orders", logger: Logger(label: "test"),
      subscribe: { request, each in
        try await bus.subscribe(
          request: request, response: RPCWriter(wrapping: Forwarder(each)), context: context())
      },
      acknowledge: { request in _ = try await bus.ack(request: request, context: context()) },
      handle: { event in try await orders.handleUserCreated(event) })
    let running = Task { try await consumer.run() }
    defer { running.cancel() }
    let deadline = ContinuousClock.now + .seconds(300)
    var customers: [Shop_V1_Customer] = []
    while customers.count < 3, ContinuousClock.now < deadline {
      customers = []
      for id in ids {
        lookup.userID = id
        if let customer = try? await orders.getCustomer(request: lookup, context: context()) {
          customers.append(customer)
        }
      }
      try await Task.sleep(for: .milliseconds(50))
    }
    #expect(customers.map(\.name) == ["Ada", "Grace", "Edsger"])
    let ada = try #require(customers.first)
    #expect(ada.email == "ada@example.com" && ada.createTime.seconds > 0)
    // Delivered again (a redelivery after a crash before the ack): nothing changes.
    let event = try #require(try await users.outbox.all().first)
    #expect(try await orders.handleUserCreated(event) == false)
  }
}
