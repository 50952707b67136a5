import EtcdAPI
import Foundation
import TestSupport
import Testing

/// Our declarations of etcd's v3 API against a real etcd 3.4: every call the store makes, so a
/// wrong name or field number shows here.
@Suite struct EtcdClientTests {
  /// A running cluster and a client of every member, ready (etcd answers Status).
  static func started(
    _ name: String = "etcd-test", members: Int = 1
  ) async throws -> (EtcdServer, EtcdClient) {
    let server = try EtcdServer(name: name, members: members)
    let client = try EtcdClient(endpoints: EtcdClient.endpoints(parsing: server.url))
    Task { try await client.run() }
    do {
      try await client.waitUntilReachable(timeout: .seconds(60))
    } catch {
      throw HarnessError("\(error)\n\(server.log)")
    }
    return (server, client)
  }

  @Test func storeOptionsNameTheirMistake() throws {
    #expect(
      try EtcdClient.endpoints(parsing: "etcd://10.0.0.1:2379,10.0.0.2:2379")
        == [.init(host: "10.0.0.1", port: 2379), .init(host: "10.0.0.2", port: 2379)])
    for bad in ["http://a:1", "etcd://", "etcd://a", "etcd://a:0", "etcd://a:1,", "etcd://:1"] {
      #expect(throws: EtcdError.self, "\(bad)") { try EtcdClient.endpoints(parsing: bad) }
    }
    #expect(EtcdClient.rangeEnd(ofPrefix: Data("a/".utf8)) == Data("a0".utf8))
    #expect(EtcdClient.rangeEnd(ofPrefix: Data([0x61, 0xff])) == Data([0x62]))
    #expect(EtcdClient.rangeEnd(ofPrefix: Data([0xff])) == Data([0]))
  }

  /// A client of three members goes on with the two left when the first one in its list dies.
  @Test func aMemberDownLeavesTheOthersServing() async throws {
    let (server, client) = try await Self.started("etcd-member-down", members: 3)
    defer {
      client.close()
      server.stop()
    }
    _ = try await client.put("/t/before", Data("1".utf8))
    server.kill(0)
    // An election may be under way (the first member may have led): a few seconds, longer on
    // a machine busy with other tests' clusters.
    let deadline = ContinuousClock.now + .seconds(90)
    var written: Int64?
    var lastError = ""
    while written == nil, ContinuousClock.now < deadline {
      do {
        written = try await client.put("/t/after", Data("2".utf8))
      } catch {
        lastError = "\(error)"
        try await Task.sleep(for: .milliseconds(250))
      }
    }
    #expect(written != nil, "\(lastError)")
    #expect(try await client.get("/t/before")?.value == Data("1".utf8))
  }

  /// A member that speaks TLS and wants a client certificate serves a client with one from
  /// its CA, and no other.
  @Test func tlsToTheClientPort() async throws {
    let server = try EtcdServer(name: "etcd-tls", tls: true)
    defer { server.stop() }
    let files = try #require(server.tls)
    let endpoints = try EtcdClient.endpoints(parsing: server.url)
    func client(_ tls: EtcdClient.TLS?) throws -> EtcdClient {
      let client = try EtcdClient(endpoints: endpoints, tls: tls)
      Task { try await client.run() }
      return client
    }
    let trusted = try client(
      .init(caFile: files.ca, certificateFile: files.clientCertificate, keyFile: files.clientKey))
    defer { trusted.close() }
    try await trusted.waitUntilReachable(timeout: .seconds(60))
    _ = try await trusted.put("/t/tls", Data("1".utf8))
    #expect(try await trusted.get("/t/tls")?.value == Data("1".utf8))

    for refused in [
      nil,  // plain text
      try EtcdClient.TLS(caFile: files.ca),  // no client certificate
      try EtcdClient.TLS(
        caFile: files.ca, certificateFile: files.strangerCertificate, keyFile: files.strangerKey),
      // A member whose certificate is not from the CA given.
      try EtcdClient.TLS(
        caFile: files.strangerCertificate, certificateFile: files.clientCertificate,
        keyFile: files.clientKey),
    ] {
      let other = try client(refused)
      defer { other.close() }
      await #expect(throws: (any Error).self, "\(String(describing: refused))") {
        _ = try await other.get("/t/tls")
      }
    }
    #expect(throws: EtcdError.self) {
      try EtcdClient.TLS(caFile: files.ca, certificateFile: files.clientCertificate)
    }
  }

  /// A member that answers nothing (stopped, as a host cut off: its connections stay open)
  /// costs a read about 2 s (it is sent to another member then), never a hang; pings find it
  /// out within 9 s, and from then on calls go to the others. Connections left idle are kept
  /// (etcd closes a connection pinged with no stream open, which would lose calls).
  @Test func aHungMemberDelaysAReadButDoesNotHoldIt() async throws {
    let (server, client) = try await Self.started("etcd-member-hung", members: 3)
    defer {
      client.close()
      server.stop()
    }
    _ = try await client.put("/t/key", Data("1".utf8))
    let deadline = ContinuousClock.now + .seconds(30)
    while client.membersUp != [true, true, true], ContinuousClock.now < deadline {
      try await Task.sleep(for: .milliseconds(100))
    }
    #expect(client.membersUp == [true, true, true])
    // Idle for three pings and more: etcd would have closed a connection pinged without a
    // stream open by now.
    try await Task.sleep(for: .seconds(20))
    #expect(client.membersConnected == [1, 1, 1], "a member's connection was made again")
    #expect(client.membersUp == [true, true, true])

    // A follower: the other two keep their quorum.
    let follower = (server.leader().map { ($0 + 1) % 3 }) ?? 0
    server.pause(follower)
    defer { server.resume(follower) }
    var slowest = Duration.zero
    for _ in 0..<6 {
      let start = ContinuousClock.now
      #expect(try await client.get("/t/key")?.value == Data("1".utf8))
      slowest = max(slowest, ContinuousClock.now - start)
    }
    print("reads with a member hung: the slowest took \(slowest)")
    #expect(slowest < .seconds(6), "a read waited for the hung member")

    let hung = ContinuousClock.now
    while client.membersUp[follower], ContinuousClock.now - hung < .seconds(30) {
      try await Task.sleep(for: .milliseconds(100))
    }
    print("the hung member was found out after \(ContinuousClock.now - hung)")
    #expect(!client.membersUp[follower])
    for index in 0..<6 {
      let start = ContinuousClock.now
      _ = try await client.put("/t/key", Data("\(index)".utf8))
      #expect(ContinuousClock.now - start < .seconds(2), "a write went to the hung member")
    }
  }

  /// Reads and writes at once from many tasks, spread over three members: none fails. (etcd
  /// pings a connection once per round trip while calls flow; answered by the HTTP/2 handler,
  /// its flood limit closed the connection within seconds — see `PeerPingAnswerer`.)
  @Test func concurrentReadsAndWritesOverThreeMembers() async throws {
    let (server, client) = try await Self.started("etcd-concurrent", members: 3)
    defer {
      client.close()
      server.stop()
    }
    let failures = try await withThrowingTaskGroup(of: [String].self) { group in
      for task in 0..<32 {
        group.addTask {
          var failures: [String] = []
          for round in 0..<100 {
            do {
              if round % 2 == 0 {
                _ = try await client.put("/t/\(task)", Data("\(round)".utf8))
              } else {
                _ = try await client.list(prefix: "/t/")
              }
            } catch {
              failures.append("\(error)")
            }
          }
          return failures
        }
      }
      return try await group.reduce(into: []) { $0 += $1 }
    }
    #expect(failures.isEmpty, "\(failures.count) calls failed: \(Set(failures))")
  }

  @Test func keysRevisionsAndTransactions() async throws {
    let (server, client) = try await Self.started()
    defer {
      client.close()
      server.stop()
    }
    let first = try await client.put("/t/a", Data("1".utf8))
    let second = try await client.put("/t/b", Data("2".utf8))
    try await client.put("/u/c", Data("3".utf8))
    #expect(second == first + 1)
    let a = try #require(try await client.get("/t/a"))
    #expect(a.value == Data("1".utf8) && a.createRevision == first && a.version == 1)
    #expect(try await client.get("/t/none") == nil)
    let listed = try await client.list(prefix: "/t/")
    #expect(listed.kvs.map { String(decoding: $0.key, as: UTF8.self) } == ["/t/a", "/t/b"])
    #expect(listed.header.revision == second + 1 && listed.count == 2)

    // A create-if-absent, as two replicas racing for one key would do: one wins.
    func createIfAbsent(_ value: String) -> Etcdserverpb_TxnRequest {
      var compare = Etcdserverpb_Compare()
      compare.key = Data("/t/token".utf8)
      compare.target = .create
      compare.result = .equal
      compare.createRevision = 0
      var put = Etcdserverpb_RequestOp()
      put.requestPut.key = Data("/t/token".utf8)
      put.requestPut.value = Data(value.utf8)
      var read = Etcdserverpb_RequestOp()
      read.requestRange.key = Data("/t/token".utf8)
      var txn = Etcdserverpb_TxnRequest()
      txn.compare = [compare]
      txn.success = [put]
      txn.failure = [read]
      return txn
    }
    let won = try await client.txn(createIfAbsent("x"))
    let lost = try await client.txn(createIfAbsent("y"))
    #expect(won.succeeded && !lost.succeeded)
    #expect(lost.responses.first?.responseRange.kvs.first?.value == Data("x".utf8))

    #expect(try await client.delete("/t/", prefix: true) == 3)
    #expect(try await client.list(prefix: "/t/").kvs.isEmpty)
    let status = try await client.status()
    #expect(status.version.hasPrefix("3.") && status.leader != 0 && status.dbSize > 0)
    let members = try await client.members()
    #expect(
      members.count == 1 && members[0].clientUrls == ["http://127.0.0.1:\(server.clientPort)"])
  }

  @Test func leasesCarryTheirKeysAway() async throws {
    let (server, client) = try await Self.started()
    defer {
      client.close()
      server.stop()
    }
    // An hour: a loaded test run can hold an async test back for minutes (a CI run held this
    // one past a 60 s lease between the grant and the put); only the revocation ends it.
    let lease = try await client.grantLease(ttl: 3600)
    try await client.put("/lease/k", Data("v".utf8), lease: lease)
    #expect(try await client.get("/lease/k")?.lease == lease)
    #expect(try await client.keepAlive(lease) == 3600)
    try await client.revokeLease(lease)
    #expect(try await client.get("/lease/k") == nil)
    #expect(try await client.keepAlive(lease) == nil, "a revoked lease is not renewed")
  }

  @Test func watchesResumeFromARevisionUntilItIsCompacted() async throws {
    let (server, client) = try await Self.started()
    defer {
      client.close()
      server.stop()
    }
    let start = try await client.put("/w/a", Data("1".utf8))
    try await client.put("/w/b", Data("2".utf8))
    try await client.delete("/w/a")
    // From a past revision: every change since, in order, none twice.
    let seen = Collected()
    try await client.watch(prefix: "/w/", from: start) { response in
      await seen.add(
        response.events.map { "\($0.type) \(String(decoding: $0.kv.key, as: UTF8.self))" })
      return await seen.count < 3
    }
    #expect(await seen.all == ["put /w/a", "put /w/b", "delete /w/a"])
    // Compacted past the start: the watch is refused, naming the oldest revision kept.
    let now = try await client.put("/w/c", Data("3".utf8))
    try await client.compact(revision: now)
    await #expect(throws: EtcdError.compacted(oldest: now)) {
      try await client.watch(prefix: "/w/", from: start) { _ in true }
    }
  }

  actor Collected {
    private(set) var all: [String] = []
    var count: Int { all.count }
    func add(_ items: [String]) { all += items }
  }
}
