import Foundation
import GRDB
import GRPCCore
import ServiceLifecycle
import ShopProtos
import ShopSupport
import SwiftProtobuf
import Synchronization

/// `shop.v1.EventService`: the shop's event bus over its own SQLite database.
///
/// Each topic is a log (`events`, by sequence). A consumer group has a cursor (`cursors`: the
/// next sequence it has not been handed) and the events it was handed and has not yet
/// acknowledged (`pending`, with a deadline). A delivery is claimed in one write transaction —
/// redeliveries whose deadline passed first, then new events past the cursor — so consumers of
/// a group, on one instance of the bus or several sharing the file, never both hold an event;
/// one that crashes lets its events' deadlines pass and they go to another. At least once: a
/// consumer must acknowledge, and must handle an event idempotently (by its id).
public final class EventService: Shop_V1_EventService.SimpleServiceProtocol, Sendable {
  private let database: DatabasePool
  /// Wakes the subscriptions of this instance when an event is published here; events
  /// published by another instance are found by polling.
  private let published = Notifier()
  let pollInterval: Duration

  public init(databasePath path: String, pollInterval: Duration = .milliseconds(250)) throws {
    self.database = try openShopDatabase(path: path, migrator: Self.migrator)
    self.pollInterval = pollInterval
  }

  static var migrator: DatabaseMigrator {
    var migrator = DatabaseMigrator()
    migrator.registerMigration("v1: log, cursors, pending") { db in
      try db.execute(
        sql: """
          CREATE TABLE events (
            sequence INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL,
            topic TEXT NOT NULL,
            type TEXT NOT NULL,
            payload BLOB NOT NULL,
            headers BLOB NOT NULL,
            publish_time INTEGER NOT NULL,
            UNIQUE (topic, id)
          );
          CREATE INDEX events_by_topic ON events (topic, sequence);
          CREATE TABLE cursors (
            topic TEXT NOT NULL,
            consumer_group TEXT NOT NULL,
            next_sequence INTEGER NOT NULL,
            PRIMARY KEY (topic, consumer_group)
          );
          CREATE TABLE pending (
            topic TEXT NOT NULL,
            consumer_group TEXT NOT NULL,
            sequence INTEGER NOT NULL REFERENCES events (sequence),
            attempts INTEGER NOT NULL,
            deadline INTEGER NOT NULL,
            PRIMARY KEY (topic, consumer_group, sequence)
          );
          CREATE INDEX pending_by_deadline ON pending (topic, consumer_group, deadline);
          """)
    }
    return migrator
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
    let response = try await database.write { db -> Shop_V1_PublishResponse in
      var response = Shop_V1_PublishResponse()
      if let sequence = try Int64.fetchOne(
        db, sql: "SELECT sequence FROM events WHERE topic = ? AND id = ?",
        arguments: [event.topic, event.id])
      {
        response.sequence = sequence
        response.duplicate = true
        return response
      }
      try db.execute(
        sql: """
          INSERT INTO events (id, topic, type, payload, headers, publish_time)
          VALUES (?, ?, ?, ?, ?, ?)
          """,
        arguments: [event.id, event.topic, event.type, event.payload, headerBytes, nowNanos()])
      response.sequence = db.lastInsertedRowID
      return response
    }
    if !response.duplicate { published.notify() }
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
    try await database.write { db in
      let now = nowNanos()
      let outstanding =
        try Int.fetchOne(
          db,
          sql:
            "SELECT COUNT(*) FROM pending WHERE topic = ? AND consumer_group = ? AND deadline > ?",
          arguments: [topic, group, now]) ?? 0
      var free = room - outstanding
      guard free > 0 else { return [] }
      var claimed: [(sequence: Int64, attempt: Int)] = []
      let due = try Row.fetchAll(
        db,
        sql: """
          SELECT sequence, attempts FROM pending
          WHERE topic = ? AND consumer_group = ? AND deadline <= ?
          ORDER BY sequence LIMIT ?
          """,
        arguments: [topic, group, now, free])
      for row in due {
        let sequence: Int64 = row["sequence"]
        let attempts: Int = row["attempts"]
        try db.execute(
          sql: """
            UPDATE pending SET attempts = ?, deadline = ?
            WHERE topic = ? AND consumer_group = ? AND sequence = ?
            """,
          arguments: [attempts + 1, now + ackDeadline, topic, group, sequence])
        claimed.append((sequence, attempts + 1))
      }
      free -= due.count
      if free > 0 {
        let next =
          try Int64.fetchOne(
            db, sql: "SELECT next_sequence FROM cursors WHERE topic = ? AND consumer_group = ?",
            arguments: [topic, group]) ?? 0
        let fresh = try Int64.fetchAll(
          db,
          sql:
            """
            SELECT sequence FROM events WHERE topic = ? AND sequence >= ? ORDER BY sequence LIMIT \
            ?
            """,
          arguments: [topic, next, free])
        for sequence in fresh {
          try db.execute(
            sql: """
              INSERT INTO pending (topic, consumer_group, sequence, attempts, deadline)
              VALUES (?, ?, ?, 1, ?)
              """,
            arguments: [topic, group, sequence, now + ackDeadline])
          claimed.append((sequence, 1))
        }
        if let last = fresh.last {
          try db.execute(
            sql: """
              INSERT INTO cursors (topic, consumer_group, next_sequence) VALUES (?, ?, ?)
              ON CONFLICT (topic, consumer_group) DO UPDATE SET next_sequence = excluded.next_sequence
              """,
            arguments: [topic, group, last + 1])
        }
      }
      return try claimed.sorted { $0.sequence < $1.sequence }.map { claim in
        let row = try Row.fetchOne(
          db, sql: "SELECT * FROM events WHERE sequence = ?", arguments: [claim.sequence])!
        var delivery = Shop_V1_Delivery()
        delivery.event = try Self.event(from: row)
        delivery.attempt = UInt32(claim.attempt)
        return delivery
      }
    }
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
    let acknowledged = try await database.write { db -> Int in
      var count = 0
      for id in request.eventIds {
        try db.execute(
          sql: """
            DELETE FROM pending WHERE topic = ? AND consumer_group = ? AND sequence =
              (SELECT sequence FROM events WHERE topic = ? AND id = ?)
            """,
          arguments: [request.topic, request.consumerGroup, request.topic, id])
        count += db.changesCount
      }
      return count
    }
    var response = Shop_V1_AckResponse()
    response.acknowledged = UInt32(acknowledged)
    return response
  }

  // MARK: Rows

  static func event(from row: Row) throws -> Shop_V1_Event {
    var event = Shop_V1_Event()
    event.sequence = row["sequence"]
    event.id = row["id"]
    event.topic = row["topic"]
    event.type = row["type"]
    event.payload = row["payload"]
    let headers = try Google_Protobuf_Struct(serializedBytes: row["headers"] as Data)
    for (key, value) in headers.fields { event.headers[key] = value.stringValue }
    let nanos: Int64 = row["publish_time"]
    event.publishTime = Google_Protobuf_Timestamp(
      seconds: nanos / 1_000_000_000, nanos: Int32(nanos % 1_000_000_000))
    return event
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
