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
    let etcd = try EtcdServer(name: "etcd-failover", members: 3)
    defer { etcd.stop() }
    let mesh = try MeshFixture("cp-failover", services: [])
    let names = ["a", "b", "c"]
    let ports = try Dictionary(
      uniqueKeysWithValues: names.map {
        ($0, (listen: try freeLoopbackPort(), join: try freeLoopbackPort()))
      })
    func start(_ name: String) throws -> ServiceProcess {
      let data = mesh.directory.appendingPathComponent(name).path
      let launch = {
        try ServiceProcess(
          binary("control-plane"),
          [
            "--listen", "127.0.0.1:\(ports[name]!.listen)", "--join",
            "127.0.0.1:\(ports[name]!.join)", "--certs", mesh.certs, "--data", data, "--store",
            etcd.url, "--replica", name,
          ], timeout: 90)
      }
      guard name != "a" else { return try launch() }
      return try withOperatorSigning(
        csr: "\(data)/issuer.csr", out: "\(data)/issuer.pem", certs: mesh.certs, launch)
    }
    var planes = ["a": try start("a")]
    defer { for plane in planes.values { plane.stop() } }
    let replicas = (
      addresses: names.map { "127.0.0.1:\(ports[$0]!.listen)" },
      joins: names.map { "127.0.0.1:\(ports[$0]!.join)" }
    )

    let app = try ServiceProcess(
      try resolve("python3"),
      [PythonInteropTests.python.appendingPathComponent("transparency.py").path, "serve"])
    defer { app.stop() }
    let port = try freeLoopbackPort()
    let server = try mesh.joiningSidecar(
      "echo", app: app.address, plane: planes["a"]!, inbound: "127.0.0.1:\(port)",
      replicas: replicas)
    let client = try mesh.joiningSidecar(
      "client", app: "127.0.0.1:1", plane: planes["a"]!, replicas: replicas)
    defer {
      client.process.stop()
      server.process.stop()
    }
    let v1 = try mesh.write(
      "v1.yaml", "services:\n  echo:\n    endpoints:\n      - address: 127.0.0.1:\(port)\n")
    #expect(try mesh.meshctl(["apply", "-f", v1], plane: planes["a"]!).contains("as version 1"))
    planes["b"] = try start("b")
    planes["c"] = try start("c")

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
    #expect(
      try waitFor(seconds: 30) {
        connected(at: planes["a"]!) == ["echo": "v1@a", "client": "v1@a"]
      },
      "\(connected(at: planes["a"]!))")

    let load = try BackgroundLoad(through: client.outbound, seconds: 12)
    Thread.sleep(forTimeInterval: 2)
    planes["a"]!.kill()
    let killed = Date()
    // Both move to b or c, within 20 s.
    var moved = false
    while Date().timeIntervalSince(killed) < 20 {
      let elsewhere = connected(at: planes["b"]!)
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
    #expect(try mesh.meshctl(["apply", "-f", v2], plane: planes["b"]!).contains("as version 2"))
    #expect(
      try waitFor(seconds: 20) {
        ["echo", "client"].allSatisfy {
          ["v2@b", "v2@c"].contains(connected(at: planes["c"]!)[$0])
        }
      })

    // a back; b and c hung (SIGSTOP): their connections stay open but answer nothing, and the
    // sidecars find it out by their pings and move to a.
    planes["a"] = try start("a")
    kill(planes["b"]!.pid, SIGSTOP)
    kill(planes["c"]!.pid, SIGSTOP)
    defer {
      kill(planes["b"]!.pid, SIGCONT)
      kill(planes["c"]!.pid, SIGCONT)
    }
    let stopped = Date()
    #expect(
      try waitFor(seconds: 90) {
        connected(at: planes["a"]!) == ["echo": "v2@a", "client": "v2@a"]
      },
      "\(connected(at: planes["a"]!))")
    print("replicas hung: both sidecars moved after \(Date().timeIntervalSince(stopped)) s")
    #expect(try call(client.outbound) == "OK")
  }

  func call(_ outbound: String) throws -> String {
    let script = PythonInteropTests.python.appendingPathComponent("transparency.py").path
    let result = try run(try resolve("python3"), [script, "call", outbound, "Unary", "hi"])
    return (try jsonObjects(result.stdout).first?["code"] as? String) ?? result.stderr
  }
}
