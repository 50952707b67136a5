import GRDB
import GRPCCore
import ShopProtos
import ShopSupport
import SwiftProtobuf

/// `shop.v1.UserService` over its own SQLite database. Creating a user also writes its
/// `user.created` event to the database's outbox, in the same transaction.
public struct UserService: Shop_V1_UserService.SimpleServiceProtocol {
  private let database: DatabasePool

  /// The trace context to put on the events a call publishes (`traceparent`, `tracestate`).
  private let eventHeaders: @Sendable () -> [String: String]

  /// Opens (creating and migrating if needed) the database at `path`. `eventHeaders` gives the
  /// headers an event published by the current call carries: its trace context.
  public init(
    databasePath path: String, eventHeaders: @escaping @Sendable () -> [String: String] = { [:] }
  ) throws {
    self.database = try openShopDatabase(path: path, migrator: Self.migrator)
    self.eventHeaders = eventHeaders
  }

  /// The database, for the outbox relay that publishes its `user.created` events.
  public var outboxDatabase: DatabasePool { database }

  public func createUser(
    request: Shop_V1_CreateUserRequest, context: ServerContext
  ) async throws -> Shop_V1_User {
    let email = request.email.trimmingWhitespace()
    try Validate.required(email, "email", maxLength: 254)
    guard isValidEmail(email) else {
      throw Validate.invalid("email", "\"\(request.email)\" is not a valid email address")
    }
    let name = request.name.trimmingWhitespace()
    try Validate.required(name, "name")

    let now = nowNanos()
    let user = Shop_V1_User.with {
      $0.id = ResourceID.make(prefix: "usr")
      $0.email = email
      $0.name = name
      $0.createTime = Google_Protobuf_Timestamp(nanosSinceEpoch: now)
    }
    // `user.created` is written with the user, in one transaction (the outbox).
    var created = Shop_V1_UserCreated()
    created.userID = user.id
    created.email = user.email
    created.name = user.name
    created.createTime = user.createTime
    var event = Shop_V1_Event()
    event.id = "user.created/\(user.id)"
    event.topic = "user.created"
    event.type = "shop.v1.UserCreated"
    event.payload = try created.serializedData()
    event.headers = eventHeaders()
    do {
      try await database.write { [event] db in
        try db.execute(
          sql: """
            INSERT INTO users (id, email, email_key, name, create_time_ns)
            VALUES (?, ?, ?, ?, ?)
            """,
          arguments: [user.id, user.email, email.lowercased(), user.name, now])
        try Outbox.append(event, in: db)
      }
    } catch let error as DatabaseError where error.extendedResultCode == .SQLITE_CONSTRAINT_UNIQUE {
      // The unique index decides, so two instances racing on one email cannot both win.
      throw RPCError(
        code: .alreadyExists, message: "a user with email \(email) already exists")
    }
    return user
  }

  public func getUser(
    request: Shop_V1_GetUserRequest, context: ServerContext
  ) async throws -> Shop_V1_User {
    try Validate.required(request.id, "id")
    let user = try await database.read { db in
      try Row.fetchOne(db, sql: "SELECT * FROM users WHERE id = ?", arguments: [request.id])
        .map(Self.user(from:))
    }
    guard let user else {
      throw RPCError(code: .notFound, message: "user \(request.id) not found")
    }
    return user
  }

  public func listUsers(
    request: Shop_V1_ListUsersRequest, context: ServerContext
  ) async throws -> Shop_V1_ListUsersResponse {
    let pageSize = try PageToken.pageSize(request.pageSize)
    let after =
      request.pageToken.isEmpty
      ? 0 : try PageToken(decoding: request.pageToken, query: "users").afterSequence
    // One row more than the page tells whether another page follows.
    return try await database.read { db in
      let rows = try Row.fetchAll(
        db, sql: "SELECT * FROM users WHERE seq > ? ORDER BY seq LIMIT ?",
        arguments: [after, pageSize + 1])
      return .with {
        $0.users = rows.prefix(pageSize).map(Self.user(from:))
        if rows.count > pageSize, let last = rows.prefix(pageSize).last {
          $0.nextPageToken = PageToken(afterSequence: last["seq"], query: "users").encoded
        }
      }
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

/// A practical check of an address's shape (one `@`, a dotted domain, no spaces), not RFC 5322.
func isValidEmail(_ email: String) -> Bool {
  let parts = email.split(separator: "@", omittingEmptySubsequences: false)
  guard parts.count == 2, let local = parts.first, let domain = parts.last,
    !local.isEmpty, local.count <= 64, !domain.isEmpty
  else { return false }
  guard !email.contains(where: { $0.isWhitespace || $0.isNewline }) else { return false }
  let labels = domain.split(separator: ".", omittingEmptySubsequences: false)
  return labels.count >= 2
    && labels.allSatisfy { label in
      !label.isEmpty && !label.hasPrefix("-") && !label.hasSuffix("-")
        && label.allSatisfy { $0.isLetter || $0.isNumber || $0 == "-" }
    }
}
