import Foundation
import GRPCCore
import Logging
import ServiceLifecycle
import ShopProtos
import ShopSupport
import SwiftProtobuf
import Synchronization

/// `shop.v1.EventService`: the shop's event bus over its own database (SQLite, or PostgreSQL
/// shared by instances on several hosts).
///
/// Each topic is a log (`events`, by sequence). A consumer group has a cursor (`cursors`: the
/// next sequence it has not been handed) and the events it was handed and has not yet
/// acknowledged (`pending`, with a deadline). A delivery is claimed in one transaction —
/// redeliveries whose deadline passed first, then new events past the cursor — so consumers of
/// a group, on one instance of the bus or several sharing the database, never both hold an
/// event; one that crashes lets its events' deadlines pass and they go to another. At least
/// once: a consumer must acknowledge, and must handle an event idempotently (by its id).
public final class EventService: Shop_V1_EventService.SimpleServiceProtocol, Sendable {
  private let log: any EventLog
  /// Wakes the subscriptions of this instance when an event is published, here or (on
  /// PostgreSQL, which notifies) at another instance; the poll finds the rest.
  private let published = Notifier()
  let pollInterval: Duration
  /// How long an event is kept after it is published (nil: for ever).
  public let retention: Duration?
  private let logger: Logger
  private let watching: Task<Void, Never>
  private let trimming: Task<Void, Never>?

  /// How long events are kept unless told otherwise: a week, as Kafka's `retention.ms`.
  public static let defaultRetention = Duration.seconds(7 * 86_400)

  public init(
    log: any EventLog, pollInterval: Duration = .milliseconds(250),
    retention: Duration? = EventService.defaultRetention,
    logger: Logger = Logger(label: "event-service")
  ) {
    self.log = log
    self.pollInterval = pollInterval
    self.retention = retention
    self.logger = logger
    let published = published
    watching = Task { await log.watchPublications { published.notify() } }
    if let retention {
      // Each instance trims now and then (every instance may: they skip each other's rows).
      let every = min(.seconds(60), max(.seconds(1), retention / 2))
      trimming = Task {
        while !Task.isCancelled {
          let cutoff = nowNanos() - Self.nanoseconds(retention)
          await Self.trim(log, publishedBefore: cutoff, logger: logger)
          try? await Task.sleep(for: every)
        }
      }
    } else {
      trimming = nil
    }
  }

  deinit {
    watching.cancel()
    trimming?.cancel()
  }

  /// Over the SQLite file at `path` (created and migrated if needed).
  public convenience init(
    databasePath path: String, pollInterval: Duration = .milliseconds(250),
    retention: Duration? = EventService.defaultRetention
  )
    throws
  {
    self.init(
      log: try SQLiteEventLog(path: path), pollInterval: pollInterval, retention: retention)
  }

  /// Over the database `location` names. On PostgreSQL, where every instance hears of every
  /// publication, the poll is only a safety net: `pollInterval` is at least a second there.
  public static func open(
    _ location: ShopDatabaseLocation, pollInterval: Duration = .milliseconds(250),
    retention: Duration? = EventService.defaultRetention, logger: Logger
  ) async throws -> EventService {
    switch location {
    case .sqlite(let path):
      return EventService(
        log: try SQLiteEventLog(path: path), pollInterval: pollInterval, retention: retention,
        logger: logger)
    case .postgres(let postgres):
      return EventService(
        log: try await PostgresEventLog(postgres, logger: logger),
        pollInterval: max(pollInterval, .seconds(1)), retention: retention, logger: logger)
    }
  }

  // MARK: Retention

  /// Deletes the events published before `cutoff` (nanoseconds since the epoch), a batch at a
  /// time, but those a group holds unacknowledged: they go once acknowledged and past the
  /// cutoff. As with Kafka's retention, a group whose cursor is behind loses what is deleted
  /// before it reads it. Returns how many went.
  @discardableResult
  public func trim(publishedBefore cutoff: Int64) async -> Int {
    await Self.trim(log, publishedBefore: cutoff, logger: logger)
  }

  static func nanoseconds(_ duration: Duration) -> Int64 {
    duration.components.seconds * 1_000_000_000 + duration.components.attoseconds / 1_000_000_000
  }

  @discardableResult
  private static func trim(
    _ log: any EventLog, publishedBefore cutoff: Int64, logger: Logger
  ) async -> Int {
    let batch = 10_000
    var total = 0
    do {
      while !Task.isCancelled {
        let deleted = try await log.trim(publishedBefore: cutoff, limit: batch)
        total += deleted
        if deleted < batch { break }
      }
    } catch {
      logger.warning(
        "cannot delete events past their retention; trying again later",
        metadata: ["error": "\(error)"])
    }
    if total > 0 {
      logger.info("deleted events past their retention", metadata: ["events": "\(total)"])
    }
    return total
  }

  // MARK: Publish

  public func publish(
    request: Shop_V1_PublishRequest, context: ServerContext
  ) async throws
    -> Shop_V1_PublishResponse
  {
    let event = request.event
    try Validate.required(event.id, "event.id")
    try Self.validateTopic(event.topic, "event.topic")
    try Validate.required(event.type, "event.type", maxLength: 255)
    guard event.payload.count <= 1 << 20 else {
      throw Validate.invalid("event.payload", "is over 1 MiB")
    }
    var headers = Google_Protobuf_Struct()
    for (key, value) in event.headers {
      headers.fields[key] = Google_Protobuf_Value(stringValue: value)
    }
    let headerBytes = try headers.serializedData()
    let (sequence, duplicate) = try await log.publish(event, headers: headerBytes)
    var response = Shop_V1_PublishResponse()
    response.sequence = sequence
    response.duplicate = duplicate
    if !duplicate { published.notify() }
    return response
  }

  // MARK: Subscribe

  public func subscribe(
    request: Shop_V1_SubscribeRequest, response: RPCWriter<Shop_V1_Delivery>,
    context: ServerContext
  ) async throws {
    try Self.validateTopic(request.topic, "topic")
    try Validate.required(request.consumerGroup, "consumer_group")
    let room = Int(request.maxUnacknowledged == 0 ? 100 : min(request.maxUnacknowledged, 10_000))
    let deadline = Int64(
      request.ackDeadlineSeconds == 0 ? 30 : min(request.ackDeadlineSeconds, 3600))
    // A subscription lasts until the subscriber goes, or this instance shuts down: then it
    // ends (OK), and the subscriber subscribes again — to another instance, or to this one
    // restarted. Unacknowledged deliveries come again after their deadline.
    while !Task.isCancelled, !Task.isShuttingDownGracefully {
      let deliveries = try await claim(
        topic: request.topic, group: request.consumerGroup, room: room,
        ackDeadline: deadline * 1_000_000_000)
      if !deliveries.isEmpty {
        try await response.write(contentsOf: deliveries)
        continue
      }
      // Nothing to hand out: until an event is published here, or the poll (other
      // instances' events, redeliveries).
      await published.wait(upTo: pollInterval)
    }
  }

  /// Hands the group its redeliveries whose deadline passed, then new events, as far as
  /// `room` allows; returns them in order.
  func claim(
    topic: String, group: String, room: Int, ackDeadline: Int64
  ) async throws
    -> [Shop_V1_Delivery]
  {
    try await log.claim(topic: topic, group: group, room: room, ackDeadline: ackDeadline)
  }

  // MARK: Ack

  public func ack(
    request: Shop_V1_AckRequest, context: ServerContext
  ) async throws
    -> Shop_V1_AckResponse
  {
    try Self.validateTopic(request.topic, "topic")
    try Validate.required(request.consumerGroup, "consumer_group")
    guard request.eventIds.count <= 10_000 else {
      throw Validate.invalid("event_ids", "has over 10000 ids")
    }
    let acknowledged = try await log.acknowledge(
      topic: request.topic, group: request.consumerGroup, ids: request.eventIds)
    var response = Shop_V1_AckResponse()
    response.acknowledged = UInt32(acknowledged)
    return response
  }

  /// Lowercase words of letters and digits joined by dots: `user.created`.
  static func validateTopic(_ topic: String, _ field: String) throws {
    try Validate.required(topic, field, maxLength: 100)
    let words = topic.split(separator: ".", omittingEmptySubsequences: false)
    guard
      words.allSatisfy({ word in
        !word.isEmpty
          && word.utf8.allSatisfy {
            (0x61...0x7a).contains($0) || (0x30...0x39).contains($0) || $0 == 0x5f
          }
      })
    else {
      throw Validate.invalid(
        field, "'\(topic)' is not lowercase words joined by dots (user.created)")
    }
  }
}

/// Wakes waiting subscriptions when something is published.
final class Notifier: Sendable {
  private let waiting = Mutex<[UUID: CheckedContinuation<Void, Never>]>([:])

  /// Returns on the next notification, after `limit`, or when the task is cancelled.
  func wait(upTo limit: Duration) async {
    let id = UUID()
    let timer = Task { [weak self] in
      try? await Task.sleep(for: limit)
      self?.resume(id)
    }
    defer { timer.cancel() }
    await withTaskCancellationHandler {
      await withCheckedContinuation { continuation in
        waiting.withLock { $0[id] = continuation }
        if Task.isCancelled { resume(id) }
      }
    } onCancel: {
      resume(id)
    }
  }

  private func resume(_ id: UUID) {
    waiting.withLock { $0.removeValue(forKey: id) }?.resume()
  }

  func notify() {
    let all = waiting.withLock { waiting in
      defer { waiting = [:] }
      return Array(waiting.values)
    }
    for continuation in all { continuation.resume() }
  }
}
