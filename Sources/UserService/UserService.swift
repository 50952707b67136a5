import GRPCCore
import Logging
import ShopProtos
import ShopSupport
import SwiftProtobuf

/// `shop.v1.UserService` over its own database (SQLite or PostgreSQL). Creating a user also
/// writes its `user.created` event to the database's outbox, in the same transaction.
public struct UserService: Shop_V1_UserService.SimpleServiceProtocol {
  private let repository: any UserRepository

  /// The trace context to put on the events a call publishes (`traceparent`, `tracestate`).
  private let eventHeaders: @Sendable () -> [String: String]

  /// Serves the users in `repository`. `eventHeaders` gives the headers an event published by
  /// the current call carries: its trace context.
  public init(
    repository: any UserRepository,
    eventHeaders: @escaping @Sendable () -> [String: String] = { [:] }
  ) {
    self.repository = repository
    self.eventHeaders = eventHeaders
  }

  /// Over the SQLite file at `path` (created and migrated if needed).
  public init(
    databasePath path: String, eventHeaders: @escaping @Sendable () -> [String: String] = { [:] }
  ) throws {
    self.init(repository: try SQLiteUserRepository(path: path), eventHeaders: eventHeaders)
  }

  /// Over the database `location` names.
  public static func open(
    _ location: ShopDatabaseLocation, logger: Logger,
    eventHeaders: @escaping @Sendable () -> [String: String] = { [:] }
  ) async throws -> UserService {
    switch location {
    case .sqlite(let path):
      return try UserService(databasePath: path, eventHeaders: eventHeaders)
    case .postgres(let postgres):
      return UserService(
        repository: try await PostgresUserRepository(postgres, logger: logger),
        eventHeaders: eventHeaders)
    }
  }

  /// The outbox its relay publishes (`user.created`).
  public var outbox: any OutboxStore { repository.outbox }

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

    let user = Shop_V1_User.with {
      $0.id = ResourceID.make(prefix: "usr")
      $0.email = email
      $0.name = name
      $0.createTime = Google_Protobuf_Timestamp(nanosSinceEpoch: nowNanos())
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
      try await repository.insert(user, emailKey: email.lowercased(), event: event)
    } catch is EmailTaken {
      throw RPCError(code: .alreadyExists, message: "a user with email \(email) already exists")
    }
    return user
  }

  public func getUser(
    request: Shop_V1_GetUserRequest, context: ServerContext
  ) async throws -> Shop_V1_User {
    try Validate.required(request.id, "id")
    let user = try await repository.user(id: request.id)
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
    let rows = try await repository.users(after: after, limit: pageSize + 1)
    return .with {
      $0.users = rows.prefix(pageSize).map(\.user)
      if rows.count > pageSize, let last = rows.prefix(pageSize).last {
        $0.nextPageToken = PageToken(afterSequence: last.sequence, query: "users").encoded
      }
    }
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
