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
