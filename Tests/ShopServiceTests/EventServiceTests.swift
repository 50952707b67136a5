import EventService
import Foundation
import GRPCCore
import ShopProtos
import Synchronization
import Testing

/// The event bus against a real SQLite file and a real PostgreSQL server: idempotent publishing, groups that each get every
/// event and share them among their consumers, redelivery of what was not acknowledged, and a
/// log that outlives the process.
@Suite struct EventServiceTests {
  /// Collects what a subscription writes.
  final class Collector: RPCWriterProtocol, Sendable {
    private let received = Mutex<[Shop_V1_Delivery]>([])
    func write(_ element: Shop_V1_Delivery) async throws {
      received.withLock { $0.append(element) }
    }
    func write(contentsOf elements: some Sequence<Shop_V1_Delivery>) async throws {
      for element in elements { try await write(element) }
    }
    var deliveries: [Shop_V1_Delivery] { received.withLock { $0 } }
  }

  func event(
    _ id: String, topic: String = "user.created", payload: String = "p"
  ) -> Shop_V1_PublishRequest {
    var request = Shop_V1_PublishRequest()
    request.event.id = id
    request.event.topic = topic
    request.event.type = "shop.v1.UserCreated"
    request.event.payload = Data(payload.utf8)
    request.event.headers = [
      "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    ]
    return request
  }

  /// Subscribes `consumers` subscribers of one group at once until `count` deliveries arrived
  /// among them (or `timeout`), then ends the subscriptions; returns each one's deliveries.
  func receive(
    _ bus: EventService, group: String, consumers: Int, count: Int, ackDeadline: UInt32 = 30,
    timeout: Duration = .seconds(300)
  ) async throws -> [[Shop_V1_Delivery]] {
    var request = Shop_V1_SubscribeRequest()
    request.topic = "user.created"
    request.consumerGroup = group
    request.ackDeadlineSeconds = ackDeadline
    let collectors = (0..<consumers).map { _ in Collector() }
    let subscriptions = collectors.map { [request] collector in
      Task {
        try await bus.subscribe(
          request: request, response: RPCWriter(wrapping: collector), context: context())
      }
    }
    func received() -> Int { collectors.reduce(0) { $0 + $1.deliveries.count } }
    let deadline = ContinuousClock.now + timeout
    while received() < count, ContinuousClock.now < deadline {
      try await Task.sleep(for: .milliseconds(20))
    }
    for subscription in subscriptions { subscription.cancel() }
    for subscription in subscriptions { _ = try? await subscription.value }
    return collectors.map(\.deliveries)
  }

  /// One subscriber's first `count` deliveries. (Under a loaded test run a subscription may be
  /// slow to end, and a short ack deadline pass meanwhile: what comes after the first `count` is
  /// not looked at.)
  func receive(
    _ bus: EventService, group: String, count: Int, ackDeadline: UInt32 = 30,
    timeout: Duration = .seconds(300)
  ) async throws -> [Shop_V1_Delivery] {
    let deliveries = try await receive(
      bus, group: group, consumers: 1, count: count, ackDeadline: ackDeadline, timeout: timeout)
    return Array(deliveries[0].prefix(count))
  }

  func ack(_ bus: EventService, group: String, _ ids: [String]) async throws -> UInt32 {
    var request = Shop_V1_AckRequest()
    request.topic = "user.created"
    request.consumerGroup = group
    request.eventIds = ids
    return try await bus.ack(request: request, context: context()).acknowledged
  }

  @Test(arguments: Backend.allCases) func publishingIsIdempotentByID(
    _ backend: Backend
  ) async throws {
    let bus = try await EventService.open(
      try await database("events_idempotent", on: backend), logger: TestPostgres.logger)
    let first = try await bus.publish(request: event("usr_1"), context: context())
    let second = try await bus.publish(request: event("usr_2"), context: context())
    let again = try await bus.publish(request: event("usr_1", payload: "other"), context: context())
    #expect(second.sequence > first.sequence && !first.duplicate && !second.duplicate)
    #expect(again.duplicate && again.sequence == first.sequence)
    let delivered = try await receive(bus, group: "orders", count: 2)
    #expect(delivered.map(\.event.id) == ["usr_1", "usr_2"])
    let earliest = try #require(delivered.first)
    #expect(earliest.event.payload == Data("p".utf8), "the first publication stands")
    #expect(earliest.event.headers["traceparent"]?.hasPrefix("00-4bf92f") == true)
    #expect(delivered.allSatisfy { $0.attempt == 1 && $0.event.publishTime.seconds > 0 })
  }

  @Test(arguments: Backend.allCases) func everyGroupGetsEveryEventAndAGroupSharesThem(
    _ backend: Backend
  ) async throws {
    let bus = try await EventService.open(
      try await database("events_groups", on: backend), logger: TestPostgres.logger)
    for index in 0..<20 {
      _ = try await bus.publish(request: event("e\(index)"), context: context())
    }
    let orders = try await receive(bus, group: "orders", count: 20)
    let audit = try await receive(bus, group: "audit", count: 20)
    #expect(orders.map(\.event.id) == (0..<20).map { "e\($0)" })
    #expect(audit.count == 20)
    // Two consumers of one group at once: between them every event, none twice.
    let shared = try await receive(bus, group: "shared", consumers: 2, count: 20)
    let ids = shared.joined().map(\.event.id)
    #expect(ids.count == 20 && Set(ids).count == 20, "\(ids)")
  }

  @Test(arguments: Backend.allCases) func whatIsNotAcknowledgedComesAgain(
    _ backend: Backend
  ) async throws {
    let location = try await database("events_redelivery", on: backend)
    let bus = try await EventService.open(
      location, pollInterval: .milliseconds(50), logger: TestPostgres.logger)
    for id in ["a", "b", "c"] { _ = try await bus.publish(request: event(id), context: context()) }
    let first = try await receive(bus, group: "orders", count: 3, ackDeadline: 2)
    #expect(first.map(\.event.id) == ["a", "b", "c"])
    #expect(try await ack(bus, group: "orders", ["a", "c", "nope"]) == 2)
    #expect(try await ack(bus, group: "orders", ["a"]) == 0, "twice is harmless")
    // b's deadline passes: it comes again, the second attempt; a and c never do.
    let again = try await receive(bus, group: "orders", count: 1, ackDeadline: 2)
    #expect(again.map(\.event.id) == ["b"], "\(again.map(\.event.id))")
    #expect((again.first?.attempt ?? 0) >= 2)
    // A new process on the same file: the group's place and its unacknowledged event are kept.
    _ = try await bus.publish(request: event("d"), context: context())
    let restarted = try await EventService.open(
      location, pollInterval: .milliseconds(50), logger: TestPostgres.logger)
    try await Task.sleep(for: .milliseconds(2100))
    let after = try await receive(restarted, group: "orders", count: 2, ackDeadline: 2)
    #expect(after.map(\.event.id).sorted() == ["b", "d"], "\(after.map(\.event.id))")
    #expect((after.first { $0.event.id == "b" }?.attempt ?? 0) >= 3)
  }

  /// Retention: events published before the cutoff go, except those a group holds
  /// unacknowledged, which go once acknowledged; a group whose cursor is behind goes on from
  /// what is left (Kafka's `retention.ms`). An instance trims by itself, now and then.
  @Test(arguments: Backend.allCases) func eventsPastTheirRetentionGo(
    _ backend: Backend
  ) async throws {
    let bus = try await EventService.open(
      try await database("events_retention", on: backend), retention: nil,
      logger: TestPostgres.logger)
    for id in ["a", "b", "c", "d"] {
      _ = try await bus.publish(request: event(id), context: context())
    }
    let handed = try await receive(bus, group: "orders", count: 4)
    #expect(handed.map(\.event.id) == ["a", "b", "c", "d"])
    #expect(try await ack(bus, group: "orders", ["b", "c", "d"]) == 3)
    func soon() -> Int64 { Int64(Date().timeIntervalSince1970 * 1e9) + 1_000_000_000 }
    #expect(await bus.trim(publishedBefore: soon()) == 3, "a is held by orders")
    // audit, behind: b, c and d went before it read them; a is there.
    let audit = try await receive(bus, group: "audit", count: 1)
    #expect(audit.map(\.event.id) == ["a"], "\(audit.map(\.event.id))")
    #expect(try await ack(bus, group: "audit", ["a"]) == 1)
    #expect(await bus.trim(publishedBefore: soon()) == 0, "a is still held by orders")
    #expect(try await ack(bus, group: "orders", ["a"]) == 1)
    #expect(await bus.trim(publishedBefore: soon()) == 1)
    #expect(await bus.trim(publishedBefore: soon()) == 0)

    let trimming = try await EventService.open(
      try await database("events_retention_timer", on: backend), retention: .seconds(2),
      logger: TestPostgres.logger)
    let first = try await trimming.publish(request: event("old"), context: context())
    #expect(try await trimming.publish(request: event("old"), context: context()).duplicate)
    // Once trimmed (a second or so past its 2 s), the id is new again: publishing is idempotent
    // within the retention.
    var trimmed = false
    let deadline = ContinuousClock.now + .seconds(30)
    while !trimmed, ContinuousClock.now < deadline {
      try await Task.sleep(for: .milliseconds(500))
      let again = try await trimming.publish(request: event("old"), context: context())
      trimmed = !again.duplicate && again.sequence > first.sequence
    }
    #expect(trimmed, "the event outlived its retention")
  }

  @Test(arguments: Backend.allCases) func badInputIsRefused(_ backend: Backend) async throws {
    let bus = try await EventService.open(
      try await database("events_bad", on: backend), logger: TestPostgres.logger)
    for topic in ["", "User.Created", "user..created", "user created", ".user"] {
      let message = await expectStatus(.invalidArgument) {
        _ = try await bus.publish(request: event("x", topic: topic), context: context())
      }
      #expect(message.contains("topic"), "\(message)")
    }
    await expectStatus(.invalidArgument) {
      _ = try await bus.publish(request: event(""), context: context())
    }
    var request = Shop_V1_SubscribeRequest()
    request.topic = "user.created"
    await expectStatus(.invalidArgument) {
      try await bus.subscribe(
        request: request, response: RPCWriter(wrapping: Collector()), context: context())
    }
  }
}
