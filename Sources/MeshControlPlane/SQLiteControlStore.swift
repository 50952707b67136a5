import Crypto
import Foundation
import GRDB
import Synchronization

/// The control plane's state in SQLite (WAL, `synchronous = FULL`), the embedded default: join
/// tokens (as hashes), the certificates it issued, and the numbered versions of the mesh's
/// configuration. A write is acknowledged only once it is committed, so `kill -9` at any moment
/// loses nothing that was acknowledged.
public final class SQLiteControlStore: ControlStore {
  private let database: DatabasePool
  private let announced = Mutex<ReplicaAnnouncement?>(nil)

  /// Opens (creating if needed) `control.sqlite` in `directory`.
  public init(directory: String) throws {
    database = try Self.open("control.sqlite", in: directory, synchronous: "FULL")
    try Self.migrator.migrate(database)
  }

  /// Opens (creating if needed) a WAL database in the control plane's folder, which only the
  /// control plane may read: it holds the issuer's key.
  static func open(
    _ file: String, in directory: String, synchronous: String, cacheKilobytes: Int? = nil
  ) throws
    -> DatabasePool
  {
    try FileManager.default.createDirectory(
      atPath: directory, withIntermediateDirectories: true,
      attributes: [.posixPermissions: 0o700])
    var configuration = Configuration()
    configuration.busyMode = .timeout(10)
    configuration.prepareDatabase { db in
      try db.execute(sql: "PRAGMA synchronous = \(synchronous)")
      if let cacheKilobytes { try db.execute(sql: "PRAGMA cache_size = -\(cacheKilobytes)") }
    }
    return try DatabasePool(path: "\(directory)/\(file)", configuration: configuration)
  }

  private static var migrator: DatabaseMigrator {
    var migrator = DatabaseMigrator()
    migrator.registerMigration("v1") { db in
      try db.execute(
        sql: """
          CREATE TABLE tokens (
            hash TEXT PRIMARY KEY,
            spiffe_id TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            expires_at INTEGER NOT NULL,
            used_at INTEGER
          );
          CREATE TABLE certificates (
            serial TEXT PRIMARY KEY,
            spiffe_id TEXT NOT NULL,
            issued_at INTEGER NOT NULL,
            not_after INTEGER NOT NULL
          );
          CREATE TABLE config_versions (
            version INTEGER PRIMARY KEY,
            yaml TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            created_by TEXT NOT NULL,
            rolled_back_from INTEGER
          );
          """)
    }
    migrator.registerMigration("v2: trust") { db in
      try db.execute(
        sql: """
          CREATE TABLE trust_generations (
            generation INTEGER PRIMARY KEY,
            bundle TEXT NOT NULL,
            issuer TEXT NOT NULL,
            issuer_key TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            reason TEXT NOT NULL
          );
          CREATE TABLE pending_issuer_key (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            key TEXT NOT NULL,
            created_at INTEGER NOT NULL
          );
          CREATE TABLE renewal_requests (
            spiffe_id TEXT PRIMARY KEY,
            requested_at_ms INTEGER NOT NULL
          );
          ALTER TABLE certificates ADD COLUMN issuer_serial TEXT;
          ALTER TABLE certificates ADD COLUMN issued_at_ms INTEGER;
          """)
    }
    migrator.registerMigration("v3: registrations") { db in
      try db.execute(
        sql: """
          CREATE TABLE registrations (
            node TEXT PRIMARY KEY,
            endpoint BLOB NOT NULL,
            registered_at INTEGER NOT NULL
          );
          """)
    }
    return migrator
  }

  // MARK: Join tokens

  /// A new join token for `spiffeID`, valid for `ttl`; only its SHA-256 is stored.
  public func createToken(
    for spiffeID: String, ttl: TimeInterval, now: Date = Date()
  ) throws
    -> (token: String, expiresAt: Date)
  {
    let token = JoinToken.make()
    let expiresAt = now.addingTimeInterval(ttl)
    try database.write { db in
      try db.execute(
        sql: "INSERT INTO tokens (hash, spiffe_id, created_at, expires_at) VALUES (?, ?, ?, ?)",
        arguments: [
          JoinToken.hash(token), spiffeID, Int64(now.timeIntervalSince1970),
          Int64(expiresAt.timeIntervalSince1970),
        ])
    }
    return (token, expiresAt)
  }

  /// Spends a join token: the identity it was made for, or why it cannot be used. A token is
  /// good once; the check and the spending are one transaction. With `spend: false` it is
  /// only checked.
  public func redeemToken(
    _ token: String, spend: Bool = true, now: Date = Date()
  ) throws -> Result<String, TokenRefusal> {
    try database.write { db in
      let row = try Row.fetchOne(
        db, sql: "SELECT spiffe_id, expires_at, used_at FROM tokens WHERE hash = ?",
        arguments: [JoinToken.hash(token)])
      guard let row else { return .failure(.unknown) }
      if row["used_at"] as Int64? != nil { return .failure(.used) }
      let expiresAt: Int64 = row["expires_at"]
      guard Int64(now.timeIntervalSince1970) < expiresAt else { return .failure(.expired) }
      guard spend else { return .success(row["spiffe_id"]) }
      try db.execute(
        sql: "UPDATE tokens SET used_at = ? WHERE hash = ?",
        arguments: [Int64(now.timeIntervalSince1970), JoinToken.hash(token)])
      return .success(row["spiffe_id"])
    }
  }

  private static func milliseconds(_ date: Date) -> Int64 {
    Int64((date.timeIntervalSince1970 * 1000).rounded(.down))
  }

  private static func date(_ milliseconds: Int64) -> Date {
    Date(timeIntervalSince1970: TimeInterval(milliseconds) / 1000)
  }

  // MARK: Certificates

  public func recordCertificate(
    serial: String, spiffeID: String, notAfter: Date, issuerSerial: String, now: Date = Date()
  ) throws {
    try database.write { db in
      try db.execute(
        sql: """
          INSERT OR REPLACE INTO certificates
            (serial, spiffe_id, issued_at, not_after, issuer_serial, issued_at_ms)
          VALUES (?, ?, ?, ?, ?, ?)
          """,
        arguments: [
          serial, spiffeID, Int64(now.timeIntervalSince1970), Int64(notAfter.timeIntervalSince1970),
          issuerSerial, Self.milliseconds(now),
        ])
    }
  }

  public func issuedCertificate(serial: String) throws -> IssuedCertificate? {
    try database.read { db in
      try Row.fetchOne(db, sql: "SELECT * FROM certificates WHERE serial = ?", arguments: [serial])
        .map { row in
          IssuedCertificate(
            spiffeID: row["spiffe_id"],
            issuedAt: (row["issued_at_ms"] as Int64?).map(Self.date)
              ?? Date(timeIntervalSince1970: TimeInterval(row["issued_at"] as Int64)),
            notAfter: Date(timeIntervalSince1970: TimeInterval(row["not_after"] as Int64)),
            issuerSerial: row["issuer_serial"])
        }
    }
  }

  // MARK: Trust

  /// The trust in force (the newest generation), if any was stored.
  public func currentTrust() throws -> StoredTrust? {
    try database.read { db in
      try Row.fetchOne(
        db, sql: "SELECT * FROM trust_generations ORDER BY generation DESC LIMIT 1"
      ).map(Self.trust)
    }
  }

  /// Every generation, oldest first.
  public func trustGenerations() throws -> [StoredTrust] {
    try database.read { db in
      try Row.fetchAll(db, sql: "SELECT * FROM trust_generations ORDER BY generation").map(
        Self.trust)
    }
  }

  private static func trust(_ row: Row) -> StoredTrust {
    StoredTrust(
      generation: row["generation"], bundle: row["bundle"], issuer: row["issuer"],
      issuerKey: row["issuer_key"], reason: row["reason"])
  }

  /// The issuer of the newest generation: one control plane signs.
  public func issuersInForce() throws -> [String] {
    try currentTrust().map { [$0.issuer] } ?? []
  }

  /// Stores the next generation of trust; returns its number.
  public func storeTrust(
    bundle: String, issuer: String, issuerKey: String, reason: String
  ) throws -> Int64 {
    try database.write { db in
      let last = try Int64.fetchOne(db, sql: "SELECT MAX(generation) FROM trust_generations") ?? 0
      try db.execute(
        sql: """
          INSERT INTO trust_generations (generation, bundle, issuer, issuer_key, created_at, reason)
          VALUES (?, ?, ?, ?, ?, ?)
          """,
        arguments: [
          last + 1, bundle, issuer, issuerKey, Int64(Date().timeIntervalSince1970), reason,
        ])
      return last + 1
    }
  }

  /// The key made for the next issuer, kept until an issuer certificate for it is installed.
  public func pendingIssuerKey() throws -> String? {
    try database.read { db in
      try String.fetchOne(db, sql: "SELECT key FROM pending_issuer_key WHERE id = 1")
    }
  }

  public func setPendingIssuerKey(_ pem: String) throws {
    try database.write { db in
      try db.execute(
        sql: "INSERT OR REPLACE INTO pending_issuer_key (id, key, created_at) VALUES (1, ?, ?)",
        arguments: [pem, Int64(Date().timeIntervalSince1970)])
    }
  }

  // MARK: Registrations

  public var kind: String { "sqlite" }

  /// Every registered endpoint (a `RegisteredEndpoint` message each).
  public var withdrawsExpiredRegistrations: Bool { false }

  /// Nothing to write: the control plane's sweep withdraws what is not renewed.
  public func renewRegistration(node: String, endpoint: Data, lease: Duration) {}

  /// Only this process writes the file: there is nothing to follow.
  public func follow(_ body: @escaping @Sendable (StoreChange) async throws -> Void) {}

  /// Only this process uses the file: it leads.
  public func whileLeading(_ body: @escaping @Sendable () async throws -> Void) async throws {
    try await body()
  }

  /// Only this process uses the file: it is the one control plane there is, and leads.
  public func announce(_ current: @escaping @Sendable () -> ReplicaAnnouncement) async throws {
    while !Task.isCancelled {
      announced.withLock { $0 = current() }
      try await Task.sleep(for: .seconds(1))
    }
  }

  public func replicas() -> [ReplicaAnnouncement] {
    announced.withLock { $0.map { [$0] } ?? [] }
  }

  public func leader() -> String? { announced.withLock { $0?.name } }

  public func sweep(now: Date) throws -> Int {
    let before = Int64(now.timeIntervalSince1970 - expiredRecordsKept)
    return try database.write { db in
      try db.execute(sql: "DELETE FROM tokens WHERE expires_at < ?", arguments: [before])
      var deleted = db.changesCount
      try db.execute(sql: "DELETE FROM certificates WHERE not_after < ?", arguments: [before])
      deleted += db.changesCount
      return deleted
    }
  }

  public func registrations() throws -> [Data] {
    try database.read { db in
      try Data.fetchAll(db, sql: "SELECT endpoint FROM registrations ORDER BY node")
    }
  }

  /// Stores (or, with nil, deletes) `node`'s registration. Its lease is the control plane's
  /// to keep: this process is the only one to read it.
  public func setRegistration(node: String, endpoint: Data?, lease: Duration = .zero) throws {
    try database.write { db in
      if let endpoint {
        try db.execute(
          sql:
            "INSERT OR REPLACE INTO registrations (node, endpoint, registered_at) VALUES (?, ?, ?)",
          arguments: [node, endpoint, Int64(Date().timeIntervalSince1970)])
      } else {
        try db.execute(sql: "DELETE FROM registrations WHERE node = ?", arguments: [node])
      }
    }
  }

  // MARK: Forced renewals

  /// Asks every certificate of `spiffeID` issued before now to be renewed.
  public func requestRenewal(of spiffeID: String, now: Date = Date()) throws {
    try database.write { db in
      try db.execute(
        sql: "INSERT OR REPLACE INTO renewal_requests (spiffe_id, requested_at_ms) VALUES (?, ?)",
        arguments: [spiffeID, Self.milliseconds(now)])
    }
  }

  /// When a renewal was last asked for, by identity.
  public func renewalRequests() throws -> [String: Date] {
    try database.read { db in
      var requests: [String: Date] = [:]
      for row in try Row.fetchAll(db, sql: "SELECT * FROM renewal_requests") {
        requests[row["spiffe_id"]] = Self.date(row["requested_at_ms"])
      }
      return requests
    }
  }

  public func certificateCount() throws -> Int {
    try database.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM certificates") ?? 0 }
  }

  // MARK: Configuration versions

  /// The running version (the newest), if any.
  public func currentConfig() throws -> StoredConfig? {
    try database.read { db in
      try Row.fetchOne(db, sql: "SELECT * FROM config_versions ORDER BY version DESC LIMIT 1")
        .map(Self.config)
    }
  }

  public func config(version: Int64) throws -> StoredConfig? {
    try database.read { db in
      try Row.fetchOne(
        db, sql: "SELECT * FROM config_versions WHERE version = ?", arguments: [version]
      ).map(Self.config)
    }
  }

  /// Every version, newest first.
  public func configVersions() throws -> [StoredConfig] {
    try database.read { db in
      try Row.fetchAll(db, sql: "SELECT * FROM config_versions ORDER BY version DESC")
        .map(Self.config)
    }
  }

  /// Stores `yaml` as the next version unless it equals the running one; returns the running
  /// version and whether it is new.
  public func storeConfig(
    yaml: String, createdBy: String, rolledBackFrom: Int64? = nil
  ) throws
    -> (version: Int64, changed: Bool)
  {
    try database.write { db in
      let current = try Row.fetchOne(
        db, sql: "SELECT version, yaml FROM config_versions ORDER BY version DESC LIMIT 1")
      if let current, current["yaml"] as String == yaml {
        return (current["version"], false)
      }
      let version = (current?["version"] as Int64? ?? 0) + 1
      try db.execute(
        sql: """
          INSERT INTO config_versions (version, yaml, created_at, created_by, rolled_back_from)
          VALUES (?, ?, ?, ?, ?)
          """,
        arguments: [
          version, yaml, Int64(Date().timeIntervalSince1970), createdBy, rolledBackFrom,
        ])
      return (version, true)
    }
  }

  private static func config(_ row: Row) -> StoredConfig {
    StoredConfig(
      version: row["version"], yaml: row["yaml"],
      createdAt: Date(timeIntervalSince1970: TimeInterval(row["created_at"] as Int64)),
      createdBy: row["created_by"], rolledBackFrom: row["rolled_back_from"])
  }
}
