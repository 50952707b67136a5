import Foundation
import TestSupport
import Testing

/// A mesh over two hosts: this one (etcd, a control plane replica, a users instance, a
/// caller) and another in a network namespace of its own, on a veth pair (a replica and a
/// users instance). The other host is cut off: its endpoint is withdrawn when its lease runs
/// out in etcd, and the caller goes on calling the users instance that is left.
@Suite struct HostCutTests {
  @Test(.enabled(if: NetworkNamespace.available, "needs root and iproute2's ip netns"))
  func aHostCutOffLosesItsEndpointsWhenTheirLeasesRunOut() throws {
    let far = try NetworkNamespace()
    defer { far.remove() }
    // This host serves on all its addresses: the other reaches etcd and the near replica at
    // this host's side of the link, this one at loopback.
    let etcd = try EtcdServer(name: "etcd-hosts", everywhere: true)
    defer { etcd.stop() }
    let mesh = try MeshFixture("host-cut", services: [])
    func replica(_ name: String, at host: String, in namespace: String?) throws -> ServiceProcess {
      let data = mesh.directory.appendingPathComponent(name).path
      let store =
        namespace == nil
        ? etcd.url : etcd.url.replacingOccurrences(of: "127.0.0.1", with: far.outside)
      // Listening on every address, the near one is listed at the address the other host
      // reaches it at.
      let arguments =
        [
          binary("control-plane"), "--listen", "\(host):0", "--join", "\(host):0", "--certs",
          mesh.certs, "--data", data, "--store", store, "--replica", name,
        ] + (host == "0.0.0.0" ? ["--advertise", far.outside] : [])
      let launch = {
        guard let namespace else {
          return try ServiceProcess(arguments[0], Array(arguments.dropFirst()), timeout: 90)
        }
        return try ServiceProcess("ip", ["netns", "exec", namespace] + arguments, timeout: 90)
      }
      guard namespace != nil else { return try launch() }
      return try withOperatorSigning(
        csr: "\(data)/issuer.csr", out: "\(data)/issuer.pem", certs: mesh.certs, launch)
    }
    let near = try replica("near", at: "0.0.0.0", in: nil)
    defer { near.stop() }
    let distant = try replica("far", at: far.inside, in: far.name)
    defer { distant.stop() }
    /// The replicas' addresses as a host sees them: the near one at loopback from here, at this
    /// host's side of the link from the other.
    func addresses(
      _ planes: [ServiceProcess], from host: String = "127.0.0.1"
    ) throws -> (
      addresses: [String], joins: [String]
    ) {
      (
        planes.map { $0.address.replacingOccurrences(of: "0.0.0.0", with: host) },
        try planes.map {
          try logField($0.log, "join_address").replacingOccurrences(of: "0.0.0.0", with: host)
        }
      )
    }

    // users on both hosts, each registering (lease 4 s) through its own host's replica first.
    let nearUsers = try startService(
      "user-service", database: mesh.directory.appendingPathComponent("near.sqlite"))
    defer { nearUsers.stop() }
    let farUsers = try ServiceProcess(
      "ip",
      [
        "netns", "exec", far.name, binary("user-service"), "--listen", "127.0.0.1:0", "--db",
        mesh.directory.appendingPathComponent("far.sqlite").path,
      ])
    defer { farUsers.stop() }
    let register = "register: {lease: 4s}\n"
    let nearSidecar = try mesh.joiningSidecar(
      "users", app: nearUsers.address, plane: near, instance: "users-near", extra: register,
      replicas: try addresses([near]))
    let farSidecar = try mesh.joiningSidecar(
      "users", app: farUsers.address, plane: near, inbound: "\(far.inside):0",
      instance: "users-far", extra: register,
      replicas: try addresses([distant, near], from: far.outside),
      namespace: far.name)
    let client = try mesh.joiningSidecar(
      "orders", app: "127.0.0.1:1", plane: near, replicas: try addresses([near]))
    defer {
      for sidecar in [nearSidecar, farSidecar, client] { sidecar.process.stop() }
    }
    func registered() throws -> [String] {
      let text: String
      do {
        text = try mesh.meshctl(["get", "endpoints", "-o", "json"], plane: near)
      } catch {
        throw HarnessError("\(error)\n\(near.log.suffix(3000))")
      }
      let rows = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [[String: Any]] ?? []
      return rows.compactMap { $0["address"] as? String }.sorted()
    }
    #expect(
      try waitFor(seconds: 30) {
        try registered() == [nearSidecar.inbound, farSidecar.inbound].sorted()
      },
      "\((try? registered()) ?? [])")
    func call() throws -> Int32 {
      try rpc([
        "call", "--plaintext", "--authority", "users", client.outbound,
        "shop.v1.UserService/ListUsers", "-d", "{}",
      ]).status
    }
    #expect(try (0..<4).map { _ in try call() } == [0, 0, 0, 0])
    let replicas = try mesh.meshctl(["get", "replicas", "-o", "json"], plane: near)
    #expect(replicas.contains("\"\(far.outside):"), "\(replicas)")
    #expect(replicas.contains("\"\(far.inside):"), "\(replicas)")

    try far.cut()
    let cut = Date()
    #expect(
      try waitFor(seconds: 30) { try registered() == [nearSidecar.inbound] },
      "\((try? registered()) ?? [])")
    let withdrawn = Date().timeIntervalSince(cut)
    print("host cut off: its endpoint withdrawn after \(withdrawn) s (lease 4 s)")
    // Renewed every third of its lease: it runs out 2.7 to 4 s after the last renewal.
    #expect(withdrawn > 2, "withdrawn before its lease could run out")
    // The caller goes on with the instance that is left.
    let statuses = try (0..<10).map { _ in try call() }
    #expect(statuses.allSatisfy { $0 == 0 }, "\(statuses)")
  }
}
