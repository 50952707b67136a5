import EtcdAPI
import Foundation
import MeshControlPlane
import Synchronization
import TestSupport
import Testing

/// The control plane's store, the same behaviour on both engines: SQLite files, and a real etcd
/// member that two stores (two control planes) share.
@Suite struct ControlStoreTests {
  enum Engine: String, CaseIterable, CustomTestStringConvertible {
    case sqlite, etcd
    var testDescription: String { rawValue }
  }

  /// Two stores on one state, as two control planes would be, and what keeps them alive.
  struct Stores: Sendable {
    let first: any ControlStore
    let second: any ControlStore
    let keep: [any Sendable]
  }

  static func stores(
    _ engine: Engine, leaderLease: Duration = .seconds(10), historyKept: Duration = .seconds(300)
  ) async throws -> Stores {
    let directory = try makeTemporaryDirectory("control-store")
    switch engine {
    case .sqlite:
      let path = directory.appendingPathComponent("data").path
      return Stores(
        first: try SQLiteControlStore(directory: path),
        second: try SQLiteControlStore(directory: path), keep: [])
    case .etcd:
      let server = try EtcdServer()
      let client = try EtcdClient(endpoints: EtcdClient.endpoints(parsing: server.url))
      Task { try await client.run() }
      do {
        try await client.waitUntilReachable(timeout: .seconds(60))
      } catch {
        throw HarnessError("\(error)\n\(server.log)")
      }
      // Each control plane keeps its keys on its own disk.
      return Stores(
        first: try EtcdControlStore(
          etcd: client, replica: "a", keyDirectory: directory.appendingPathComponent("a").path,
          leaderLease: leaderLease, historyKept: historyKept),
        second: try EtcdControlStore(
          etcd: client, replica: "b", keyDirectory: directory.appendingPathComponent("b").path,
          leaderLease: leaderLease, historyKept: historyKept),
        keep: [server, client])
    }
  }

  @Test(arguments: Engine.allCases)
  func aJoinTokenIsSpentExactlyOnce(_ engine: Engine) async throws {
    let stores = try await Self.stores(engine)
    let store = stores.first
    let now = Date()
    let (token, expiresAt) = try await store.createToken(
      for: "spiffe://mesh.test/svc/users", ttl: 600, now: now)
    #expect(expiresAt.timeIntervalSince(now) == 600)
    #expect(
      try await store.redeemToken(token, spend: false, now: now)
        == .success("spiffe://mesh.test/svc/users"))
    #expect(
      try await store.redeemToken(token, spend: true, now: now)
        == .success("spiffe://mesh.test/svc/users"))
    #expect(try await store.redeemToken(token, spend: true, now: now) == .failure(.used))
    #expect(
      try await store.redeemToken("trellis-join-00", spend: true, now: now) == .failure(.unknown))
    let (late, _) = try await store.createToken(for: "spiffe://mesh.test/svc/x", ttl: 1, now: now)
    #expect(
      try await store.redeemToken(late, spend: true, now: now.addingTimeInterval(2))
        == .failure(.expired))

    // Two control planes racing for one token, many times: one wins each race.
    for _ in 0..<10 {
      let (raced, _) = try await store.createToken(
        for: "spiffe://mesh.test/svc/r", ttl: 600, now: now)
      async let one = stores.first.redeemToken(raced, spend: true, now: now)
      async let two = stores.second.redeemToken(raced, spend: true, now: now)
      let results = try await [one, two]
      #expect(results.filter { (try? $0.get()) != nil }.count == 1, "\(results)")
    }
  }

  @Test(arguments: Engine.allCases)
  func configVersionsAreNumberedWithoutAGapOrARepeat(_ engine: Engine) async throws {
    let stores = try await Self.stores(engine)
    let store = stores.first
    #expect(try await store.currentConfig() == nil)
    #expect(
      try await store.storeConfig(yaml: "a: 1\n", createdBy: "ops", rolledBackFrom: nil) == (
        1, true
      ))
    #expect(
      try await store.storeConfig(yaml: "a: 1\n", createdBy: "ops", rolledBackFrom: nil) == (
        1, false
      ))
    #expect(
      try await store.storeConfig(yaml: "a: 2\n", createdBy: "dev", rolledBackFrom: nil) == (
        2, true
      ))
    #expect(
      try await store.storeConfig(yaml: "a: 1\n", createdBy: "ops", rolledBackFrom: 2) == (3, true))
    let current = try #require(try await stores.second.currentConfig())
    #expect(current.version == 3 && current.yaml == "a: 1\n" && current.rolledBackFrom == 2)
    #expect(current.createdBy == "ops" && abs(current.createdAt.timeIntervalSinceNow) < 60)
    #expect(try await store.config(version: 2)?.yaml == "a: 2\n")
    #expect(try await store.config(version: 9) == nil)
    #expect(try await store.configVersions().map(\.version) == [3, 2, 1])

    // Both control planes storing at once: every version once, in order.
    try await withThrowingTaskGroup(of: Void.self) { group in
      for index in 0..<10 {
        let store = index.isMultiple(of: 2) ? stores.first : stores.second
        group.addTask {
          _ = try await store.storeConfig(
            yaml: "b: \(index)\n", createdBy: "ops", rolledBackFrom: nil)
        }
      }
      try await group.waitForAll()
    }
    let versions = try await store.configVersions()
    #expect(versions.map(\.version) == Array((1...13).reversed()))
    #expect(Set(versions.prefix(10).map(\.yaml)).count == 10)
  }

  @Test(arguments: Engine.allCases)
  func certificatesRegistrationsAndRenewals(_ engine: Engine) async throws {
    let stores = try await Self.stores(engine)
    let store = stores.first
    let now = Date(timeIntervalSince1970: 1_800_000_000.125)
    let notAfter = Date(timeIntervalSince1970: 1_800_086_400)
    try await store.recordCertificate(
      serial: "0a1b", spiffeID: "spiffe://mesh.test/svc/users", notAfter: notAfter,
      issuerSerial: "ff", now: now)
    let issued = try #require(try await stores.second.issuedCertificate(serial: "0a1b"))
    #expect(issued.spiffeID == "spiffe://mesh.test/svc/users" && issued.issuerSerial == "ff")
    #expect(issued.notAfter == notAfter && abs(issued.issuedAt.timeIntervalSince(now)) < 0.001)
    #expect(try await store.issuedCertificate(serial: "none") == nil)
    #expect(try await store.certificateCount() == 1)

    try await store.setRegistration(node: "b-node", endpoint: Data([2]), lease: .seconds(30))
    try await store.setRegistration(node: "a-node", endpoint: Data([1]), lease: .seconds(30))
    try await store.setRegistration(node: "b-node", endpoint: Data([3]), lease: .seconds(30))
    #expect(try await stores.second.registrations() == [Data([1]), Data([3])])
    try await store.setRegistration(node: "a-node", endpoint: nil, lease: .seconds(30))
    #expect(try await store.registrations() == [Data([3])])

    try await store.requestRenewal(of: "spiffe://mesh.test/svc/users", now: now)
    let renewals = try await stores.second.renewalRequests()
    #expect(renewals.count == 1)
    #expect(abs(renewals["spiffe://mesh.test/svc/users"]!.timeIntervalSince(now)) < 0.001)
  }

  @Test(arguments: Engine.allCases)
  func trustGenerationsFollowEachOther(_ engine: Engine) async throws {
    let stores = try await Self.stores(engine)
    let store = stores.first
    #expect(try await store.currentTrust() == nil)
    #expect(try await store.pendingIssuerKey() == nil)
    try await store.setPendingIssuerKey("PENDING KEY")
    #expect(try await store.pendingIssuerKey() == "PENDING KEY")
    #expect(
      try await store.storeTrust(bundle: "B1", issuer: "I1", issuerKey: "K1", reason: "init") == 1)
    #expect(
      try await store.storeTrust(bundle: "B2", issuer: "I2", issuerKey: "K2", reason: "rotate") == 2
    )
    let current = try #require(try await store.currentTrust())
    #expect(current.generation == 2 && current.bundle == "B2" && current.issuer == "I2")
    #expect(current.issuerKey == "K2" && current.reason == "rotate")
    #expect(try await store.trustGenerations().map(\.issuerKey) == ["K1", "K2"])
  }

  @Test func etcdHoldsNoPrivateKey() async throws {
    let stores = try await Self.stores(.etcd)
    try await stores.first.setPendingIssuerKey("-----BEGIN PRIVATE KEY-----\nPENDING")
    _ = try await stores.first.storeTrust(
      bundle: "B1", issuer: "I1", issuerKey: "-----BEGIN PRIVATE KEY-----\nK1", reason: "init")
    let client = try #require(stores.keep.last as? EtcdClient)
    let everything = try await client.list(prefix: "/")
    #expect(!everything.kvs.isEmpty)
    for kv in everything.kvs {
      #expect(!String(decoding: kv.value, as: UTF8.self).contains("PRIVATE KEY"))
    }
    // Another control plane sees the generation, and says it has no issuer of its own.
    await #expect(throws: NoIssuerOfItsOwn.self) { try await stores.second.currentTrust() }
  }

  /// Each control plane on etcd signs with an issuer of its own, under the generation in
  /// force: one installs the first generation, the others record their issuers.
  @Test func eachControlPlaneOnEtcdHasAnIssuerOfItsOwn() async throws {
    let stores = try await Self.stores(.etcd)
    let first = try #require(stores.first as? EtcdControlStore)
    let second = try #require(stores.second as? EtcdControlStore)
    async let one = first.storeFirstTrust(bundle: "B1", issuer: "IA", issuerKey: "KA", reason: "r")
    async let two = second.storeFirstTrust(
      bundle: "B1", issuer: "IB", issuerKey: "KB", reason: "r")
    let won = try await [one, two]
    #expect(won.filter { $0 }.count == 1, "\(won)")
    let (winner, other) = won[0] ? (first, second) : (second, first)
    await #expect(throws: NoIssuerOfItsOwn.self) { try await other.currentTrust() }
    try await other.recordIssuer(certificate: "IO", key: "KO")
    #expect(try await other.currentTrust()?.issuer == "IO")
    #expect(try await other.currentTrust()?.issuerKey == "KO")
    #expect(Set(try await winner.issuersInForce()) == [won[0] ? "IA" : "IB", "IO"])

    // A new generation from one (new roots, same issuer) is in force at both, each with its
    // own issuer.
    #expect(
      try await winner.storeTrust(
        bundle: "B2", issuer: won[0] ? "IA" : "IB", issuerKey: won[0] ? "KA" : "KB", reason: "roots"
      )
        == 2)
    let seen = try #require(try await other.currentTrust())
    #expect(seen.generation == 2 && seen.bundle == "B2" && seen.issuer == "IO")
    #expect(try await other.currentBundle() == "B2")
    #expect(
      try await first.storeFirstTrust(bundle: "B3", issuer: "I", issuerKey: "K", reason: "")
        == false)
  }

  /// What a follower of the store was handed, in order.
  final class Followed: Sendable {
    private let changes = Mutex<[StoreChange]>([])
    var all: [StoreChange] { changes.withLock { $0 } }
    func append(_ change: StoreChange) { changes.withLock { $0.append(change) } }

    /// Waits (at most `seconds`) until `condition` holds for what was handed on.
    func wait(
      seconds: Double = 30, _ condition: ([StoreChange]) -> Bool
    ) async throws -> [StoreChange] {
      let deadline = Date().addingTimeInterval(seconds)
      while !condition(all) {
        guard Date() < deadline else { return all }
        try await Task.sleep(for: .milliseconds(50))
      }
      return all
    }
  }

  static func follow(_ store: any ControlStore) -> (Followed, Task<Void, any Error>) {
    let followed = Followed()
    let task = Task { try await store.follow { followed.append($0) } }
    return (followed, task)
  }

  /// What one control plane writes, another following the store is handed once each, in the
  /// order it was written, after a first `.resync`.
  @Test func aFollowerIsHandedEveryChangeOnceInOrder() async throws {
    let stores = try await Self.stores(.etcd)
    let (followed, task) = Self.follow(stores.second)
    defer { task.cancel() }
    _ = try await followed.wait { $0.first == .resync }
    for index in 1...5 {
      _ = try await stores.first.storeConfig(
        yaml: "version: \(index)", createdBy: "test", rolledBackFrom: nil)
    }
    _ = try await stores.first.storeTrust(bundle: "B", issuer: "I", issuerKey: "K", reason: "r")
    let at = Date(timeIntervalSince1970: 1_800_000_000.5)
    try await stores.first.requestRenewal(of: "spiffe://mesh.test/svc/a", now: at)
    try await stores.first.setRegistration(node: "n1", endpoint: Data([1]), lease: .seconds(30))
    try await stores.first.setRegistration(node: "n1", endpoint: nil, lease: .zero)
    let all = try await followed.wait { $0.count >= 11 }
    let configs = all.compactMap { change -> Int64? in
      if case .config(let config) = change { return config.version } else { return nil }
    }
    #expect(configs == [1, 2, 3, 4, 5], "\(all)")
    #expect(
      Array(all.dropFirst(6))
        == [
          .trust(generation: 1), .issuers, .renewal(spiffeID: "spiffe://mesh.test/svc/a", at: at),
          .registration(node: "n1", endpoint: Data([1])), .registration(node: "n1", endpoint: nil),
        ], "\(all)")
    #expect(all.filter { $0 == .resync }.count == 1)
    // A token spent or a certificate recorded is nothing a follower pushes.
    _ = try await stores.first.createToken(for: "spiffe://mesh.test/svc/a", ttl: 60, now: Date())
    try await Task.sleep(for: .milliseconds(500))
    #expect(followed.all.count == all.count, "\(followed.all)")
  }

  /// A registration lives on an etcd lease: renewed, by its control plane or another it moved
  /// to, it stays; left alone, etcd deletes it, and control planes following the store see it go.
  @Test func etcdRegistrationsLiveOnLeases() async throws {
    let stores = try await Self.stores(.etcd)
    let (followed, task) = Self.follow(stores.second)
    defer { task.cancel() }
    // Long, because a loaded test run can starve this task for tens of seconds (the sync
    // integration tests hold the cooperative pool's threads).
    let lease = Duration.seconds(90)
    try await stores.first.setRegistration(node: "n1", endpoint: Data([7]), lease: lease)
    // Renewed every second for five: at the first control plane, then at the second (the
    // sidecar moved), then at the first again.
    var renewed = ContinuousClock.now
    var longestGap = Duration.zero
    for second in 1...5 {
      try await Task.sleep(for: .seconds(1))
      let store = second == 3 ? stores.second : stores.first
      try await store.renewRegistration(node: "n1", endpoint: Data([7]), lease: lease)
      longestGap = max(longestGap, ContinuousClock.now - renewed)
      renewed = .now
    }
    #expect(try await stores.second.registrations() == [Data([7])])
    // Renewed in time, it never lapsed (a run that starved the renewals past the lease is
    // told apart, not failed: etcd was right to let it lapse).
    if longestGap < lease - .seconds(2) {
      #expect(!followed.all.contains(.registration(node: "n1", endpoint: nil)))
    } else {
      print("renewals starved for \(longestGap): the lapse in between is not checked")
    }
    let all = try await followed.wait(seconds: 300) {
      $0.last == .registration(node: "n1", endpoint: nil)
    }
    let gone = ContinuousClock.now - renewed
    #expect(all.last == .registration(node: "n1", endpoint: nil), "\(all)")
    #expect(try await stores.first.registrations().isEmpty)
    // Its lease ran out after the last renewal, not before.
    #expect(gone > lease - .seconds(1), "withdrawn \(gone) after the last renewal")
  }

  /// The leader sweeps join tokens and certificate records a day past their expiry, and
  /// nothing younger; on etcd it also compacts the history it has seen grow old.
  @Test(arguments: Engine.allCases)
  func theSweepDeletesWhatIsPastUse(_ engine: Engine) async throws {
    let stores = try await Self.stores(engine, historyKept: .zero)
    let store = stores.first
    let now = Date()
    let (old, _) = try await store.createToken(
      for: "spiffe://mesh.test/svc/a", ttl: 600, now: now.addingTimeInterval(-3 * 86_400))
    let (fresh, _) = try await store.createToken(
      for: "spiffe://mesh.test/svc/a", ttl: 600, now: now.addingTimeInterval(-3_600))
    try await store.recordCertificate(
      serial: "01", spiffeID: "spiffe://mesh.test/svc/a",
      notAfter: now.addingTimeInterval(-2 * 86_400), issuerSerial: "ff", now: now)
    try await store.recordCertificate(
      serial: "02", spiffeID: "spiffe://mesh.test/svc/a",
      notAfter: now.addingTimeInterval(-3_600), issuerSerial: "ff", now: now)
    #expect(try await store.sweep(now: now) == 2)
    #expect(try await store.redeemToken(old, spend: false, now: now) == .failure(.unknown))
    #expect(try await store.redeemToken(fresh, spend: false, now: now) == .failure(.expired))
    #expect(try await store.issuedCertificate(serial: "01") == nil)
    #expect(try await store.issuedCertificate(serial: "02") != nil)
    #expect(try await store.sweep(now: now) == 0)

    guard engine == .etcd, let client = stores.keep.last as? EtcdClient else { return }
    // The second sweep compacted to the revision the first saw: a watch from the start of
    // history is refused.
    await #expect(throws: EtcdError.self) {
      try await client.watch(prefix: "/trellis/", from: 1) { _ in false }
    }
  }

  /// Of control planes on one etcd, one leads at a time (etcd's transaction on the leader
  /// key); when it steps down, another leads at once.
  @Test func oneControlPlaneLeadsAtATime() async throws {
    // A lease long enough that a test run starving these tasks (for tens of seconds, under
    // the sync integration tests) does not let it lapse; a handover well within it comes from
    // the revocation, not the lapse.
    let stores = try await Self.stores(.etcd, leaderLease: .seconds(120))
    final class Leading: Sendable {
      let names = Mutex<[String]>([])
      /// Every replica that ever started leading, in order.
      let ever = Mutex<[String]>([])
      func withLock<T>(_ body: (inout [String]) -> T) -> T { names.withLock { body(&$0) } }
    }
    let leading = Leading()
    func run(_ store: any ControlStore, _ name: String) -> Task<Void, any Error> {
      Task { [leading] in
        try await store.whileLeading {
          leading.withLock { $0.append(name) }
          leading.ever.withLock { $0.append(name) }
          defer { leading.withLock { $0.removeAll { $0 == name } } }
          try await Task.sleep(for: .seconds(3600))
        }
      }
    }
    let one = run(stores.first, "a")
    let two = run(stores.second, "b")
    defer {
      one.cancel()
      two.cancel()
    }
    var leaders: [String] = []
    for _ in 0..<40 {
      try await Task.sleep(for: .milliseconds(50))
      leaders = leading.withLock { $0 }
      #expect(leaders.count <= 1, "\(leaders)")
    }
    #expect(leading.ever.withLock { $0 }.count == 1, "\(leading.ever.withLock { $0 })")
    let first = try #require(leaders.first)
    let etcd = try #require(stores.first as? EtcdControlStore)
    #expect(try await etcd.leader() == first)
    (first == "a" ? one : two).cancel()
    let handedOver = ContinuousClock.now
    while leading.withLock({ $0 }) != [first == "a" ? "b" : "a"],
      ContinuousClock.now - handedOver < .seconds(90)
    {
      try await Task.sleep(for: .milliseconds(50))
    }
    #expect(leading.withLock { $0 } == [first == "a" ? "b" : "a"])
    // Stepping down revokes the lease: the other leads well within one lease (120 s).
    #expect(ContinuousClock.now - handedOver < .seconds(90))
  }
}
