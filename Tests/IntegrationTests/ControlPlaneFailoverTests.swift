import Foundation
import TestSupport
import Testing

/// Three control plane replicas on a three-member etcd cluster, and sidecars that list all
/// three: the replica they use is killed under continuous calls, and none fails.
@Suite struct ControlPlaneFailoverTests {
  /// Both sidecars start on replica a (b and c are not up yet, so they skip them); a is then
  /// killed (`kill -9`) under load: no call fails, both resubscribe at b or c within 20 s, and
  /// a config applied there reaches them.
  @Test func killingTheReplicaInUseFailsNoCall() throws {
    let cluster = try ReplicaCluster("cp-failover")
    defer { cluster.stop() }
    let mesh = cluster.mesh
    try cluster.start("a")
    let replicas = cluster.every

    let pair = try cluster.echoPair(server: replicas, client: replicas)
    defer { pair.stop() }
    let (client, port) = (pair.client, pair.port)
    try cluster.start("b")
    try cluster.start("c")
    let connected = { (plane: ServiceProcess) in cluster.connected(at: plane) }
    #expect(
      try waitFor(seconds: 30) {
        connected(cluster.planes["a"]!) == ["echo": "v1@a", "client": "v1@a"]
      },
      "\(connected(cluster.planes["a"]!))")

    let load = try BackgroundLoad(through: client.outbound, seconds: 12)
    Thread.sleep(forTimeInterval: 2)
    cluster.planes["a"]!.kill()
    let killed = Date()
    // Both move to b or c, within 20 s.
    var moved = false
    while Date().timeIntervalSince(killed) < 20 {
      let elsewhere = connected(cluster.planes["b"]!)
      if ["echo", "client"].allSatisfy({ ["v1@b", "v1@c"].contains(elsewhere[$0]) }) {
        moved = true
        break
      }
      Thread.sleep(forTimeInterval: 0.25)
    }
    #expect(moved, "\(client.process.log)")
    print("replica killed: both sidecars resubscribed after \(Date().timeIntervalSince(killed)) s")
    let summary = try load.finish()
    #expect(summary["failed"] as? Int == 0, "\(summary)")
    #expect((summary["ok"] as? Int ?? 0) > 50, "\(summary)")
    #expect(client.process.log.contains("moving to another control plane replica"))

    // A config applied at b reaches both, wherever they are.
    let v2 = try mesh.write(
      "v2.yaml",
      "services:\n  echo:\n    loadBalancing: round-robin\n    endpoints:\n      - address: 127.0.0.1:\(port)\n"
    )
    #expect(
      try mesh.meshctl(["apply", "-f", v2], plane: cluster.planes["b"]!).contains("as version 2"))
    #expect(
      try waitFor(seconds: 20) {
        ["echo", "client"].allSatisfy {
          ["v2@b", "v2@c"].contains(connected(cluster.planes["c"]!)[$0])
        }
      })

    // a back; b and c hung (SIGSTOP): their connections stay open but answer nothing, and the
    // sidecars find it out by their pings and move to a.
    try cluster.start("a")
    kill(cluster.planes["b"]!.pid, SIGSTOP)
    kill(cluster.planes["c"]!.pid, SIGSTOP)
    defer {
      kill(cluster.planes["b"]!.pid, SIGCONT)
      kill(cluster.planes["c"]!.pid, SIGCONT)
    }
    let stopped = Date()
    #expect(
      try waitFor(seconds: 90) {
        connected(cluster.planes["a"]!) == ["echo": "v2@a", "client": "v2@a"]
      },
      "\(connected(cluster.planes["a"]!))")
    print("replicas hung: both sidecars moved after \(Date().timeIntervalSince(stopped)) s")
    #expect(try call(client.outbound) == "OK")
  }

  func call(_ outbound: String) throws -> String {
    let script = PythonInteropTests.python.appendingPathComponent("transparency.py").path
    let result = try run(try resolve("python3"), [script, "call", outbound, "Unary", "hi"])
    return (try jsonObjects(result.stdout).first?["code"] as? String) ?? result.stderr
  }
}

extension ControlPlaneFailoverTests {
  /// A root rotation run at replica a, while the sidecars use b and c (each its own): every
  /// replica switches to an issuer of its own, and no call fails. Then the etcd leader is
  /// killed: an apply after the election succeeds, and no version is lost or repeated.
  @Test func aRootRotationAcrossReplicasAndAnEtcdLeaderKillFailNoCall() throws {
    let cluster = try ReplicaCluster("cp-rotation")
    defer { cluster.stop() }
    let mesh = cluster.mesh
    for name in cluster.names { try cluster.start(name) }
    let a = cluster.planes["a"]!

    let pair = try cluster.echoPair(server: cluster.only("b"), client: cluster.only("c"))
    defer { pair.stop() }
    let (client, port) = (pair.client, pair.port)
    #expect(
      try waitFor(seconds: 30) { cluster.connected(at: a) == ["echo": "v1@b", "client": "v1@c"] },
      "\(cluster.connected(at: a))")
    let issuersBefore = try certificateStatus(mesh, at: a)["issuers"] as? [String] ?? []
    #expect(issuersBefore.count == 3, "\(issuersBefore)")

    let load = try BackgroundLoad(through: client.outbound, seconds: 40)
    Thread.sleep(forTimeInterval: 2)
    let started = Date()
    let rotate = try mesh.meshctlResult(
      ["certs", "rotate-ca", "--root", "--timeout", "30s"], plane: a)
    #expect(rotate.status == 0, "\(rotate.stdout)\(rotate.stderr)")
    print("root rotation across 3 replicas: \(Date().timeIntervalSince(started)) s")
    print(rotate.stdout)
    #expect(rotate.stdout.contains("3 control plane replicas: a, b, c"), "\(rotate.stdout)")
    for name in cluster.names {
      #expect(rotate.stdout.contains("replica \(name): issuer"), "\(rotate.stdout)")
    }

    // Every replica signs with a new issuer of its own, under the new root only, and each
    // sidecar serves a certificate from one of them.
    let status = try certificateStatus(mesh, at: a)
    let issuers = status["issuers"] as? [String] ?? []
    let roots = status["roots"] as? [String] ?? []
    #expect(Set(issuers).count == 3 && Set(issuers).isDisjoint(with: issuersBefore), "\(status)")
    #expect(roots.count == 1, "\(status)")
    let sidecars = status["sidecars"] as? [[String: Any]] ?? []
    #expect(sidecars.count == 2, "\(status)")
    for sidecar in sidecars {
      #expect(issuers.contains(sidecar["issuer"] as? String ?? ""), "\(sidecar)")
      #expect(sidecar["root"] as? String == roots.first, "\(sidecar)")
    }

    // The etcd leader killed under the same load: an apply after the election succeeds.
    let leader = try #require(cluster.etcd.leader(), "\(cluster.etcd.log)")
    cluster.etcd.kill(leader)
    let killed = Date()
    let v2 = try mesh.write(
      "v2.yaml",
      "services:\n  echo:\n    loadBalancing: round-robin\n    endpoints:\n      - address: 127.0.0.1:\(port)\n"
    )
    var applied = ""
    while Date().timeIntervalSince(killed) < 30 {
      let result = try mesh.meshctlResult(["apply", "-f", v2], plane: a)
      applied = result.stdout + result.stderr
      if result.status == 0 { break }
      Thread.sleep(forTimeInterval: 0.5)
    }
    #expect(applied.contains("as version 2"), "\(applied)\n\(a.log.suffix(3000))")
    print("etcd leader killed: applied after \(Date().timeIntervalSince(killed)) s")
    #expect(
      try waitFor(seconds: 20) { cluster.connected(at: a) == ["echo": "v2@b", "client": "v2@c"] },
      "\(cluster.connected(at: a))")
    // Every replica lists versions 1 and 2, once each.
    for name in cluster.names {
      let history = try mesh.meshctl(["history", "-o", "json"], plane: cluster.planes[name]!)
      let versions =
        (try JSONSerialization.jsonObject(with: Data(history.utf8)) as? [[String: Any]] ?? [])
        .compactMap { $0["version"] as? Int }
      #expect(versions == [2, 1], "replica \(name): \(history)")
    }

    // The calls went on through all of it.
    #expect(load.process.isRunning)
    let summary = try load.finish()
    #expect(summary["failed"] as? Int == 0, "\(summary)")
    #expect((summary["ok"] as? Int ?? 0) > 100, "\(summary)")
  }

  /// `meshctl certs status -o json` at `plane`, merged over every replica.
  func certificateStatus(_ mesh: MeshFixture, at plane: ServiceProcess) throws -> [String: Any] {
    let text = try mesh.meshctl(["certs", "status", "-o", "json"], plane: plane)
    return try #require(
      try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any], "\(text)")
  }
}

/// Control plane replicas a, b and c on a three-member etcd cluster, for one test: a starts
/// on the CA's issuer, b and c each on an issuer of its own that the operator signs.
final class ReplicaCluster {
  let etcd: EtcdServer
  let mesh: MeshFixture
  let names = ["a", "b", "c"]
  let ports: [String: (listen: String, join: String)]
  private(set) var planes: [String: ServiceProcess] = [:]

  init(_ name: String) throws {
    etcd = try EtcdServer(name: "etcd-\(name)", members: 3)
    mesh = try MeshFixture(name, services: [])
    ports = try Dictionary(
      uniqueKeysWithValues: names.map {
        ($0, (listen: try freeLoopbackPort(), join: try freeLoopbackPort()))
      })
  }

  /// Starts replica `name` (again, after a kill) on its data folder.
  func start(_ name: String) throws {
    let data = mesh.directory.appendingPathComponent(name).path
    let launch = { [self] in
      try ServiceProcess(
        binary("control-plane"),
        [
          "--listen", "127.0.0.1:\(ports[name]!.listen)", "--join",
          "127.0.0.1:\(ports[name]!.join)", "--certs", mesh.certs, "--data", data, "--store",
          etcd.url, "--replica", name,
        ], timeout: 90)
    }
    planes[name] =
      name == "a"
      ? try launch()
      : try withOperatorSigning(
        csr: "\(data)/issuer.csr", out: "\(data)/issuer.pem", certs: mesh.certs, launch)
  }

  /// The echo app, its sidecar (listing `server`) on a port of its own, and a client's sidecar
  /// (listing `client`); joined through replica a, which applies version 1: echo's endpoint.
  func echoPair(
    server: (addresses: [String], joins: [String]), client: (addresses: [String], joins: [String])
  ) throws -> EchoPair {
    let a = planes["a"]!
    let app = try ServiceProcess(
      try resolve("python3"),
      [PythonInteropTests.python.appendingPathComponent("transparency.py").path, "serve"])
    let port = try freeLoopbackPort()
    let echo = try mesh.joiningSidecar(
      "echo", app: app.address, plane: a, inbound: "127.0.0.1:\(port)", replicas: server)
    let caller = try mesh.joiningSidecar(
      "client", app: "127.0.0.1:1", plane: a, replicas: client)
    let pair = EchoPair(app: app, server: echo, client: caller, port: port)
    let v1 = try mesh.write(
      "v1.yaml", "services:\n  echo:\n    endpoints:\n      - address: 127.0.0.1:\(port)\n")
    guard try mesh.meshctl(["apply", "-f", v1], plane: a).contains("as version 1") else {
      pair.stop()
      throw HarnessError("version 1 was not applied")
    }
    return pair
  }

  struct EchoPair {
    let app: ServiceProcess
    let server: RunningSidecar
    let client: RunningSidecar
    let port: String

    func stop() {
      client.process.stop()
      server.process.stop()
      app.stop()
    }
  }

  /// Every replica's API and join listener, as a sidecar lists them.
  var every: (addresses: [String], joins: [String]) {
    (
      names.map { "127.0.0.1:\(ports[$0]!.listen)" }, names.map { "127.0.0.1:\(ports[$0]!.join)" }
    )
  }

  /// Replica `name` alone, as a sidecar lists it.
  func only(_ name: String) -> (addresses: [String], joins: [String]) {
    (["127.0.0.1:\(ports[name]!.listen)"], ["127.0.0.1:\(ports[name]!.join)"])
  }

  /// The sidecars connected to one of the replicas (as `meshctl status` at `plane` gathers
  /// them from every replica): the version each runs and the replica it uses.
  func connected(at plane: ServiceProcess) -> [String: String] {
    guard let text = try? mesh.meshctl(["status", "-o", "json"], plane: plane),
      let document = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]
    else { return [:] }
    var nodes: [String: String] = [:]
    for row in document["sidecars"] as? [[String: Any]] ?? []
    where row["connected"] as? Bool == true {
      let name = (row["node"] as? String ?? "").components(separatedBy: "@")[0]
      nodes[name] = "v\(row["version"] as? Int ?? 0)@\(row["replica"] as? String ?? "")"
    }
    return nodes
  }

  func stop() {
    for plane in planes.values {
      kill(plane.pid, SIGCONT)
      plane.stop()
    }
    etcd.stop()
  }
}
