import Foundation
import GRDB
import Logging
import PostgresNIO
import ShopProtos
import ShopSupport
import SwiftProtobuf

/// Where the bus keeps its log, its groups' cursors and their pending deliveries: SQLite or
/// PostgreSQL, one behaviour.
public protocol EventLog: Sendable {
  /// Appends `event` (its headers already encoded) unless its topic holds its id already;
  /// returns its sequence, and whether it was there before.
  func publish(
    _ event: Shop_V1_Event, headers: Data
  ) async throws
    -> (sequence: Int64, duplicate: Bool)
  /// Hands `group` its redeliveries whose deadline passed, then new events, as far as `room`
  /// allows, in order. Consumers of a group, on any instance, never both hold an event.
  func claim(
    topic: String, group: String, room: Int, ackDeadline: Int64
  ) async throws
    -> [Shop_V1_Delivery]
  /// Forgets the group's pending deliveries of `ids`; returns how many there were.
  func acknowledge(topic: String, group: String, ids: [String]) async throws -> Int
  /// Deletes at most `limit` of the events published before `cutoff` (nanoseconds since the
  /// epoch), oldest first, that no group holds unacknowledged; returns how many it deleted.
  func trim(publishedBefore cutoff: Int64, limit: Int) async throws -> Int
  /// Calls `wake` whenever any instance publishes, until the task is cancelled; returns at once
  /// when the store cannot tell (its instances then find others' events by polling).
  func watchPublications(_ wake: @escaping @Sendable () -> Void) async
}

extension Shop_V1_Event {
  /// An event from the log's columns.
  static func logged(
    sequence: Int64, id: String, topic: String, type: String, payload: Data, headers: Data,
    publishTime nanos: Int64
  ) throws -> Shop_V1_Event {
    var event = Shop_V1_Event()
    event.sequence = sequence
    event.id = id
    event.topic = topic
    event.type = type
    event.payload = payload
    let fields = try Google_Protobuf_Struct(serializedBytes: headers)
    for (key, value) in fields.fields { event.headers[key] = value.stringValue }
    event.publishTime = Google_Protobuf_Timestamp(nanosSinceEpoch: nanos)
    return event
  }
}

/// The log in a SQLite file. A claim is one write transaction (SQLite's one writer), so two
/// claims never interleave.
public struct SQLiteEventLog: EventLog {
  let database: DatabasePool

  /// Opens (creating and migrating if needed) the database at `path`.
  public init(path: String) throws {
    database = try openShopDatabase(path: path, migrator: Self.migrator)
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
    migrator.registerMigration("v2: pending by sequence, for retention") { db in
      try db.execute(sql: "CREATE INDEX pending_by_sequence ON pending (sequence)")
    }
    return migrator
  }

  public func trim(publishedBefore cutoff: Int64, limit: Int) async throws -> Int {
    try await database.write { db in
      try db.cachedStatement(
        sql: """
          DELETE FROM events WHERE sequence IN (
            SELECT sequence FROM events
            WHERE publish_time < ?
              AND NOT EXISTS (SELECT 1 FROM pending WHERE pending.sequence = events.sequence)
            ORDER BY sequence LIMIT ?)
          """
      ).execute(arguments: [cutoff, limit])
      return db.changesCount
    }
  }

  public func publish(
    _ event: Shop_V1_Event, headers: Data
  ) async throws
    -> (sequence: Int64, duplicate: Bool)
  {
    try await database.write { db in
      if let sequence = try Int64.fetchOne(
        db.cachedStatement(sql: "SELECT sequence FROM events WHERE topic = ? AND id = ?"),
        arguments: [event.topic, event.id])
      {
        return (sequence, true)
      }
      try db.cachedStatement(
        sql: """
          INSERT INTO events (id, topic, type, payload, headers, publish_time)
          VALUES (?, ?, ?, ?, ?, ?)
          """
      ).execute(
        arguments: [event.id, event.topic, event.type, event.payload, headers, nowNanos()])
      return (db.lastInsertedRowID, false)
    }
  }

  public func claim(
    topic: String, group: String, room: Int, ackDeadline: Int64
  ) async throws -> [Shop_V1_Delivery] {
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
        try db.cachedStatement(
          sql: """
            UPDATE pending SET attempts = ?, deadline = ?
            WHERE topic = ? AND consumer_group = ? AND sequence = ?
            """
        ).execute(
          arguments: [attempts + 1, now + ackDeadline, topic, group, sequence])
        claimed.append((sequence, attempts + 1))
      }
      free -= due.count
      if free > 0 {
        let next =
          try Int64.fetchOne(
            db.cachedStatement(
              sql: "SELECT next_sequence FROM cursors WHERE topic = ? AND consumer_group = ?"),
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
          try db.cachedStatement(
            sql: """
              INSERT INTO pending (topic, consumer_group, sequence, attempts, deadline)
              VALUES (?, ?, ?, 1, ?)
              """
          ).execute(
            arguments: [topic, group, sequence, now + ackDeadline])
          claimed.append((sequence, 1))
        }
        if let last = fresh.last {
          try db.cachedStatement(
            sql: """
              INSERT INTO cursors (topic, consumer_group, next_sequence) VALUES (?, ?, ?)
              ON CONFLICT (topic, consumer_group) DO UPDATE SET next_sequence = excluded.next_sequence
              """
          ).execute(
            arguments: [topic, group, last + 1])
        }
      }
      return try claimed.sorted { $0.sequence < $1.sequence }.map { claim in
        let row = try Row.fetchOne(
          db.cachedStatement(sql: "SELECT * FROM events WHERE sequence = ?"),
          arguments: [claim.sequence])!
        var delivery = Shop_V1_Delivery()
        delivery.event = try .logged(
          sequence: row["sequence"], id: row["id"], topic: row["topic"], type: row["type"],
          payload: row["payload"], headers: row["headers"], publishTime: row["publish_time"])
        delivery.attempt = UInt32(claim.attempt)
        return delivery
      }
    }
  }

  public func acknowledge(topic: String, group: String, ids: [String]) async throws -> Int {
    try await database.write { db -> Int in
      var count = 0
      for id in ids {
        try db.cachedStatement(
          sql: """
            DELETE FROM pending WHERE topic = ? AND consumer_group = ? AND sequence =
              (SELECT sequence FROM events WHERE topic = ? AND id = ?)
            """
        ).execute(
          arguments: [topic, group, topic, id])
        count += db.changesCount
      }
      return count
    }
  }

  public func watchPublications(_ wake: @escaping @Sendable () -> Void) async {}
}

/// The log in a PostgreSQL database, shared by instances on any host. Publications of a topic
/// take a transaction lock, so sequences commit in order; each notifies channel `shop_events`
/// when it commits, and every instance listens there. A claim takes its group's cursor row
/// `FOR UPDATE` (claims of one group queue there) and its due redeliveries
/// `FOR UPDATE SKIP LOCKED`.
public struct PostgresEventLog: EventLog {
  let database: PostgresShopDatabase
  static let channel = "shop_events"

  /// Opens a pool to the database at `location` and applies the migrations not yet applied.
  public init(_ location: PostgresLocation, logger: Logger) async throws {
    database = try await PostgresShopDatabase(
      name: "events", location: location, migrations: Self.migrations, logger: logger)
  }

  static let migrations = [
    PostgresShopDatabase.Migration(
      "v1: log, cursors, pending",
      [
        """
        CREATE TABLE events (
          sequence BIGSERIAL PRIMARY KEY,
          id TEXT NOT NULL,
          topic TEXT NOT NULL,
          type TEXT NOT NULL,
          payload BYTEA NOT NULL,
          headers BYTEA NOT NULL,
          publish_time BIGINT NOT NULL,
          UNIQUE (topic, id)
        )
        """,
        "CREATE INDEX events_by_topic ON events (topic, sequence)",
        """
        CREATE TABLE cursors (
          topic TEXT NOT NULL,
          consumer_group TEXT NOT NULL,
          next_sequence BIGINT NOT NULL,
          PRIMARY KEY (topic, consumer_group)
        )
        """,
        """
        CREATE TABLE pending (
          topic TEXT NOT NULL,
          consumer_group TEXT NOT NULL,
          sequence BIGINT NOT NULL REFERENCES events (sequence),
          attempts INTEGER NOT NULL,
          deadline BIGINT NOT NULL,
          PRIMARY KEY (topic, consumer_group, sequence)
        )
        """,
        "CREATE INDEX pending_by_deadline ON pending (topic, consumer_group, deadline)",
      ]),
    PostgresShopDatabase.Migration(
      "v2: pending by sequence, for retention",
      ["CREATE INDEX pending_by_sequence ON pending (sequence)"]),
  ]

  public func trim(publishedBefore cutoff: Int64, limit: Int) async throws -> Int {
    let logger = database.logger
    return try await database.connection { connection in
      // Rows another instance is trimming now are skipped, not waited for.
      var count = 0
      for try await _ in try await connection.query(
        """
        DELETE FROM events WHERE sequence IN (
          SELECT sequence FROM events
          WHERE publish_time < \(cutoff)
            AND NOT EXISTS (SELECT 1 FROM pending WHERE pending.sequence = events.sequence)
          ORDER BY sequence LIMIT \(limit) FOR UPDATE SKIP LOCKED)
        RETURNING sequence
        """, logger: logger
      ).decode(Int64.self) {
        count += 1
      }
      return count
    }
  }

  public func publish(
    _ event: Shop_V1_Event, headers: Data
  ) async throws
    -> (sequence: Int64, duplicate: Bool)
  {
    let logger = database.logger
    let payload = ByteBuffer(bytes: event.payload)
    let headerBytes = ByteBuffer(bytes: headers)
    return try await database.transaction { connection in
      // One publication of a topic at a time, each committing before the next takes its
      // sequence: a claim never passes over a sequence that commits later.
      try await connection.query(
        "SELECT pg_advisory_xact_lock(hashtext(\("shop_events/" + event.topic)))",
        logger: logger)
      let inserted = try await connection.query(
        """
        INSERT INTO events (id, topic, type, payload, headers, publish_time)
        VALUES (\(event.id), \(event.topic), \(event.type), \(payload), \(headerBytes), \
        \(nowNanos()))
        ON CONFLICT (topic, id) DO NOTHING RETURNING sequence
        """, logger: logger)
      for try await sequence in inserted.decode(Int64.self) {
        // Delivered to every listener when this commits.
        try await connection.query(
          "SELECT pg_notify(\(Self.channel), \(event.topic))", logger: logger)
        return (sequence, false)
      }
      let existing = try await connection.query(
        "SELECT sequence FROM events WHERE topic = \(event.topic) AND id = \(event.id)",
        logger: logger)
      for try await sequence in existing.decode(Int64.self) { return (sequence, true) }
      throw ShopDatabaseError("event \(event.id) neither inserted nor found")
    }
  }

  public func claim(
    topic: String, group: String, room: Int, ackDeadline: Int64
  ) async throws -> [Shop_V1_Delivery] {
    let logger = database.logger
    return try await database.transaction { connection in
      let now = nowNanos()
      // The group's cursor, made if new, then held: claims of this group queue here.
      try await connection.query(
        """
        INSERT INTO cursors (topic, consumer_group, next_sequence) VALUES (\(topic), \(group), 0)
        ON CONFLICT (topic, consumer_group) DO NOTHING
        """, logger: logger)
      var next: Int64 = 0
      for try await value in try await connection.query(
        """
        SELECT next_sequence FROM cursors WHERE topic = \(topic) AND consumer_group = \(group) \
        FOR UPDATE
        """, logger: logger
      ).decode(Int64.self) {
        next = value
      }
      var outstanding = 0
      for try await count in try await connection.query(
        """
        SELECT COUNT(*) FROM pending WHERE topic = \(topic) AND consumer_group = \(group) \
        AND deadline > \(now)
        """, logger: logger
      ).decode(Int64.self) {
        outstanding = Int(count)
      }
      var free = room - outstanding
      guard free > 0 else { return [] }
      var claimed: [(sequence: Int64, attempt: Int)] = []
      for try await (sequence, attempts) in try await connection.query(
        """
        UPDATE pending SET attempts = attempts + 1, deadline = \(now + ackDeadline)
        WHERE (topic, consumer_group, sequence) IN (
          SELECT topic, consumer_group, sequence FROM pending
          WHERE topic = \(topic) AND consumer_group = \(group) AND deadline <= \(now)
          ORDER BY sequence LIMIT \(free) FOR UPDATE SKIP LOCKED)
        RETURNING sequence, attempts
        """, logger: logger
      ).decode((Int64, Int32).self) {
        claimed.append((sequence, Int(attempts)))
      }
      free -= claimed.count
      if free > 0 {
        var last: Int64?
        for try await sequence in try await connection.query(
          """
          INSERT INTO pending (topic, consumer_group, sequence, attempts, deadline)
          SELECT topic, \(group), sequence, 1, \(now + ackDeadline) FROM events
          WHERE topic = \(topic) AND sequence >= \(next) ORDER BY sequence LIMIT \(free)
          RETURNING sequence
          """, logger: logger
        ).decode(Int64.self) {
          claimed.append((sequence, 1))
          last = max(last ?? sequence, sequence)
        }
        if let last {
          try await connection.query(
            """
            UPDATE cursors SET next_sequence = \(last + 1)
            WHERE topic = \(topic) AND consumer_group = \(group)
            """, logger: logger)
        }
      }
      guard !claimed.isEmpty else { return [] }
      let attempts = Dictionary(uniqueKeysWithValues: claimed.map { ($0.sequence, $0.attempt) })
      let sequences = claimed.map(\.sequence)
      var deliveries: [Shop_V1_Delivery] = []
      for try await (sequence, id, topic, type, payload, headers, published)
        in try await connection
        .query(
          """
          SELECT sequence, id, topic, type, payload, headers, publish_time FROM events
          WHERE sequence = ANY(\(sequences)) ORDER BY sequence
          """, logger: logger
        ).decode((Int64, String, String, String, ByteBuffer, ByteBuffer, Int64).self)
      {
        var delivery = Shop_V1_Delivery()
        delivery.event = try .logged(
          sequence: sequence, id: id, topic: topic, type: type,
          payload: Data(buffer: payload), headers: Data(buffer: headers), publishTime: published)
        delivery.attempt = UInt32(attempts[sequence] ?? 1)
        deliveries.append(delivery)
      }
      return deliveries
    }
  }

  public func acknowledge(topic: String, group: String, ids: [String]) async throws -> Int {
    let logger = database.logger
    return try await database.connection { connection in
      var count = 0
      for try await _ in try await connection.query(
        """
        DELETE FROM pending WHERE topic = \(topic) AND consumer_group = \(group) AND sequence IN
          (SELECT sequence FROM events WHERE topic = \(topic) AND id = ANY(\(ids)))
        RETURNING sequence
        """, logger: logger
      ).decode(Int64.self) {
        count += 1
      }
      return count
    }
  }

  /// LISTENs on its own connection (not one of the pool's), connecting again after a pause
  /// whenever the connection is lost.
  public func watchPublications(_ wake: @escaping @Sendable () -> Void) async {
    let location = database.location
    let logger = database.logger
    while !Task.isCancelled {
      do {
        let connection = try await PostgresConnection.connect(
          configuration: .init(
            host: location.host, port: location.port, username: location.user,
            password: try location.password(), database: location.database, tls: .disable),
          id: 0, logger: logger)
        do {
          try await connection.listen(on: Self.channel) { notifications in
            // Anything published while this was not listening is found now.
            wake()
            for try await _ in notifications { wake() }
          }
          try? await connection.close()
        } catch {
          try? await connection.close()
          throw error
        }
      } catch {
        logger.debug(
          "not listening for publications; again shortly", metadata: ["error": "\(error)"])
      }
      try? await Task.sleep(for: .seconds(1))
    }
  }
}
