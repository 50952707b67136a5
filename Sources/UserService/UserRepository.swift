import Foundation
import GRDB
import Logging
import PostgresNIO
import ShopProtos
import ShopSupport
import SwiftProtobuf

/// Where the users service keeps its users (and its outbox): SQLite or PostgreSQL, one
/// behaviour.
public protocol UserRepository: Sendable {
  /// Stores `user` and its `user.created` event in one transaction. Throws `EmailTaken` when a
  /// user with the same `emailKey` exists: the unique index decides, so two instances racing on
  /// one email cannot both win.
  func insert(_ user: Shop_V1_User, emailKey: String, event: Shop_V1_Event) async throws
  /// The user with `id`, if any.
  func user(id: String) async throws -> Shop_V1_User?
  /// Up to `limit` users after `sequence`, in the order they were created.
  func users(
    after sequence: Int64, limit: Int
  ) async throws
    -> [(sequence: Int64, user: Shop_V1_User)]
  /// The outbox its relay publishes.
  var outbox: any OutboxStore { get }
}

/// A user with this email exists already.
public struct EmailTaken: Error {}

/// Users in a SQLite file.
public struct SQLiteUserRepository: UserRepository {
  let database: DatabasePool

  /// Opens (creating and migrating if needed) the database at `path`.
  public init(path: String) throws {
    database = try openShopDatabase(path: path, migrator: Self.migrator)
  }

  public var outbox: any OutboxStore { SQLiteOutbox(database) }

  public func insert(_ user: Shop_V1_User, emailKey: String, event: Shop_V1_Event) async throws {
    do {
      try await database.write { db in
        try db.cachedStatement(
          sql: """
            INSERT INTO users (id, email, email_key, name, create_time_ns)
            VALUES (?, ?, ?, ?, ?)
            """
        ).execute(
          arguments: [
            user.id, user.email, emailKey, user.name, user.createTime.nanosSinceEpoch,
          ])
        try Outbox.append(event, in: db)
      }
    } catch let error as DatabaseError where error.extendedResultCode == .SQLITE_CONSTRAINT_UNIQUE {
      throw EmailTaken()
    }
  }

  public func user(id: String) async throws -> Shop_V1_User? {
    try await database.read { db in
      try Row.fetchOne(db.cachedStatement(sql: "SELECT * FROM users WHERE id = ?"), arguments: [id])
        .map(Self.user(from:))
    }
  }

  public func users(
    after sequence: Int64, limit: Int
  ) async throws
    -> [(sequence: Int64, user: Shop_V1_User)]
  {
    try await database.read { db in
      try Row.fetchAll(
        db.cachedStatement(sql: "SELECT * FROM users WHERE seq > ? ORDER BY seq LIMIT ?"),
        arguments: [sequence, limit]
      ).map { (sequence: $0["seq"], user: Self.user(from: $0)) }
    }
  }

  private static func user(from row: Row) -> Shop_V1_User {
    .with {
      $0.id = row["id"]
      $0.email = row["email"]
      $0.name = row["name"]
      $0.createTime = Google_Protobuf_Timestamp(nanosSinceEpoch: row["create_time_ns"])
    }
  }

  static var migrator: DatabaseMigrator {
    var migrator = DatabaseMigrator()
    migrator.registerMigration("v1: users") { db in
      try db.execute(
        sql: """
          CREATE TABLE users (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            email TEXT NOT NULL,
            email_key TEXT NOT NULL UNIQUE,
            name TEXT NOT NULL,
            create_time_ns INTEGER NOT NULL
          )
          """)
    }
    Outbox.register(in: &migrator)
    return migrator
  }
}

/// Users in a PostgreSQL database.
public struct PostgresUserRepository: UserRepository {
  let database: PostgresShopDatabase

  /// Opens a pool to the database at `location` and applies the migrations not yet applied.
  public init(_ location: PostgresLocation, logger: Logger) async throws {
    database = try await PostgresShopDatabase(
      name: "users", location: location, migrations: Self.migrations, logger: logger)
  }

  public var outbox: any OutboxStore { PostgresOutbox(database) }

  static let migrations = [
    PostgresShopDatabase.Migration(
      "v1: users",
      [
        """
        CREATE TABLE users (
          seq BIGSERIAL PRIMARY KEY,
          id TEXT NOT NULL UNIQUE,
          email TEXT NOT NULL,
          email_key TEXT NOT NULL UNIQUE,
          name TEXT NOT NULL,
          create_time_ns BIGINT NOT NULL
        )
        """
      ]),
    Outbox.postgresMigration,
  ]

  public func insert(_ user: Shop_V1_User, emailKey: String, event: Shop_V1_Event) async throws {
    let logger = database.logger
    do {
      try await database.transaction { connection in
        try await connection.query(
          """
          INSERT INTO users (id, email, email_key, name, create_time_ns)
          VALUES (\(user.id), \(user.email), \(emailKey), \(user.name), \
          \(user.createTime.nanosSinceEpoch))
          """, logger: logger)
        try await Outbox.append(event, on: connection, logger: logger)
      }
    } catch let error as PSQLError where error.isUniqueViolation {
      throw EmailTaken()
    }
  }

  public func user(id: String) async throws -> Shop_V1_User? {
    try await rows("SELECT seq, id, email, name, create_time_ns FROM users WHERE id = \(id)")
      .first?.user
  }

  public func users(
    after sequence: Int64, limit: Int
  ) async throws
    -> [(sequence: Int64, user: Shop_V1_User)]
  {
    try await rows(
      """
      SELECT seq, id, email, name, create_time_ns FROM users WHERE seq > \(sequence) \
      ORDER BY seq LIMIT \(limit)
      """)
  }

  private func rows(
    _ query: PostgresQuery
  ) async throws
    -> [(sequence: Int64, user: Shop_V1_User)]
  {
    let logger = database.logger
    return try await database.connection { connection in
      var users: [(sequence: Int64, user: Shop_V1_User)] = []
      let rows = try await connection.query(query, logger: logger)
      for try await (sequence, id, email, name, created) in rows.decode(
        (Int64, String, String, String, Int64).self)
      {
        users.append(
          (
            sequence,
            .with {
              $0.id = id
              $0.email = email
              $0.name = name
              $0.createTime = Google_Protobuf_Timestamp(nanosSinceEpoch: created)
            }
          ))
      }
      return users
    }
  }
}
