import Crypto
import EtcdAPI
import Foundation
import GRPCCore
import Synchronization

/// The control plane's state in etcd, under one key prefix (`/trellis/` by default), for
/// control planes that share it:
///
/// | key | value |
/// | --- | --- |
/// | `tokens/<sha256>` | a join token's identity, expiry and spending (JSON) |
/// | `certificates/<serial>` | an issued certificate's record (JSON) |
/// | `config/<version, 20 digits>` | a configuration version (JSON) |
/// | `trust/<generation, 20 digits>` | a trust generation: bundle, reason (JSON) |
/// | `issuers/<replica>` | the issuer certificate a control plane signs with (JSON) |
/// | `registrations/<node>` | a registered endpoint (`RegisteredEndpoint`, binary) |
/// | `renewals/<SPIFFE ID>` | when a renewal was asked for (milliseconds) |
///
/// No private key goes to etcd: each control plane signs with an issuer of its own, whose key
/// (and the pending one) stays in `keyDirectory`, on its own disk (mode 0600); etcd holds the
/// issuer's certificate.
///
/// What must happen once happens in one transaction: a token is spent only if it is unchanged
/// since it was read (two replicas racing for one: one wins, the other reads it used), and a
/// new version or generation is written only if its key is still absent.
public final class EtcdControlStore: ControlStore {
  private let etcd: EtcdClient
  private let prefix: String
  private let keyDirectory: URL
  /// The etcd lease of each registration this control plane stored, by node.
  private let leases = Mutex<[String: Int64]>([:])
  /// How long the leader's lease lasts: how soon another takes over from a leader that died.
  private let leaderLease: Duration
  /// How much history the leader leaves when it compacts.
  private let historyKept: Duration
  private let leading = Mutex(false)
  /// Revisions seen at each sweep, oldest first: what to compact to once old enough.
  private let revisions = Mutex<[(revision: Int64, at: ContinuousClock.Instant)]>([])

  /// This control plane's name among those sharing the store.
  public let replica: String

  public init(
    etcd: EtcdClient, prefix: String = "/trellis/", replica: String, keyDirectory: String,
    leaderLease: Duration = .seconds(10), historyKept: Duration = .seconds(300)
  ) throws {
    self.etcd = etcd
    self.prefix = prefix
    self.replica = replica
    self.leaderLease = leaderLease
    self.historyKept = historyKept
    self.keyDirectory = URL(fileURLWithPath: keyDirectory)
    try FileManager.default.createDirectory(
      atPath: keyDirectory, withIntermediateDirectories: true,
      attributes: [.posixPermissions: 0o700])
  }

  // MARK: Join tokens

  private struct TokenRecord: Codable {
    var spiffeID: String
    var createdAt: Int64
    var expiresAt: Int64
    var usedAt: Int64?
  }

  public func createToken(
    for spiffeID: String, ttl: TimeInterval, now: Date = Date()
  ) async throws -> (token: String, expiresAt: Date) {
    let token = JoinToken.make()
    let expiresAt = now.addingTimeInterval(ttl)
    let record = TokenRecord(
      spiffeID: spiffeID, createdAt: Int64(now.timeIntervalSince1970),
      expiresAt: Int64(expiresAt.timeIntervalSince1970))
    try await etcd.put(key("tokens/" + JoinToken.hash(token)), try Self.encode(record))
    return (token, expiresAt)
  }

  public func redeemToken(
    _ token: String, spend: Bool = true, now: Date = Date()
  ) async throws -> Result<String, TokenRefusal> {
    let key = key("tokens/" + JoinToken.hash(token))
    guard let stored = try await etcd.get(key) else { return .failure(.unknown) }
    var record = try Self.decode(TokenRecord.self, stored.value)
    if record.usedAt != nil { return .failure(.used) }
    guard Int64(now.timeIntervalSince1970) < record.expiresAt else { return .failure(.expired) }
    guard spend else { return .success(record.spiffeID) }
    record.usedAt = Int64(now.timeIntervalSince1970)
    // Spent only if nobody changed it since it was read: of two racing, one wins.
    let spent = try await etcd.txn(
      .init(
        if: Self.modified(key, at: stored.modRevision),
        then: [Self.put(key, try Self.encode(record))]))
    return spent.succeeded ? .success(record.spiffeID) : .failure(.used)
  }

  // MARK: Certificates

  public func recordCertificate(
    serial: String, spiffeID: String, notAfter: Date, issuerSerial: String, now: Date = Date()
  ) async throws {
    let record = IssuedCertificate(
      spiffeID: spiffeID, issuedAt: now, notAfter: notAfter, issuerSerial: issuerSerial)
    try await etcd.put(key("certificates/" + serial), try Self.encode(record))
  }

  public func issuedCertificate(serial: String) async throws -> IssuedCertificate? {
    guard let stored = try await etcd.get(key("certificates/" + serial)) else { return nil }
    return try Self.decode(IssuedCertificate.self, stored.value)
  }

  public func certificateCount() async throws -> Int {
    Int(try await etcd.count(prefix: key("certificates/")))
  }

  // MARK: Trust

  /// A generation: the roots every bundle holds. Each control plane signs with an issuer of
  /// its own (`issuers/<replica>`), under the roots of the generation in force.
  private struct TrustRecord: Codable {
    var generation: Int64
    var bundle: String
    /// The issuer of the control plane that stored the generation.
    var issuer: String
    var reason: String
    var createdAt: Int64
  }

  /// The issuer a control plane signs with now.
  private struct IssuerRecord: Codable {
    var replica: String
    var certificate: String
    var createdAt: Int64
  }

  public func currentTrust() async throws -> StoredTrust? {
    guard
      let newest = try await etcd.list(prefix: key("trust/"), descending: true, limit: 1)
        .kvs.first
    else { return nil }
    let record = try Self.decode(TrustRecord.self, newest.value)
    guard let own = try await etcd.get(key("issuers/" + replica)) else {
      throw NoIssuerOfItsOwn(replica: replica)
    }
    let issuer = try Self.decode(IssuerRecord.self, own.value).certificate
    guard let issuerKey = issuerKey(for: issuer) else {
      throw NoIssuerOfItsOwn(replica: replica, keyDirectory: keyDirectory.path)
    }
    return StoredTrust(
      generation: record.generation, bundle: record.bundle, issuer: issuer,
      issuerKey: issuerKey, reason: record.reason)
  }

  /// Every generation, each with the issuer of the control plane that stored it (its key
  /// only if that was this one).
  public func trustGenerations() async throws -> [StoredTrust] {
    try await etcd.list(prefix: key("trust/")).kvs.map {
      let record = try Self.decode(TrustRecord.self, $0.value)
      return StoredTrust(
        generation: record.generation, bundle: record.bundle, issuer: record.issuer,
        issuerKey: issuerKey(for: record.issuer) ?? "", reason: record.reason)
    }
  }

  public func issuersInForce() async throws -> [String] {
    try await etcd.list(prefix: key("issuers/")).kvs.map {
      try Self.decode(IssuerRecord.self, $0.value).certificate
    }
  }

  /// Stores the next generation and, in the same transaction, this control plane's issuer.
  public func storeTrust(
    bundle: String, issuer: String, issuerKey: String, reason: String
  ) async throws -> Int64 {
    // The key is on disk before the issuer that needs it is in etcd.
    try writeIssuerKey(issuerKey, for: issuer)
    let own = try ownIssuer(issuer)
    while true {
      let last = try await etcd.list(prefix: key("trust/"), descending: true, limit: 1).kvs.first
      let generation = try last.map { try Self.decode(TrustRecord.self, $0.value).generation } ?? 0
      let next = generation + 1
      let record = TrustRecord(
        generation: next, bundle: bundle, issuer: issuer, reason: reason,
        createdAt: Int64(Date().timeIntervalSince1970))
      let key = key("trust/" + Self.numbered(next))
      let stored = try await etcd.txn(
        .init(if: Self.absent(key), then: [Self.put(key, try Self.encode(record)), own]))
      if stored.succeeded { return next }
    }
  }

  /// Stores the first generation, with this control plane's issuer, unless one exists:
  /// false when another control plane made it first.
  public func storeFirstTrust(
    bundle: String, issuer: String, issuerKey: String, reason: String
  ) async throws -> Bool {
    try writeIssuerKey(issuerKey, for: issuer)
    let record = TrustRecord(
      generation: 1, bundle: bundle, issuer: issuer, reason: reason,
      createdAt: Int64(Date().timeIntervalSince1970))
    var none = Etcdserverpb_Compare()
    none.key = Data(key("trust/").utf8)
    none.rangeEnd = EtcdClient.rangeEnd(ofPrefix: none.key)
    none.target = .create
    none.result = .equal
    none.createRevision = 0
    let key = key("trust/" + Self.numbered(1))
    return try await etcd.txn(
      .init(if: none, then: [Self.put(key, try Self.encode(record)), try ownIssuer(issuer)])
    ).succeeded
  }

  /// The roots of the generation in force, whatever issuer this control plane has.
  public func currentBundle() async throws -> String? {
    guard
      let newest = try await etcd.list(prefix: key("trust/"), descending: true, limit: 1)
        .kvs.first
    else { return nil }
    return try Self.decode(TrustRecord.self, newest.value).bundle
  }

  /// Records the issuer this control plane signs with from now on, under the generation in
  /// force (a new control plane's first issuer, signed by the operator).
  public func recordIssuer(certificate: String, key: String) async throws {
    try writeIssuerKey(key, for: certificate)
    _ = try await etcd.txn(.init(then: [try ownIssuer(certificate)]))
  }

  private func ownIssuer(_ certificate: String) throws -> Etcdserverpb_RequestOp {
    let record = IssuerRecord(
      replica: replica, certificate: certificate, createdAt: Int64(Date().timeIntervalSince1970))
    return Self.put(key("issuers/" + replica), try Self.encode(record))
  }

  /// Issuer keys are named by a digest of their certificate.
  private func issuerKeyFile(for certificate: String) -> URL {
    let digest = SHA256.hash(data: Data(certificate.utf8)).prefix(12)
      .map { String(format: "%02x", $0) }.joined()
    return keyDirectory.appendingPathComponent("issuer-\(digest).key.pem")
  }

  private func issuerKey(for certificate: String) -> String? {
    try? String(contentsOf: issuerKeyFile(for: certificate), encoding: .utf8)
  }

  private func writeIssuerKey(_ key: String, for certificate: String) throws {
    try Self.writePrivate(key, to: issuerKeyFile(for: certificate))
  }

  public func pendingIssuerKey() async throws -> String? {
    try? String(
      contentsOf: keyDirectory.appendingPathComponent("pending-issuer.key.pem"), encoding: .utf8)
  }

  public func setPendingIssuerKey(_ pem: String) async throws {
    try Self.writePrivate(pem, to: keyDirectory.appendingPathComponent("pending-issuer.key.pem"))
  }

  private static func writePrivate(_ text: String, to url: URL) throws {
    let temporary = url.appendingPathExtension("tmp")
    guard
      FileManager.default.createFile(
        atPath: temporary.path, contents: Data(text.utf8),
        attributes: [.posixPermissions: 0o600])
    else {
      throw EtcdError("cannot write \(temporary.path)")
    }
    // rename(2) replaces the old file at once: a reader sees the old key or the new one.
    guard rename(temporary.path, url.path) == 0 else {
      throw EtcdError("cannot write \(url.path): \(String(cString: strerror(errno)))")
    }
  }

  // MARK: Registrations and renewals

  public func registrations() async throws -> [Data] {
    try await etcd.list(prefix: key("registrations/")).kvs.map(\.value)
  }

  public var kind: String { "etcd" }

  /// A registration lives on an etcd lease of its own, which this control plane keeps alive
  /// while the sidecar renews here: when the sidecar (or this control plane) goes, etcd deletes
  /// the key once the lease runs out, and every control plane's watch withdraws the endpoint.
  public var withdrawsExpiredRegistrations: Bool { true }

  public func setRegistration(node: String, endpoint: Data?, lease: Duration) async throws {
    let key = key("registrations/" + node)
    guard let endpoint else {
      try await etcd.delete(key)
      if let id = leases.withLock({ $0.removeValue(forKey: node) }) {
        try? await etcd.revokeLease(id)
      }
      return
    }
    var id = try await etcd.grantLease(ttl: Self.seconds(lease))
    do {
      try await etcd.put(key, endpoint, lease: id)
    } catch let error as RPCError where error.code == .notFound {
      // This process was paused past the new lease (a stopped or starved process): once more.
      id = try await etcd.grantLease(ttl: Self.seconds(lease))
      try await etcd.put(key, endpoint, lease: id)
    }
    if let old = leases.withLock({ $0.updateValue(id, forKey: node) }) {
      try? await etcd.revokeLease(old)
    }
  }

  public func renewRegistration(node: String, endpoint: Data, lease: Duration) async throws {
    // The key must still be on this control plane's lease: the sidecar may have registered at
    // another one meanwhile, whose lease then ends when that one stops renewing it.
    if let id = leases.withLock({ $0[node] }), try await etcd.keepAlive(id) != nil {
      let key = key("registrations/" + node)
      var onLease = Etcdserverpb_Compare()
      onLease.key = Data(key.utf8)
      onLease.target = .lease
      onLease.result = .equal
      onLease.lease = id
      var put = Self.put(key, endpoint)
      put.requestPut.lease = id
      var request = Etcdserverpb_TxnRequest(if: onLease, then: [])
      request.failure = [put]
      do {
        _ = try await etcd.txn(request)
        return
      } catch let error as RPCError where error.code == .notFound {
        // The lease ran out between the renewal and the write: a new one below.
      }
    }
    try await setRegistration(node: node, endpoint: endpoint, lease: lease)
  }

  /// A lease's TTL: whole seconds, at least etcd's minimum.
  private static func seconds(_ lease: Duration) -> Int64 {
    max(3, lease.components.seconds + (lease.components.attoseconds > 0 ? 1 : 0))
  }

  public func requestRenewal(of spiffeID: String, now: Date = Date()) async throws {
    let milliseconds = Int64((now.timeIntervalSince1970 * 1000).rounded(.down))
    try await etcd.put(key("renewals/" + spiffeID), Data(String(milliseconds).utf8))
  }

  public func renewalRequests() async throws -> [String: Date] {
    let renewals = key("renewals/")
    var requests: [String: Date] = [:]
    for kv in try await etcd.list(prefix: renewals).kvs {
      guard let milliseconds = Int64(String(decoding: kv.value, as: UTF8.self)) else { continue }
      let spiffeID = String(String(decoding: kv.key, as: UTF8.self).dropFirst(renewals.count))
      requests[spiffeID] = Date(timeIntervalSince1970: TimeInterval(milliseconds) / 1000)
    }
    return requests
  }

  // MARK: Configuration versions

  public func currentConfig() async throws -> StoredConfig? {
    guard
      let newest = try await etcd.list(prefix: key("config/"), descending: true, limit: 1).kvs
        .first
    else { return nil }
    return try Self.decode(StoredConfig.self, newest.value)
  }

  public func config(version: Int64) async throws -> StoredConfig? {
    guard let stored = try await etcd.get(key("config/" + Self.numbered(version))) else {
      return nil
    }
    return try Self.decode(StoredConfig.self, stored.value)
  }

  public func configVersions() async throws -> [StoredConfig] {
    try await etcd.list(prefix: key("config/"), descending: true).kvs.map {
      try Self.decode(StoredConfig.self, $0.value)
    }
  }

  public func storeConfig(
    yaml: String, createdBy: String, rolledBackFrom: Int64? = nil
  ) async throws -> (version: Int64, changed: Bool) {
    while true {
      let current = try await currentConfig()
      if let current, current.yaml == yaml { return (current.version, false) }
      let version = (current?.version ?? 0) + 1
      let record = StoredConfig(
        version: version, yaml: yaml,
        createdAt: Date(timeIntervalSince1970: Date().timeIntervalSince1970.rounded(.down)),
        createdBy: createdBy, rolledBackFrom: rolledBackFrom)
      let key = key("config/" + Self.numbered(version))
      // Another replica may have stored this version meanwhile: then read again.
      let stored = try await etcd.txn(
        .init(if: Self.absent(key), then: [Self.put(key, try Self.encode(record))]))
      if stored.succeeded { return (version, true) }
    }
  }

  // MARK: Following other control planes

  public func follow(_ body: @escaping @Sendable (StoreChange) async throws -> Void) async throws {
    // The revision the watch resumes from; 0 once changes may have been missed.
    let next = Revision()
    while !Task.isCancelled {
      do {
        if next.value == 0 {
          // Whatever the reads of the resync see is at or after `revision`: the watch replays
          // from just after it, in order, so replayed changes land where they already are.
          let revision = try await etcd.status().header.revision
          try await body(.resync)
          next.value = revision + 1
        }
        try await etcd.watch(prefix: prefix, from: next.value) { [self] response in
          for event in response.events {
            if let change = try change(event) { try await body(change) }
            next.value = event.kv.modRevision + 1
          }
          return true
        }
      } catch let error as EtcdError where error.compactedBefore != nil {
        next.value = 0
      } catch  where Task.isCancelled {
        return
      } catch {
        // The member went (the client moves to another), or a change could not be taken in:
        // resume where the watch stopped.
        try await Task.sleep(for: .milliseconds(200))
      }
    }
  }

  private final class Revision: Sendable {
    private let stored = Mutex<Int64>(0)
    var value: Int64 {
      get { stored.withLock { $0 } }
      set { stored.withLock { $0 = newValue } }
    }
  }

  /// What a watch event changed, if it is one the control planes follow.
  private func change(_ event: Mvccpb_Event) throws -> StoreChange? {
    let name = String(decoding: event.kv.key, as: UTF8.self).dropFirst(prefix.count)
    let deleted = event.type == .delete
    if let node = name.removingPrefix("registrations/") {
      return .registration(node: node, endpoint: deleted ? nil : event.kv.value)
    }
    guard !deleted else { return nil }
    if name.hasPrefix("config/") {
      return .config(try Self.decode(StoredConfig.self, event.kv.value))
    }
    if name.hasPrefix("trust/") {
      return .trust(generation: try Self.decode(TrustRecord.self, event.kv.value).generation)
    }
    if name.hasPrefix("issuers/") { return .issuers }
    if let spiffeID = name.removingPrefix("renewals/"),
      let milliseconds = Int64(String(decoding: event.kv.value, as: UTF8.self))
    {
      return .renewal(
        spiffeID: spiffeID, at: Date(timeIntervalSince1970: TimeInterval(milliseconds) / 1000))
    }
    return nil
  }

  // MARK: The leader, and what it sweeps

  /// Leads while the `leader` key is this control plane's, on a lease it keeps alive. Another
  /// takes over once the lease runs out: within `leaderLease` of a leader that died.
  public func whileLeading(_ body: @escaping @Sendable () async throws -> Void) async throws {
    let key = key("leader")
    while !Task.isCancelled {
      do {
        if try await etcd.get(key) == nil {
          let lease = try await etcd.grantLease(ttl: Self.seconds(leaderLease))
          let taken = try await etcd.txn(
            .init(if: Self.absent(key), then: [Self.put(key, Data(replica.utf8), lease: lease)]))
          if taken.succeeded {
            try await lead(on: lease, body)
            continue
          }
          try? await etcd.revokeLease(lease)
        }
      } catch  where Task.isCancelled {
        return
      } catch {
        // etcd away: try again.
      }
      try? await Task.sleep(for: .milliseconds(250))
    }
  }

  /// Runs `body` while `lease` lives; ends it when the lease cannot be kept.
  private func lead(
    on lease: Int64, _ body: @escaping @Sendable () async throws -> Void
  )
    async throws
  {
    leading.withLock { $0 = true }
    defer { leading.withLock { $0 = false } }
    await withTaskGroup(of: Void.self) { group in
      group.addTask { try? await body() }
      group.addTask { [etcd, leaderLease] in
        var kept = ContinuousClock.now
        while !Task.isCancelled {
          try? await Task.sleep(for: leaderLease / 4)
          do {
            guard try await etcd.keepAlive(lease) != nil else { return }
            kept = .now
          } catch {
            // Lost for good once the lease has run out since the last renewal.
            if ContinuousClock.now - kept >= leaderLease { return }
          }
        }
      }
      await group.next()
      group.cancelAll()
    }
    // Stepping down (or shutting down): another takes over at once. A task of its own, so
    // that the cancellation that ended the lead does not cancel the revocation too.
    await Task { [etcd] in try? await etcd.revokeLease(lease) }.value
  }

  /// Whether this control plane leads now.
  public var isLeading: Bool { leading.withLock { $0 } }

  /// Who leads now, if anyone.
  public func leader() async throws -> String? {
    try await etcd.get(key("leader")).map { String(decoding: $0.value, as: UTF8.self) }
  }

  /// `replicas/<name>` on a lease of `leaderLease`, kept alive, and written again when what it
  /// says changes.
  public func announce(_ current: @escaping @Sendable () -> ReplicaAnnouncement) async throws {
    let key = key("replicas/" + replica)
    var lease: Int64?
    var written: ReplicaAnnouncement?
    defer {
      if let lease { Task { [etcd] in try? await etcd.revokeLease(lease) } }
    }
    while !Task.isCancelled {
      do {
        let now = current()
        if let held = lease, try await etcd.keepAlive(held) == nil { lease = nil }
        if lease == nil {
          lease = try await etcd.grantLease(ttl: Self.seconds(leaderLease))
          written = nil
        }
        if now != written {
          try await etcd.put(key, try Self.encode(now), lease: lease!)
          written = now
        }
      } catch  where Task.isCancelled {
        return
      } catch {
        // etcd away: try again.
      }
      try? await Task.sleep(for: leaderLease / 4)
    }
  }

  public func replicas() async throws -> [ReplicaAnnouncement] {
    try await etcd.list(prefix: key("replicas/")).kvs.map {
      try Self.decode(ReplicaAnnouncement.self, $0.value)
    }
  }

  public func sweep(now: Date) async throws -> Int {
    let before = now.addingTimeInterval(-expiredRecordsKept)
    var expired: [String] = []
    for kv in try await etcd.list(prefix: key("tokens/")).kvs {
      let record = try Self.decode(TokenRecord.self, kv.value)
      if Double(record.expiresAt) < before.timeIntervalSince1970 {
        expired.append(String(decoding: kv.key, as: UTF8.self))
      }
    }
    for kv in try await etcd.list(prefix: key("certificates/")).kvs {
      let record = try Self.decode(IssuedCertificate.self, kv.value)
      if record.notAfter < before { expired.append(String(decoding: kv.key, as: UTF8.self)) }
    }
    // etcd takes at most 128 operations in one transaction.
    var start = expired.startIndex
    while start < expired.endIndex {
      let end = min(start + 100, expired.endIndex)
      _ = try await etcd.txn(
        .init(
          then: expired[start..<end].map { name in
            var operation = Etcdserverpb_RequestOp()
            operation.requestDeleteRange.key = Data(name.utf8)
            return operation
          }))
      start = end
    }
    try await compactHistory()
    return expired.count
  }

  /// Compacts to the newest revision seen `historyKept` ago: etcd then keeps that much history
  /// (for watches resuming after a break) and no more.
  private func compactHistory() async throws {
    let revision = try await etcd.status().header.revision
    let now = ContinuousClock.now
    let due = revisions.withLock { samples -> Int64? in
      samples.append((revision, now))
      let old = samples.filter { now - $0.at >= historyKept }
      samples.removeAll { now - $0.at >= historyKept }
      return old.last?.revision
    }
    guard let due else { return }
    do {
      try await etcd.compact(revision: due)
    } catch let error as RPCError where error.message.contains("compacted") {
      // Another leader compacted past it already.
    }
  }

  // MARK: Keys and values

  private func key(_ name: String) -> String { prefix + name }

  /// Numbers as keys that sort as numbers do.
  private static func numbered(_ number: Int64) -> String {
    let digits = String(number)
    return String(repeating: "0", count: max(0, 20 - digits.count)) + digits
  }

  private static func encode(_ value: some Encodable) throws -> Data {
    let encoder = JSONEncoder()
    encoder.dateEncodingStrategy = .millisecondsSince1970
    encoder.outputFormatting = .sortedKeys
    return try encoder.encode(value)
  }

  private static func decode<Value: Decodable>(_ type: Value.Type, _ data: Data) throws -> Value {
    let decoder = JSONDecoder()
    decoder.dateDecodingStrategy = .millisecondsSince1970
    return try decoder.decode(type, from: data)
  }

  private static func absent(_ key: String) -> Etcdserverpb_Compare {
    var compare = Etcdserverpb_Compare()
    compare.key = Data(key.utf8)
    compare.target = .create
    compare.result = .equal
    compare.createRevision = 0
    return compare
  }

  private static func modified(_ key: String, at revision: Int64) -> Etcdserverpb_Compare {
    var compare = Etcdserverpb_Compare()
    compare.key = Data(key.utf8)
    compare.target = .mod
    compare.result = .equal
    compare.modRevision = revision
    return compare
  }

  private static func put(
    _ key: String, _ value: Data, lease: Int64 = 0
  )
    -> Etcdserverpb_RequestOp
  {
    var operation = Etcdserverpb_RequestOp()
    operation.requestPut.key = Data(key.utf8)
    operation.requestPut.value = value
    operation.requestPut.lease = lease
    return operation
  }
}

extension Etcdserverpb_TxnRequest {
  /// If every comparison in `conditions` holds, `operations`.
  init(if conditions: Etcdserverpb_Compare..., then operations: [Etcdserverpb_RequestOp]) {
    self.init()
    compare = conditions
    success = operations
  }
}

extension Substring {
  fileprivate func removingPrefix(_ prefix: String) -> String? {
    hasPrefix(prefix) ? String(dropFirst(prefix.count)) : nil
  }
}
