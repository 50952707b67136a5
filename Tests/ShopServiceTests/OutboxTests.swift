import EventService
import Foundation
import GRPCCore
import Logging
import ShopProtos
import ShopSupport
import SwiftProtobuf
import Testing
import UserService

/// `user.created` goes through the users service's outbox: written with the user in one
/// transaction, published by the relay to a real event bus, and not lost when the process
/// stops between the two.
@Suite struct OutboxTests {
  @Test func aUserCreatedIsPublishedOnceEvenAcrossARestart() async throws {
    let usersPath = try databasePath("outbox-users")
    let bus = try EventService(databasePath: try databasePath("outbox-events"))
    let publish: OutboxRelay.Publish = { event in
      var request = Shop_V1_PublishRequest()
      request.event = event
      _ = try await bus.publish(request: request, context: context())
    }
    var users = try UserService(
      databasePath: usersPath,
      eventHeaders: { ["traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"] })
    var request = Shop_V1_CreateUserRequest()
    request.email = "ada@example.com"
    request.name = "Ada"
    let ada = try await users.createUser(request: request, context: context())
    // The process stops before its relay ran: the event waits in the outbox.
    #expect(try Outbox.unpublished(users.outboxDatabase).map(\.id) == ["user.created/\(ada.id)"])

    users = try UserService(databasePath: usersPath)
    let relay = OutboxRelay(database: users.outboxDatabase, logger: Logger(label: "test"), publish: publish)
    #expect(try await relay.relayOnce() == 1)
    #expect(try await relay.relayOnce() == 0)
    #expect(try Outbox.unpublished(users.outboxDatabase).isEmpty)

    // Published again (a crash after publishing, before marking): the bus keeps one.
    let event = try #require(
      try await users.outboxDatabase.read { db in
        try Data.fetchOne(db, sql: "SELECT event FROM outbox")
      }.map { try Shop_V1_Event(serializedBytes: $0) })
    try await publish(event)

    var subscription = Shop_V1_SubscribeRequest()
    subscription.topic = "user.created"
    subscription.consumerGroup = "orders"
    let collector = EventServiceTests.Collector()
    let task = Task {
      try await bus.subscribe(
        request: subscription, response: RPCWriter(wrapping: collector), context: context())
    }
    try await Task.sleep(for: .milliseconds(600))
    task.cancel()
    _ = try? await task.value
    #expect(collector.deliveries.count == 1)
    let delivered = try #require(collector.deliveries.first?.event)
    #expect(delivered.id == "user.created/\(ada.id)" && delivered.type == "shop.v1.UserCreated")
    #expect(delivered.headers["traceparent"]?.hasPrefix("00-4bf92f3577b34da6a3ce929d0e0e4736") == true)
    let created = try Shop_V1_UserCreated(serializedBytes: delivered.payload)
    #expect(created.userID == ada.id && created.email == "ada@example.com" && created.name == "Ada")

    // A user that cannot be created writes no event.
    await expectStatus(.alreadyExists) {
      _ = try await users.createUser(request: request, context: context())
    }
    #expect(try await users.outboxDatabase.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM outbox") } == 1)
  }
}
