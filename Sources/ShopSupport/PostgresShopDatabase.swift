import Foundation
import GRPCCore
import Logging
import PostgresNIO
import Synchronization
// The pool's own errors (its circuit breaker open while the server is away) are its module's.
import _ConnectionPoolModule

/// Where a shop service keeps its data, as its `--db` names it: a SQLite file (the embedded
/// default) or a PostgreSQL database.
public enum ShopDatabaseLocation: Sendable, Equatable {
  case sqlite(path: String)
  case postgres(PostgresLocation)

  /// `postgres://USER@HOST[:PORT]/DATABASE?password_file=PATH` (or `postgresql://`), or a
  /// SQLite file's path.
  public init(_ text: String) throws {
    if text.hasPrefix("postgres://") || text.hasPrefix("postgresql://") {
      self = .postgres(try PostgresLocation(text))
    } else {
      guard !text.isEmpty else {
        throw ShopDatabaseError("--db: a SQLite path or a postgres:// URL")
      }
      self = .sqlite(path: text)
    }
  }
}

/// A PostgreSQL database and how to log in to it. The password comes from a file that only
/// its owner may read: never from the URL, which shows on a command line (and so in `/proc`).
public struct PostgresLocation: Sendable, Equatable, CustomStringConvertible {
  public var host: String
  public var port: Int
  public var user: String
  public var database: String
  public var passwordFile: String?

  public init(host: String, port: Int, user: String, database: String, passwordFile: String?) {
    self.host = host
    self.port = port
    self.user = user
    self.database = database
    self.passwordFile = passwordFile
  }

  public init(_ text: String) throws {
    func invalid(_ why: String) -> ShopDatabaseError {
      ShopDatabaseError("--db \(text): \(why)")
    }
    guard let url = URLComponents(string: text), let host = url.host, !host.isEmpty else {
      throw invalid("not a URL of the form postgres://USER@HOST[:PORT]/DATABASE")
    }
    guard url.password == nil else {
      throw invalid(
        """
        a password does not belong in the URL (any user of the machine sees a command line): \
        put it in a file only its owner can read (chmod 600) and add ?password_file=PATH
        """)
    }
    guard let user = url.user, !user.isEmpty else { throw invalid("no user (USER@HOST)") }
    let database = String(url.path.drop(while: { $0 == "/" }))
    guard !database.isEmpty, !database.contains("/") else {
      throw invalid("no database (…/DATABASE)")
    }
    var passwordFile: String?
    for item in url.queryItems ?? [] {
      switch item.name {
      case "password_file": passwordFile = item.value
      default: throw invalid("unknown parameter \(item.name) (password_file is the one known)")
      }
    }
    self.init(
      host: host, port: url.port ?? 5432, user: user, database: database,
      passwordFile: passwordFile)
  }

  /// The password from `passwordFile`, refused if others may read the file.
  public func password() throws -> String? {
    guard let passwordFile else { return nil }
    let attributes: [FileAttributeKey: Any]
    do {
      attributes = try FileManager.default.attributesOfItem(atPath: passwordFile)
    } catch {
      throw ShopDatabaseError("password_file \(passwordFile): cannot be read")
    }
    let mode = (attributes[.posixPermissions] as? Int) ?? 0
    guard mode & 0o077 == 0 else {
      throw ShopDatabaseError(
        """
        password_file \(passwordFile): others may read it (mode \(String(mode, radix: 8))): \
        chmod 600 it
        """)
    }
    guard let text = try? String(contentsOfFile: passwordFile, encoding: .utf8) else {
      throw ShopDatabaseError("password_file \(passwordFile): cannot be read")
    }
    return text.trimmingCharacters(in: .newlines)
  }

  /// The URL without secrets, for logs and messages.
  public var description: String { "postgres://\(user)@\(host):\(port)/\(database)" }
}

/// A configuration mistake in a database location, in words for the operator.
public struct ShopDatabaseError: Error, CustomStringConvertible {
  public let description: String
  public init(_ description: String) { self.description = description }
}

/// A service's PostgreSQL database: a bounded pool of connections, the service's migrations,
/// and every operation bounded in time, so that while the server is away a call fails fast
/// with UNAVAILABLE (and the pool connects again by itself once it is back).
public final class PostgresShopDatabase: Sendable {
  /// Names the database in messages: "the users database is unavailable".
  public let name: String
  public let location: PostgresLocation
  let client: PostgresClient
  public let logger: Logger
  /// How long one operation may wait for a connection and run.
  public let timeout: Duration
  private let running: Task<Void, Never>

  /// One migration: its name (recorded once applied) and its statements, run in order in one
  /// transaction.
  public struct Migration: Sendable {
    public let name: String
    public let statements: [String]
    public init(_ name: String, _ statements: [String]) {
      self.name = name
      self.statements = statements
    }
  }

  /// Opens the pool (`maximumConnections` at most) and applies `migrations` not yet applied.
  /// What every session asks of the server, whatever its own settings: an instance lost with
  /// its host (no FIN, no reset reaches the server) must not hold its locks for the two hours
  /// of TCP's default keepalive. A session idle inside a transaction is ended after 10 s (every
  /// operation here is bounded to 5 s), and the server probes a silent client after 10 s, every
  /// 5 s, 3 times. (The host-loss drill found a charge's key lock held by a lost payments
  /// instance, its compensation waiting on it for good.)
  static let sessionSettings = [
    ("idle_in_transaction_session_timeout", "10000"), ("tcp_keepalives_idle", "10"),
    ("tcp_keepalives_interval", "5"), ("tcp_keepalives_count", "3"),
  ]

  public init(
    name: String, location: PostgresLocation, migrations: [Migration],
    maximumConnections: Int = 8, timeout: Duration = .seconds(5), logger: Logger
  ) async throws {
    self.name = name
    self.location = location
    self.logger = logger
    self.timeout = timeout
    var configuration = PostgresClient.Configuration(
      host: location.host, port: location.port, username: location.user,
      password: try location.password(), database: location.database, tls: .disable)
    configuration.options.maximumConnections = maximumConnections
    configuration.options.connectTimeout = timeout
    configuration.options.additionalStartupParameters = Self.sessionSettings
    let client = PostgresClient(configuration: configuration, backgroundLogger: logger)
    self.client = client
    running = Task { await client.run() }
    do {
      try await migrate(migrations)
    } catch {
      running.cancel()
      throw error
    }
  }

  deinit { running.cancel() }

  /// Closes the pool.
  public func close() { running.cancel() }

  /// Applies the migrations not yet applied, under a lock every instance takes, so instances
  /// starting at once apply each exactly once.
  func migrate(_ migrations: [Migration]) async throws {
    let logger = logger
    try await transaction { connection in
      // Any fixed number all instances agree on: the lock ends with the transaction.
      try await connection.query("SELECT pg_advisory_xact_lock(7470651656)", logger: logger)
      try await connection.query(
        """
        CREATE TABLE IF NOT EXISTS schema_migrations (
          name TEXT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())
        """, logger: logger)
      let rows = try await connection.query("SELECT name FROM schema_migrations", logger: logger)
      var applied = Set<String>()
      for try await name in rows.decode(String.self) { applied.insert(name) }
      for migration in migrations where !applied.contains(migration.name) {
        for statement in migration.statements {
          try await connection.query(PostgresQuery(unsafeSQL: statement), logger: logger)
        }
        try await connection.query(
          "INSERT INTO schema_migrations (name) VALUES (\(migration.name))", logger: logger)
      }
    }
  }

  /// Runs `body` in a transaction: committed if it returns, rolled back if it throws.
  public func transaction<T: Sendable>(
    _ body: @escaping @Sendable (PostgresConnection) async throws -> T
  ) async throws -> T {
    try await bounded {
      do {
        return try await self.client.withTransaction(logger: self.logger) { connection in
          try await body(connection)
        }
      } catch let error as PostgresTransactionError {
        // What went wrong, not the wrapper: the body's own errors reach the caller as thrown.
        throw error.beginError ?? error.closureError ?? error.commitError ?? error
      }
    }
  }

  /// Runs `body` on a connection of the pool, outside a transaction.
  public func connection<T: Sendable>(
    _ body: @escaping @Sendable (PostgresConnection) async throws -> T
  ) async throws -> T {
    try await bounded {
      try await self.client.withConnection { connection in try await body(connection) }
    }
  }

  /// Runs `operation` within `timeout`; a server that cannot be reached, or that went away,
  /// is UNAVAILABLE with a message that names this database.
  func bounded<T: Sendable>(
    _ operation: @escaping @Sendable () async throws -> T
  ) async throws
    -> T
  {
    do {
      return try await Self.race(operation, against: timeout) {
        RPCError(
          code: .unavailable,
          message: "the \(self.name) database is unavailable (no answer within \(self.timeout)); "
            + "try again")
      }
    } catch let error as PSQLError where Self.isUnavailable(error) {
      throw RPCError(
        code: .unavailable,
        message: "the \(name) database is unavailable (\(Self.reason(error))); try again")
    } catch let error as PSQLError where !error.isIntegrityViolation {
      // Not one the caller handles (a unique key taken): a fault, worded by the server.
      throw RPCError(
        code: .internalError,
        message: "the \(name) database failed: \(Self.reason(error))"
          + (error.serverInfo?[.sqlState].map { " (SQLSTATE \($0))" } ?? ""))
    } catch let error as ConnectionPoolError {
      throw RPCError(
        code: .unavailable, message: "the \(name) database is unavailable (\(error)); try again")
    }
  }

  /// `operation`'s result, or `late()` thrown once `limit` has passed, whichever comes first.
  /// The answer does not wait for the operation to end: one stuck on a connection that never
  /// answers (and deaf to cancellation) is cancelled and left behind, never waited for.
  public static func race<T: Sendable>(
    _ operation: @escaping @Sendable () async throws -> T, against limit: Duration,
    late: @escaping @Sendable () -> any Error
  ) async throws -> T {
    let race = Race<T>()
    defer { race.cancelTasks() }
    return try await withTaskCancellationHandler {
      try await withCheckedThrowingContinuation { continuation in
        race.start(
          continuation,
          work: Task {
            do {
              race.finish(.success(try await operation()))
            } catch {
              race.finish(.failure(error))
            }
          },
          timer: Task {
            try? await Task.sleep(for: limit)
            race.finish(.failure(late()))
          })
      }
    } onCancel: {
      race.finish(.failure(CancellationError()))
    }
  }

  /// The first of an operation and its timer to finish answers; the other is cancelled.
  final class Race<T: Sendable>: Sendable {
    private let state = Mutex<
      (
        answer: CheckedContinuation<T, any Error>?, early: Result<T, any Error>?,
        tasks: [Task<Void, Never>]
      )
    >((nil, nil, []))

    func start(
      _ answer: CheckedContinuation<T, any Error>, work: Task<Void, Never>, timer: Task<Void, Never>
    ) {
      let early = state.withLock { state -> Result<T, any Error>? in
        state.tasks = [work, timer]
        guard let early = state.early else {
          state.answer = answer
          return nil
        }
        return early
      }
      if let early { answer.resume(with: early) }
    }

    /// The first call answers; later ones do nothing.
    func finish(_ result: Result<T, any Error>) {
      let answer = state.withLock { state -> CheckedContinuation<T, any Error>? in
        defer { state.answer = nil }
        if state.answer == nil, state.early == nil { state.early = result }
        return state.answer
      }
      answer?.resume(with: result)
    }

    func cancelTasks() {
      for task in state.withLock({ $0.tasks }) { task.cancel() }
    }
  }

  static func isUnavailable(_ error: PSQLError) -> Bool {
    switch error.code {
    case .connectionError, .serverClosedConnection, .clientClosedConnection, .uncleanShutdown,
      .poolClosed, .queryCancelled:
      return true
    case .server:
      // Class 08 (connection exception) and 57 (operator intervention: shutting down, not
      // yet accepting connections).
      let state = error.serverInfo?[.sqlState] ?? ""
      return state.hasPrefix("08") || state.hasPrefix("57")
    default:
      return false
    }
  }

  static func reason(_ error: PSQLError) -> String {
    if let message = error.serverInfo?[.message] { return message }
    if let underlying = error.underlying { return "\(underlying)" }
    return "\(error.code)"
  }
}

extension PSQLError {
  /// The server refused a row for a unique index or key (SQLSTATE 23505).
  public var isUniqueViolation: Bool { serverInfo?[.sqlState] == "23505" }

  /// The server refused a row for a constraint (SQLSTATE class 23): the caller's to handle.
  public var isIntegrityViolation: Bool { serverInfo?[.sqlState]?.hasPrefix("23") ?? false }
}
