import Foundation
import GRDB
import Logging
import PostgresNIO
import ServiceLifecycle
import ShopProtos
import SwiftProtobuf

/// A transactional outbox: a service writes the events its change causes into its own
/// database, in the same transaction as the change (`append`), and a relay publishes them to
/// the event bus afterwards and marks them published. A crash between the commit and the
/// publication loses nothing — the relay finds the row after the restart — and one between
/// the publication and the mark only publishes again, which the bus ignores (it is idempotent
/// by event id).
public enum Outbox {
  /// The outbox table, as a migration of the service's database.
  public static func register(in migrator: inout DatabaseMigrator) {
    migrator.registerMigration("outbox") { db in
      try db.execute(
        sql: """
          CREATE TABLE outbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            event BLOB NOT NULL,
            create_time_ns INTEGER NOT NULL,
            publish_time_ns INTEGER
          );
          CREATE INDEX outbox_unpublished ON outbox (seq) WHERE publish_time_ns IS NULL;
          """)
    }
  }

  /// The outbox table on PostgreSQL, as a migration of the service's database.
  public static let postgresMigration = PostgresShopDatabase.Migration(
    "outbox",
    [
      """
      CREATE TABLE outbox (
        seq BIGSERIAL PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        event BYTEA NOT NULL,
        create_time_ns BIGINT NOT NULL,
        publish_time_ns BIGINT
      )
      """,
      "CREATE INDEX outbox_unpublished ON outbox (seq) WHERE publish_time_ns IS NULL",
    ])

  /// Writes `event` to the outbox, inside the caller's transaction.
  public static func append(_ event: Shop_V1_Event, in db: Database) throws {
    try db.cachedStatement(sql: "INSERT INTO outbox (id, event, create_time_ns) VALUES (?, ?, ?)")
      .execute(
        arguments: [event.id, try event.serializedData(), nowNanos()])
  }

  /// Writes `event` to the outbox, inside the caller's transaction on `connection`.
  public static func append(
    _ event: Shop_V1_Event, on connection: PostgresConnection, logger: Logger
  ) async throws {
    // A ByteBuffer goes as bytea (an array of bytes would go as "char"[]).
    let bytes = ByteBuffer(bytes: try event.serializedBytes() as [UInt8])
    try await connection.query(
      """
      INSERT INTO outbox (id, event, create_time_ns) VALUES (\(event.id), \(bytes), \(nowNanos()))
      """, logger: logger)
  }
}

/// Where a service's outbox is read and marked by its relay.
public protocol OutboxStore: Sendable {
  /// Events not yet published, oldest first.
  func unpublished(limit: Int) async throws -> [Shop_V1_Event]
  /// Marks events published.
  func markPublished(_ ids: [String]) async throws
  /// Every event written, published or not, oldest first.
  func all() async throws -> [Shop_V1_Event]
}

/// The outbox in a SQLite database.
public struct SQLiteOutbox: OutboxStore {
  let database: DatabasePool

  public init(_ database: DatabasePool) { self.database = database }

  public func unpublished(limit: Int) async throws -> [Shop_V1_Event] {
    try await database.read { db in
      try Data.fetchAll(
        db,
        sql: "SELECT event FROM outbox WHERE publish_time_ns IS NULL ORDER BY seq LIMIT ?",
        arguments: [limit]
      ).map { try Shop_V1_Event(serializedBytes: $0) }
    }
  }

  public func markPublished(_ ids: [String]) async throws {
    try await database.write { db in
      for id in ids {
        try db.cachedStatement(sql: "UPDATE outbox SET publish_time_ns = ? WHERE id = ?").execute(
          arguments: [nowNanos(), id])
      }
    }
  }

  public func all() async throws -> [Shop_V1_Event] {
    try await database.read { db in
      try Data.fetchAll(db, sql: "SELECT event FROM outbox ORDER BY seq")
        .map { try Shop_V1_Event(serializedBytes: $0) }
    }
  }
}

/// The outbox in a PostgreSQL database.
public struct PostgresOutbox: OutboxStore {
  let database: PostgresShopDatabase

  public init(_ database: PostgresShopDatabase) { self.database = database }

  public func unpublished(limit: Int) async throws -> [Shop_V1_Event] {
    try await events(
      "SELECT event FROM outbox WHERE publish_time_ns IS NULL ORDER BY seq LIMIT \(limit)")
  }

  public func markPublished(_ ids: [String]) async throws {
    let logger = database.logger
    try await database.connection { connection in
      try await connection.query(
        "UPDATE outbox SET publish_time_ns = \(nowNanos()) WHERE id = ANY(\(ids))", logger: logger)
      return ()
    }
  }

  public func all() async throws -> [Shop_V1_Event] {
    try await events("SELECT event FROM outbox ORDER BY seq")
  }

  private func events(_ query: PostgresQuery) async throws -> [Shop_V1_Event] {
    let logger = database.logger
    return try await database.connection { connection in
      var events: [Shop_V1_Event] = []
      for try await bytes in try await connection.query(query, logger: logger).decode(
        ByteBuffer.self)
      {
        events.append(try Shop_V1_Event(serializedBytes: Array(buffer: bytes)))
      }
      return events
    }
  }
}

/// Publishes a service's outbox to the event bus, in order, as long as the service runs:
/// every 200 ms; with backoff up to 5 s while the bus cannot be reached.
public struct OutboxRelay: Service {
  public typealias Publish = @Sendable (Shop_V1_Event) async throws -> Void

  private let outbox: any OutboxStore
  private let publish: Publish
  private let logger: Logger

  public init(outbox: any OutboxStore, logger: Logger, publish: @escaping Publish) {
    self.outbox = outbox
    self.publish = publish
    self.logger = logger
  }

  public func run() async throws {
    var pause = Duration.milliseconds(200)
    while !Task.isShuttingDownGracefully, !Task.isCancelled {
      do {
        try await relayOnce()
        pause = .milliseconds(200)
      } catch {
        logger.warning(
          "cannot publish the outbox; retrying",
          metadata: ["error": "\(error)", "retry_in": "\(pause)"])
        pause = min(pause * 2, .seconds(5))
      }
      try? await cancelWhenGracefulShutdown { [pause] in try await Task.sleep(for: pause) }
    }
  }

  /// Publishes what is waiting; returns how many events went.
  @discardableResult
  public func relayOnce() async throws -> Int {
    var sent = 0
    while true {
      let events = try await outbox.unpublished(limit: 100)
      if events.isEmpty { return sent }
      for event in events {
        try await publish(event)
        try await outbox.markPublished([event.id])
        sent += 1
      }
    }
  }
}
