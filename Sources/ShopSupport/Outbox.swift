import Foundation
import GRDB
import Logging
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

  /// Writes `event` to the outbox, inside the caller's transaction.
  public static func append(_ event: Shop_V1_Event, in db: Database) throws {
    try db.execute(
      sql: "INSERT INTO outbox (id, event, create_time_ns) VALUES (?, ?, ?)",
      arguments: [event.id, try event.serializedData(), nowNanos()])
  }

  /// Events not yet published, oldest first.
  public static func unpublished(
    _ database: DatabasePool, limit: Int = 100
  ) throws
    -> [Shop_V1_Event]
  {
    try database.read { db in
      try Data.fetchAll(
        db,
        sql: "SELECT event FROM outbox WHERE publish_time_ns IS NULL ORDER BY seq LIMIT ?",
        arguments: [limit]
      ).map { try Shop_V1_Event(serializedBytes: $0) }
    }
  }

  public static func markPublished(_ ids: [String], in database: DatabasePool) throws {
    try database.write { db in
      for id in ids {
        try db.execute(
          sql: "UPDATE outbox SET publish_time_ns = ? WHERE id = ?", arguments: [nowNanos(), id])
      }
    }
  }
}

/// Publishes a service's outbox to the event bus, in order, as long as the service runs:
/// every 200 ms; with backoff up to 5 s while the bus cannot be reached.
public struct OutboxRelay: Service {
  public typealias Publish = @Sendable (Shop_V1_Event) async throws -> Void

  private let database: DatabasePool
  private let publish: Publish
  private let logger: Logger

  public init(database: DatabasePool, logger: Logger, publish: @escaping Publish) {
    self.database = database
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
      let events = try Outbox.unpublished(database)
      if events.isEmpty { return sent }
      for event in events {
        try await publish(event)
        try Outbox.markPublished([event.id], in: database)
        sent += 1
      }
    }
  }
}
