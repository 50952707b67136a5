import Foundation
import GRDB
import ShopSupport
import Testing

/// The transaction the order path writes in (BEGIN and COMMIT kept prepared): what its body
/// writes commits together, or, when the body throws, not at all — and the connection goes on
/// working.
@Suite struct ShopDatabaseTests {
  struct Refused: Error {}

  @Test func aTransactionCommitsWholeOrNotAtAll() async throws {
    let path = FileManager.default.temporaryDirectory
      .appendingPathComponent("shop-db-\(UUID().uuidString.prefix(8))/test.sqlite").path
    var migrator = DatabaseMigrator()
    migrator.registerMigration("v1") { db in
      try db.execute(sql: "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
    }
    let pool = try openShopDatabase(path: path, migrator: migrator)
    func names() async throws -> [String] {
      try await pool.read { db in try String.fetchAll(db, sql: "SELECT name FROM items ORDER BY id")
      }
    }

    try await pool.transaction { db in
      try db.execute(sql: "INSERT INTO items (name) VALUES ('first'), ('second')")
    }
    #expect(try await names() == ["first", "second"])

    await #expect(throws: Refused.self) {
      try await pool.transaction { db in
        try db.execute(sql: "INSERT INTO items (name) VALUES ('lost')")
        throw Refused()
      }
    }
    // A statement that fails inside: rolled back as well.
    await #expect(throws: DatabaseError.self) {
      try await pool.transaction { db in
        try db.execute(sql: "INSERT INTO items (name) VALUES ('lost too')")
        try db.execute(sql: "INSERT INTO items (id, name) VALUES (1, 'clash')")
      }
    }
    #expect(try await names() == ["first", "second"])

    let count = try await pool.transaction { db -> Int in
      try db.execute(sql: "INSERT INTO items (name) VALUES ('third')")
      return try Int.fetchOne(db, sql: "SELECT count(*) FROM items") ?? 0
    }
    #expect(count == 3)
    #expect(try await names() == ["first", "second", "third"])
  }
}
