import Foundation
import Synchronization
import TestSupport
import Testing

/// `control-plane --store etcd://…`: the control plane's state in a real etcd member, through
/// what an operator does (join tokens, certificates, config versions) and a `kill -9`.
@Suite struct EtcdStoreTests {
  /// Over TLS to etcd's client port, with a client certificate (etcd's `--client-cert-auth`).
  @Test func aControlPlaneKeepsItsStateInEtcd() throws {
    let etcd = try EtcdServer(tls: true)
    defer { etcd.stop() }
    let tls = try #require(etcd.tls)
    let mesh = try MeshFixture("etcd-store", services: ["users"])
    let data = mesh.directory.appendingPathComponent("data").path
    let options = [
      "--listen", "127.0.0.1:0", "--join", "127.0.0.1:0", "--certs", mesh.certs, "--data", data,
      "--store", etcd.url,
    ]
    // Options that cannot work are named before anything starts.
    for (extra, complaint) in [
      (["--etcd-cert", tls.clientCertificate], "need --etcd-cacert"),
      (["--etcd-cacert", tls.ca, "--etcd-cert", tls.clientCertificate], "needs its key"),
      (["--etcd-cacert", "/nonexistent/ca.pem"], "cannot read /nonexistent/ca.pem"),
    ] {
      let refused = try run(binary("control-plane"), options + extra)
      #expect(refused.status != 0 && refused.stderr.contains(complaint), "\(refused.stderr)")
    }
    func start() throws -> ServiceProcess {
      try ServiceProcess(
        binary("control-plane"),
        options + [
          "--etcd-cacert", tls.ca, "--etcd-cert", tls.clientCertificate, "--etcd-key",
          tls.clientKey,
        ], timeout: 60)
    }
    var plane = try start()
    defer { plane.stop() }
    func meshctl(_ arguments: [String]) throws -> ProcessResult {
      try run(
        binary("meshctl"), arguments + ["--control-plane", plane.address, "--certs", mesh.certs])
    }
    func request(_ tokenFile: String, name: String) throws -> ProcessResult {
      try run(
        binary("meshctl"),
        [
          "certs", "request", "--token-file", tokenFile, "--join",
          try logField(plane.log, "join_address"), "--bundle", "\(mesh.certs)/bundle.pem",
          "--out", mesh.directory.path, "--name", name,
        ])
    }
    #expect(plane.log.contains(etcd.url.replacingOccurrences(of: "etcd://", with: "")))

    let tokenFile = mesh.directory.appendingPathComponent("orders.token").path
    let created = try meshctl(["tokens", "create", "--service", "orders", "--out", tokenFile])
    #expect(created.status == 0, "\(created.stderr)")
    let first = try request(tokenFile, name: "orders")
    #expect(first.stdout.contains("issued spiffe://trellis.local/svc/orders"), "\(first.stderr)")
    let file = try mesh.write("mesh.yaml", "services:\n  users: {}\n")
    let applied = try meshctl(["apply", "-f", file])
    #expect(applied.stdout.contains("as version 1"), "\(applied.stdout)\(applied.stderr)")

    // Killed and started again: everything acknowledged is still there, in etcd.
    plane.kill()
    plane = try start()
    #expect(try meshctl(["get", "config"]).stdout == "services:\n  users: {}\n")
    let again = try request(tokenFile, name: "orders-again")
    #expect(again.stderr.contains("PERMISSION_DENIED: the join token has already been used"))
    try mesh.write("mesh.yaml", "services:\n  users: {}\n  orders: {}\n")
    #expect(try meshctl(["apply", "-f", file]).stdout.contains("as version 2"))

    // The state is in etcd, not beside the traces; the keys are on the control plane's disk.
    #expect(!FileManager.default.fileExists(atPath: "\(data)/control.sqlite"))
    let keys = try FileManager.default.contentsOfDirectory(atPath: "\(data)/keys")
    #expect(keys.contains { $0.hasPrefix("issuer-") && $0.hasSuffix(".key.pem") }, "\(keys)")

    // etcd gone: the control plane answers that its store does not, and meshctl says so
    // (not that the control plane cannot be reached).
    etcd.kill(0)
    let storeless = try meshctl(["history"])
    #expect(storeless.status != 0)
    #expect(
      storeless.stderr.contains("cannot reach its store: etcd: "), "\(storeless.stderr)")

    // A store option that names no etcd is refused before anything starts.
    let bad = try run(binary("control-plane"), ["--store", "etcd://nowhere", "--data", data])
    #expect(bad.status != 0 && bad.stderr.contains("--store"), "\(bad.stderr)")
  }

  /// Two control planes on one etcd serve one mesh. The second signs with an issuer of its own
  /// (its CSR signed by `meshctl certs sign-issuer`); a sidecar registered at one is called
  /// from a sidecar of the other; a config applied at one reaches the other's sidecars; a
  /// sidecar that goes is withdrawn at both once its lease runs out in etcd.
  @Test func twoControlPlanesOnOneEtcdServeOneMesh() throws {
    let etcd = try EtcdServer()
    defer { etcd.stop() }
    let mesh = try MeshFixture("replicas", services: [])
    func start(_ name: String) throws -> ServiceProcess {
      try ServiceProcess(
        binary("control-plane"),
        [
          "--listen", "127.0.0.1:0", "--join", "127.0.0.1:0", "--certs", mesh.certs,
          "--data", mesh.directory.appendingPathComponent(name).path, "--store", etcd.url,
          "--replica", name,
        ], timeout: 90)
    }
    let a = try start("a")
    defer { a.stop() }
    // The operator signs the second one's issuer as soon as it asks.
    let b = try withOperatorSigning(
      csr: mesh.directory.appendingPathComponent("b/issuer.csr").path,
      out: mesh.directory.appendingPathComponent("b/issuer.pem").path, certs: mesh.certs
    ) { try start("b") }
    defer { b.stop() }
    #expect(b.log.contains("no issuer of its own yet"), "\(b.log)")
    #expect(b.log.contains("issuer installed"), "\(b.log)")
    let keys = try FileManager.default.contentsOfDirectory(
      atPath: mesh.directory.appendingPathComponent("b/keys").path)
    #expect(keys.contains { $0.hasPrefix("issuer-") }, "\(keys)")

    let users = try startService(
      "user-service", database: mesh.directory.appendingPathComponent("users.sqlite"))
    defer { users.stop() }
    let registered = try mesh.joiningSidecar(
      "users", app: users.address, plane: b, extra: "register: {lease: 4s}\n")
    let client = try mesh.joiningSidecar("orders", app: "127.0.0.1:1", plane: a)
    defer {
      registered.process.stop()
      client.process.stop()
    }
    func issuer(_ sidecar: RunningSidecar) throws -> String {
      let page = try sidecar.adminPage("/certs").body
      let object = try JSONSerialization.jsonObject(with: Data(page.utf8)) as? [String: Any]
      return object?["issuer"] as? String ?? ""
    }
    // Each control plane signed with its own issuer.
    #expect(try issuer(registered) != issuer(client), "\((try? issuer(registered)) ?? "")")

    // The client, at the first control plane, calls users known only by the registration made
    // at the second.
    func callUsers() throws -> ProcessResult {
      try rpc([
        "call", "--plaintext", "--authority", "users", client.outbound,
        "shop.v1.UserService/ListUsers", "-d", "{}",
      ])
    }
    var called = try callUsers()
    let deadline = Date().addingTimeInterval(30)
    while called.status != 0, Date() < deadline {
      Thread.sleep(forTimeInterval: 0.25)
      called = try callUsers()
    }
    #expect(called.status == 0, "\(called.stdout)\(called.stderr)")

    // A config applied at the second reaches the client at the first.
    let file = try mesh.write("mesh.yaml", "services:\n  users: {loadBalancing: round-robin}\n")
    #expect(try mesh.meshctl(["apply", "-f", file], plane: b).contains("as version 1"))
    func clientVersion() throws -> Int? {
      let text = try mesh.meshctl(["status", "-o", "json"], plane: a)
      let document = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]
      let rows = document?["sidecars"] as? [[String: Any]] ?? []
      return rows.first { ($0["node"] as? String ?? "").hasPrefix("orders") }?["version"] as? Int
    }
    #expect(
      try waitFor(seconds: 30) { try clientVersion() == 1 },
      "\(((try? clientVersion()) ?? nil) ?? -1)")

    // Gone without a word: etcd withdraws the registration when its lease runs out, and so
    // does every control plane.
    registered.process.kill()
    #expect(
      try waitFor(seconds: 30) {
        !(try mesh.meshctl(["get", "endpoints", "-o", "json"], plane: a)).contains("registered")
      }, "\((try? mesh.meshctl(["get", "endpoints", "-o", "json"], plane: a)) ?? "")")

    // Both are listed at either, one of them leading (it sweeps the store); killed, the other
    // leads within one lease (10 s).
    func replicas(at plane: ServiceProcess) throws -> [[String: Any]] {
      let text = try mesh.meshctl(["get", "replicas", "-o", "json"], plane: plane)
      return try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [[String: Any]] ?? []
    }
    let listed = try replicas(at: b)
    #expect(listed.map { $0["name"] as? String } == ["a", "b"], "\(listed)")
    #expect(listed.map { $0["address"] as? String } == [a.address, b.address], "\(listed)")
    #expect(listed.filter { $0["leader"] as? Bool == true }.count == 1, "\(listed)")
    #expect(Set(listed.compactMap { $0["issuer"] as? String }).count == 2, "\(listed)")
    let (leader, other) = a.log.contains("leading: sweeping") ? (a, b) : (b, a)
    #expect(leader.log.contains("leading: sweeping"), "\(leader.log)")
    #expect(!other.log.contains("leading: sweeping"), "\(other.log)")
    leader.kill()
    let killed = Date()
    #expect(try waitFor(seconds: 30) { other.log.contains("leading: sweeping") })
    print(
      "leader killed: the other control plane leads after \(Date().timeIntervalSince(killed)) s")
    // The dead one leaves the list when its lease runs out.
    #expect(try waitFor(seconds: 30) { try replicas(at: other).count == 1 })
    #expect(try replicas(at: other).first?["leader"] as? Bool == true)
  }

  /// A replica ends each config stream after its age, and one beyond its limit of streams
  /// sends the sidecar away: the sidecar subscribes again at another replica.
  @Test func streamsAgeOutAndALimitSendsSidecarsElsewhere() throws {
    let etcd = try EtcdServer()
    defer { etcd.stop() }
    let mesh = try MeshFixture("stream-age", services: [])
    func start(_ name: String, _ extra: [String]) throws -> ServiceProcess {
      let data = mesh.directory.appendingPathComponent(name).path
      let launch = {
        try ServiceProcess(
          binary("control-plane"),
          [
            "--listen", "127.0.0.1:0", "--join", "127.0.0.1:0", "--certs", mesh.certs,
            "--data", data, "--store", etcd.url, "--replica", name,
          ] + extra, timeout: 90)
      }
      guard name != "a" else { return try launch() }
      return try withOperatorSigning(
        csr: "\(data)/issuer.csr", out: "\(data)/issuer.pem", certs: mesh.certs, launch)
    }
    // a ends its streams every 2 s or so; b takes no more than one.
    let a = try start("a", ["--config-stream-age", "2s"])
    defer { a.stop() }
    let b = try start("b", ["--max-config-streams", "1"])
    defer { b.stop() }
    let replicas = (
      addresses: [a.address, b.address],
      joins: try [a, b].map { try logField($0.log, "join_address") }
    )
    let one = try mesh.joiningSidecar(
      "users", app: "127.0.0.1:1", plane: a, instance: "one", replicas: replicas)
    let two = try mesh.joiningSidecar(
      "users", app: "127.0.0.1:1", plane: a, instance: "two", replicas: replicas)
    defer {
      one.process.stop()
      two.process.stop()
    }
    // Sent away by a's age, a sidecar tries b; b takes one, and sends the other back to a.
    #expect(
      try waitFor(seconds: 30) {
        [one, two].contains {
          $0.process.log.contains("the control plane replica ended the config stream")
        }
      }, "\(one.process.log)")
    #expect(
      try waitFor(seconds: 30) {
        [one, two].contains { $0.process.log.contains("subscribe at another replica") }
      }, "\(one.process.log)\n\(two.process.log)")
  }
}
