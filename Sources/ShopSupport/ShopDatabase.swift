import Foundation
import GRDB

/// Opens a service's SQLite database: WAL, so readers never wait for the writer and several
/// instances of one service can share the file; a busy timeout, so those instances queue for
/// the write lock instead of failing; and the service's migrations applied.
public func openShopDatabase(path: String, migrator: DatabaseMigrator) throws -> DatabasePool {
  let directory = URL(fileURLWithPath: path).deletingLastPathComponent().path
  try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
  var configuration = Configuration()
  configuration.busyMode = .timeout(10)
  // Foreign keys are enforced; SQLite leaves them off unless asked.
  configuration.foreignKeysEnabled = true
  let pool = try DatabasePool(path: path, configuration: configuration)
  // Instances that share the file may start at once, and the one that loses the race to a
  // migration fails on the tables the other made. A migration commits with its record, so a
  // second try finds it applied.
  for attempt in 1... {
    do {
      try migrator.migrate(pool)
      break
    } catch  where attempt < 5 {
      Thread.sleep(forTimeInterval: 0.2)
    }
  }
  return pool
}

/// Now as nanoseconds since the Unix epoch, the unit timestamps are stored in.
public func nowNanos() -> Int64 {
  Int64(Date().timeIntervalSince1970 * 1_000_000) * 1000
}

extension DatabasePool {
  /// `write`, for the statements every order runs: its BEGIN and COMMIT are prepared once per
  /// connection and kept, as the statements inside are (GRDB's `write` prepares both again
  /// each time, which costs more than some of the work between them). An error rolls back.
  public func transaction<T: Sendable>(
    _ body: @escaping @Sendable (Database) throws -> T
  ) async throws -> T {
    try await writeWithoutTransaction { db in
      try db.cachedStatement(sql: "BEGIN IMMEDIATE TRANSACTION").execute()
      do {
        let result = try body(db)
        try db.cachedStatement(sql: "COMMIT TRANSACTION").execute()
        return result
      } catch {
        if db.isInsideTransaction { try? db.execute(sql: "ROLLBACK TRANSACTION") }
        throw error
      }
    }
  }
}
