import Foundation
import Logging
import PostgresNIO

/// A PostgreSQL cluster of the mesh's own on this machine: Debian's server binaries, its data,
/// socket and log in one folder, serving on one port. PostgreSQL refuses to run as root, so
/// when this process is root the cluster's programs run as the `postgres` user, which then
/// owns the folder.
///
/// The server runs as a child of the process that starts it (`start`), not as `pg_ctl`'s
/// daemon: whoever starts it supervises and stops it, as with the mesh's other processes.
///
/// Passwords never appear on a command line (any user sees those in `/proc`): the admin's is
/// handed to `initdb` in a file, and each service's lives in a file of mode 0600 that its
/// `--db` URL names.
public struct LocalPostgres: Sendable {
  /// The folder: `data/` (the cluster), `socket/`, `postgres.log`, `admin.password` and
  /// `credentials/` (one password file per service database).
  public let directory: String
  /// The TCP port it serves on.
  public let port: Int
  /// The address it listens on (and services reach it at).
  public let host: String

  /// The superuser `initdb` makes.
  public static let admin = "trellis_admin"

  public init(directory: String, port: Int, host: String = "127.0.0.1") {
    self.directory = directory
    self.port = port
    self.host = host
  }

  var data: String { "\(directory)/data" }
  var adminPasswordFile: String { "\(directory)/admin.password" }
  public var log: String { "\(directory)/postgres.log" }

  /// Whether `initialize` made the cluster already.
  public var isInitialized: Bool {
    FileManager.default.fileExists(atPath: "\(data)/PG_VERSION")
  }

  /// Makes the cluster: the folder (owned by `postgres` when this process is root), `initdb`
  /// with password authentication everywhere and a random admin password, and the settings
  /// for its port, address and socket folder.
  public func initialize() throws {
    let files = FileManager.default
    try files.createDirectory(atPath: "\(directory)/socket", withIntermediateDirectories: true)
    try files.createDirectory(atPath: "\(directory)/credentials", withIntermediateDirectories: true)
    try files.setAttributes([.posixPermissions: 0o700], ofItemAtPath: directory)
    try files.setAttributes([.posixPermissions: 0o700], ofItemAtPath: "\(directory)/credentials")
    try Self.writeSecret(Self.randomPassword(), to: adminPasswordFile)
    if Self.isRoot {
      for path in [directory, "\(directory)/socket", adminPasswordFile] {
        try Self.run("/bin/chown", ["postgres:postgres", path])
      }
    }
    try runServerProgram(
      "initdb",
      [
        "--pgdata", data, "--username", Self.admin, "--pwfile", adminPasswordFile,
        "--auth-local", "scram-sha-256", "--auth-host", "scram-sha-256", "--encoding", "UTF8",
        "--no-instructions",
      ])
    let settings = """

      # Trellis: this cluster's own port, address and socket folder.
      port = \(port)
      listen_addresses = '\(host)'
      unix_socket_directories = '\(directory)/socket'
      """
    let configuration = FileHandle(forWritingAtPath: "\(data)/postgresql.conf")
    guard let configuration else {
      throw LocalPostgresError("cannot write \(data)/postgresql.conf")
    }
    configuration.seekToEndOfFile()
    configuration.write(Data(settings.utf8))
    try configuration.close()
  }

  /// The server's command line, for a supervisor that starts it itself (`meshctl up`): the
  /// program and its arguments, through `setpriv` as `postgres` when this process is root.
  public func serverCommand() throws -> (executable: String, arguments: [String]) {
    let postgres = try program("postgres")
    return Self.isRoot
      ? ("/usr/bin/setpriv", Self.asPostgres + [postgres, "-D", data])
      : (postgres, ["-D", data])
  }

  /// Waits until the server accepts connections; false if `stillRunning` says it ended, or
  /// after `timeout`.
  public func waitUntilReady(
    timeout: Duration = .seconds(60), stillRunning: () -> Bool = { true }
  ) throws -> Bool {
    let ready = try program("pg_isready")
    let deadline = ContinuousClock.now + timeout
    while (try? Self.run(ready, ["-q", "-h", host, "-p", "\(port)"])) == nil {
      guard stillRunning(), ContinuousClock.now < deadline else { return false }
      Thread.sleep(forTimeInterval: 0.05)
    }
    return true
  }

  /// Starts the server (`postgres` on the data folder, its output appended to `log`) and
  /// waits until it accepts connections.
  public func start(timeout: Duration = .seconds(60)) throws -> Server {
    let command = try serverCommand()
    let process = Process()
    process.executableURL = URL(fileURLWithPath: command.executable)
    process.arguments = command.arguments
    process.currentDirectoryURL = URL(fileURLWithPath: "/")
    if !FileManager.default.fileExists(atPath: log) {
      FileManager.default.createFile(atPath: log, contents: nil)
      if Self.isRoot { try Self.run("/bin/chown", ["postgres:postgres", log]) }
    }
    guard let output = FileHandle(forWritingAtPath: log) else {
      throw LocalPostgresError("cannot write \(log)")
    }
    output.seekToEndOfFile()
    process.standardOutput = output
    process.standardError = output
    process.standardInput = FileHandle.nullDevice
    try process.run()
    try? output.close()
    let server = Server(process: process)
    guard try waitUntilReady(timeout: timeout, stillRunning: { process.isRunning }) else {
      server.stop(.immediate)
      let tail = ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "")
        .split(separator: "\n").suffix(5).joined(separator: "\n")
      throw LocalPostgresError("PostgreSQL did not start (see \(log)):\n\(tail)")
    }
    return server
  }

  /// A running server, stopped by a signal as `pg_ctl` would send it.
  public final class Server: @unchecked Sendable {
    let process: Process

    init(process: Process) { self.process = process }

    public var processIdentifier: Int32 { process.processIdentifier }
    public var isRunning: Bool { process.isRunning }

    /// How to stop: `smart` waits for sessions to end, `fast` ends them, `immediate` is a
    /// crash (the next start recovers).
    public enum Mode: Sendable {
      case smart, fast, immediate
      var signal: Int32 {
        switch self {
        case .smart: SIGTERM
        case .fast: SIGINT
        case .immediate: SIGQUIT
        }
      }
    }

    /// Stops the server and waits for it to exit.
    public func stop(_ mode: Mode = .fast) {
      guard process.isRunning else { return }
      kill(process.processIdentifier, mode.signal)
      process.waitUntilExit()
    }
  }

  /// The admin's login to this cluster.
  public var admin: PostgresAdmin {
    PostgresAdmin(
      host: host, port: port, user: Self.admin, passwordFile: adminPasswordFile,
      credentials: "\(directory)/credentials")
  }

  /// A service's own database in this cluster (see `PostgresAdmin.createServiceDatabase`).
  public func createServiceDatabase(_ name: String, logger: Logger) async throws -> String {
    try await admin.createServiceDatabase(name, logger: logger)
  }

  // MARK: Programs

  /// The folder of the server's programs: Debian puts them under
  /// `/usr/lib/postgresql/VERSION/bin`, not on PATH; the newest version there.
  public static func binaries() throws -> String {
    let root = "/usr/lib/postgresql"
    let versions = ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? [])
      .compactMap(Int.init).sorted()
    for version in versions.reversed()
    where FileManager.default.isExecutableFile(atPath: "\(root)/\(version)/bin/initdb") {
      return "\(root)/\(version)/bin"
    }
    throw LocalPostgresError(
      "PostgreSQL's server is not installed (no \(root)/*/bin/initdb): apt-get install postgresql")
  }

  func program(_ name: String) throws -> String { "\(try Self.binaries())/\(name)" }

  /// `setpriv`'s arguments to become `postgres`; it then executes the program itself (no
  /// process in between that a signal would have to pass through).
  static let asPostgres = [
    "--reuid=postgres", "--regid=postgres", "--init-groups", "--reset-env", "--",
  ]

  /// Runs one of the server's programs, as `postgres` when this process is root; returns its
  /// output, or throws with it.
  @discardableResult
  func runServerProgram(_ name: String, _ arguments: [String]) throws -> String {
    if Self.isRoot {
      return try Self.run("/usr/bin/setpriv", Self.asPostgres + [try program(name)] + arguments)
    }
    return try Self.run(try program(name), arguments)
  }

  static var isRoot: Bool { getuid() == 0 }

  @discardableResult
  static func run(_ path: String, _ arguments: [String]) throws -> String {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: path)
    process.arguments = arguments
    // Not this process's folder: as `postgres`, it may be one that user cannot enter.
    process.currentDirectoryURL = URL(fileURLWithPath: "/")
    // A file, not a pipe: nothing waits on a pipe another process may hold open.
    let outputPath = FileManager.default.temporaryDirectory
      .appendingPathComponent("local-postgres-\(UUID().uuidString)").path
    guard FileManager.default.createFile(atPath: outputPath, contents: nil),
      let output = FileHandle(forWritingAtPath: outputPath)
    else { throw LocalPostgresError("cannot create \(outputPath)") }
    defer { try? FileManager.default.removeItem(atPath: outputPath) }
    process.standardOutput = output
    process.standardError = output
    process.standardInput = FileHandle.nullDevice
    try process.run()
    process.waitUntilExit()
    try? output.close()
    let text = (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? ""
    guard process.terminationStatus == 0 else {
      // The program's own name, not setpriv's.
      let program = path.hasSuffix("/setpriv") ? arguments[Self.asPostgres.count] : path
      let name = URL(fileURLWithPath: program).lastPathComponent
      throw LocalPostgresError(
        "\(name) failed (exit \(process.terminationStatus)): "
          + text.trimmingCharacters(in: .whitespacesAndNewlines))
    }
    return text
  }

  /// 32 random hex digits.
  static func randomPassword() -> String {
    var generator = SystemRandomNumberGenerator()
    return (0..<4).map { _ in
      String(format: "%08x", UInt32.random(in: .min ... .max, using: &generator))
    }
    .joined()
  }

  /// Writes `secret` to a new file of mode 0600 (made with that mode, never readable by others).
  static func writeSecret(_ secret: String, to path: String) throws {
    unlink(path)
    let descriptor = open(path, O_WRONLY | O_CREAT | O_EXCL, 0o600)
    guard descriptor >= 0 else {
      throw LocalPostgresError("cannot create \(path): \(String(cString: strerror(errno)))")
    }
    let handle = FileHandle(fileDescriptor: descriptor, closeOnDealloc: true)
    try handle.write(contentsOf: Data(secret.utf8))
    try handle.close()
  }
}

/// What went wrong making or running the local cluster, in words for the operator.
public struct LocalPostgresError: Error, CustomStringConvertible {
  public let description: String
  public init(_ description: String) { self.description = description }
}

/// A login that may create roles and databases on a PostgreSQL server (this machine's own
/// cluster's admin, or an existing server's), and the folder where the services' password
/// files are kept.
public struct PostgresAdmin: Sendable {
  public var host: String
  public var port: Int
  public var user: String
  public var passwordFile: String
  /// The folder of the services' password files (mode 0700, each file 0600).
  public var credentials: String

  public init(host: String, port: Int, user: String, passwordFile: String, credentials: String) {
    self.host = host
    self.port = port
    self.user = user
    self.passwordFile = passwordFile
    self.credentials = credentials
  }

  /// A service's own database: a role of the same name that logs in with a password (kept in
  /// a 0600 file, made once), a database it owns, which no other role may connect to. Returns
  /// the URL a service's `--db` takes.
  public func createServiceDatabase(_ name: String, logger: Logger) async throws -> String {
    guard name.first.map({ $0.isLowercase }) == true,
      name.allSatisfy({ $0.isLowercase || $0.isNumber || $0 == "_" }), name.count <= 63
    else {
      throw LocalPostgresError("\(name): a database name is lowercase letters, digits and _")
    }
    try FileManager.default.createDirectory(
      atPath: credentials, withIntermediateDirectories: true,
      attributes: [.posixPermissions: 0o700])
    let passwordFile = "\(credentials)/\(name).password"
    let existing = try? String(contentsOfFile: passwordFile, encoding: .utf8)
    let password = existing ?? LocalPostgres.randomPassword()
    try await withConnection(logger: logger) { connection in
      let roles = try await connection.query(
        "SELECT 1 FROM pg_roles WHERE rolname = \(name)", logger: logger
      ).collect()
      // Names and passwords here are checked to letters, digits and _: safe to quote.
      if roles.isEmpty {
        try await connection.query(
          PostgresQuery(unsafeSQL: "CREATE ROLE \"\(name)\" LOGIN PASSWORD '\(password)'"),
          logger: logger)
      } else if existing == nil {
        try await connection.query(
          PostgresQuery(unsafeSQL: "ALTER ROLE \"\(name)\" LOGIN PASSWORD '\(password)'"),
          logger: logger)
      }
      let databases = try await connection.query(
        "SELECT 1 FROM pg_database WHERE datname = \(name)", logger: logger
      ).collect()
      if databases.isEmpty {
        try await connection.query(
          PostgresQuery(unsafeSQL: "CREATE DATABASE \"\(name)\" OWNER \"\(name)\""),
          logger: logger)
      }
      try await connection.query(
        PostgresQuery(
          unsafeSQL: "REVOKE CONNECT, TEMPORARY ON DATABASE \"\(name)\" FROM PUBLIC"),
        logger: logger)
    }
    if existing == nil { try LocalPostgres.writeSecret(password, to: passwordFile) }
    return "postgres://\(name)@\(host):\(port)/\(name)?password_file=\(passwordFile)"
  }

  /// Runs `body` on a connection as this login, to the `postgres` database.
  public func withConnection<T: Sendable>(
    logger: Logger, _ body: (PostgresConnection) async throws -> T
  ) async throws -> T {
    let password = try String(contentsOfFile: passwordFile, encoding: .utf8)
      .trimmingCharacters(in: .newlines)
    let configuration = PostgresConnection.Configuration(
      host: host, port: port, username: user, password: password, database: "postgres",
      tls: .disable)
    let connection = try await PostgresConnection.connect(
      configuration: configuration, id: 1, logger: logger)
    do {
      let result = try await body(connection)
      try await connection.close()
      return result
    } catch {
      try? await connection.close()
      throw error
    }
  }
}
