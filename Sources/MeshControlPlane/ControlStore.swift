import Crypto
import Foundation

/// Where the control plane keeps its state: join tokens (as hashes), the certificates it issued,
/// the generations of the mesh's trust, the numbered versions of its configuration, the
/// registered endpoints and the renewals asked for. `SQLiteControlStore` is the embedded default;
/// `EtcdControlStore` keeps the same state in an etcd cluster that several control planes share.
///
/// Every store acknowledges a write only once it is durable, spends a join token exactly once
/// however many callers race for it, and numbers configuration versions and trust generations
/// without a gap or a repeat.
public protocol ControlStore: Sendable {
  /// The engine, as logs name it: `sqlite` or `etcd`.
  var kind: String { get }

  /// A new join token for `spiffeID`, valid for `ttl`; only its SHA-256 is stored.
  func createToken(
    for spiffeID: String, ttl: TimeInterval, now: Date
  ) async throws -> (token: String, expiresAt: Date)

  /// Spends a join token: the identity it was made for, or why it cannot be used. A token is
  /// good once. With `spend: false` it is only checked.
  func redeemToken(
    _ token: String, spend: Bool, now: Date
  ) async throws -> Result<String, TokenRefusal>

  func recordCertificate(
    serial: String, spiffeID: String, notAfter: Date, issuerSerial: String, now: Date
  ) async throws
  /// What the control plane recorded when it issued `serial`.
  func issuedCertificate(serial: String) async throws -> IssuedCertificate?
  func certificateCount() async throws -> Int

  /// The trust in force (the newest generation), if any was stored.
  func currentTrust() async throws -> StoredTrust?
  /// Every generation, oldest first.
  func trustGenerations() async throws -> [StoredTrust]
  /// Stores the next generation of trust; returns its number.
  func storeTrust(
    bundle: String, issuer: String, issuerKey: String, reason: String
  ) async throws -> Int64
  /// The certificates of the issuers that sign now: one per control plane sharing the store.
  func issuersInForce() async throws -> [String]
  /// The key made for the next issuer, kept until an issuer certificate for it is installed.
  func pendingIssuerKey() async throws -> String?
  func setPendingIssuerKey(_ pem: String) async throws

  /// Every registered endpoint (a `RegisteredEndpoint` message each), by node.
  func registrations() async throws -> [Data]
  /// Stores (or, with nil, deletes) `node`'s registration, for `lease` unless it is renewed.
  func setRegistration(node: String, endpoint: Data?, lease: Duration) async throws
  /// Keeps `node`'s registration, unchanged, for another `lease`.
  func renewRegistration(node: String, endpoint: Data, lease: Duration) async throws
  /// Whether the store itself deletes a registration whose lease ran out (and tells `follow`),
  /// or leaves that to the control plane's own sweep.
  var withdrawsExpiredRegistrations: Bool { get }

  /// Asks every certificate of `spiffeID` issued before `now` to be renewed.
  func requestRenewal(of spiffeID: String, now: Date) async throws
  /// When a renewal was last asked for, by identity.
  func renewalRequests() async throws -> [String: Date]

  /// The running version (the newest), if any.
  func currentConfig() async throws -> StoredConfig?
  func config(version: Int64) async throws -> StoredConfig?
  /// Every version, newest first.
  func configVersions() async throws -> [StoredConfig]
  /// Stores `yaml` as the next version unless it equals the running one; returns the running
  /// version and whether it is new.
  func storeConfig(
    yaml: String, createdBy: String, rolledBackFrom: Int64?
  ) async throws -> (version: Int64, changed: Bool)

  /// Hands `body` what other control planes on this store change, in the store's order, until
  /// the task is cancelled: first `.resync` (read everything), then each change after the
  /// state that read saw; `.resync` again whenever changes may have been missed. A store that
  /// only this process writes (SQLite) returns at once.
  func follow(_ body: @escaping @Sendable (StoreChange) async throws -> Void) async throws

  /// Runs `body` while this control plane leads those sharing the store — at once, and for as
  /// long as it runs, for a store only it uses — and cancels it when the lead is lost. Returns
  /// when the task is cancelled.
  func whileLeading(_ body: @escaping @Sendable () async throws -> Void) async throws

  /// Announces this control plane to those sharing the store, as `current` describes it,
  /// until the task is cancelled; on etcd on a lease, so one that dies leaves the list within
  /// it.
  func announce(_ current: @escaping @Sendable () -> ReplicaAnnouncement) async throws
  /// Every control plane announced.
  func replicas() async throws -> [ReplicaAnnouncement]
  /// The name of the control plane that leads now, if any.
  func leader() async throws -> String?

  /// Deletes what is past use: join tokens and records of certificates a day after they
  /// expired; in etcd, also the history older than the previous sweep (etcd keeps every
  /// revision until it is compacted). Returns how many records went.
  func sweep(now: Date) async throws -> Int
}

/// How long a join token or a certificate record outlives its expiry in the store.
let expiredRecordsKept: TimeInterval = 86_400

/// A control plane as it announces itself to the others.
public struct ReplicaAnnouncement: Sendable, Equatable, Codable {
  public var name: String
  public var address: String
  public var joinAddress: String
  public var startedAt: Date
  /// The subject of the issuer it signs with.
  public var issuer: String

  public init(name: String, address: String, joinAddress: String, startedAt: Date, issuer: String) {
    self.name = name
    self.address = address
    self.joinAddress = joinAddress
    self.startedAt = startedAt
    self.issuer = issuer
  }
}

/// A change to the store, as `ControlStore.follow` hands it on.
public enum StoreChange: Sendable, Equatable {
  /// Anything may have changed: read the whole state again.
  case resync
  case config(StoredConfig)
  /// A new generation of trust: read it with `currentTrust()`.
  case trust(generation: Int64)
  /// A control plane signs with another issuer: read them with `issuersInForce()`.
  case issuers
  /// `node` registered `endpoint` (a `RegisteredEndpoint` message), or was withdrawn (nil).
  case registration(node: String, endpoint: Data?)
  case renewal(spiffeID: String, at: Date)
}

/// What the control plane recorded when it issued a certificate.
public struct IssuedCertificate: Sendable, Equatable, Codable {
  public var spiffeID: String
  public var issuedAt: Date
  public var notAfter: Date
  public var issuerSerial: String?
}

/// One state of the mesh's trust: the roots in every bundle and the issuer signing now.
public struct StoredTrust: Sendable, Equatable {
  public var generation: Int64
  public var bundle: String
  public var issuer: String
  public var issuerKey: String
  public var reason: String
}

/// One version of the mesh's configuration.
public struct StoredConfig: Sendable, Equatable, Codable {
  public var version: Int64
  public var yaml: String
  public var createdAt: Date
  public var createdBy: String
  public var rolledBackFrom: Int64?
}

/// Why a join token was refused.
public enum TokenRefusal: String, Error, Sendable {
  case unknown = "the join token is not one this control plane made"
  case used = "the join token has already been used"
  case expired = "the join token has expired"
}

/// Join tokens: 256 random bits, of which a store keeps only the SHA-256.
enum JoinToken {
  static func make() -> String {
    let secret = SymmetricKey(size: .bits256).withUnsafeBytes { Data($0) }
    return "trellis-join-" + secret.map { String(format: "%02x", $0) }.joined()
  }

  static func hash(_ token: String) -> String {
    SHA256.hash(data: Data(token.utf8)).map { String(format: "%02x", $0) }.joined()
  }
}

/// A control plane on a shared store that has no issuer of its own yet: the operator signs the
/// one it prepared (`meshctl certs sign-issuer`).
public struct NoIssuerOfItsOwn: Error, CustomStringConvertible {
  public var replica: String
  /// Set when the store names an issuer whose key is not in this folder.
  public var keyDirectory: String?

  public var description: String {
    if let keyDirectory {
      return
        "the issuer of control plane '\(replica)' is in the store, but its key is not in \(keyDirectory)"
    }
    return "control plane '\(replica)' has no issuer of its own yet"
  }
}
