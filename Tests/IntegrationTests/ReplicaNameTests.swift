import Foundation
import TestSupport
import Testing

/// A control plane named by a host name with an address per replica, as a DNS name with a
/// record per replica gives them. In a network namespace whose `/etc/hosts` gives the name two
/// addresses, the first with nobody listening: the sidecar, `meshctl` and `rpc --mesh` each go
/// on to the second.
@Suite struct ReplicaNameTests {
  @Test(.enabled(if: NetworkNamespace.available, "needs root and iproute2's ip netns"))
  func aNameWithAnAddressPerReplicaIsTriedAddressByAddress() throws {
    let name = "replicas.mesh.test"
    let host = try NetworkNamespace(hosts: "127.0.0.2 \(name)\n127.0.0.3 \(name)\n")
    defer { host.remove() }
    func inside(_ command: String, _ arguments: [String]) throws -> ProcessResult {
      try run("ip", ["netns", "exec", host.name, command] + arguments)
    }
    // The name resolves there, the address nobody listens at first: a client that took only
    // the first address would fail.
    let resolved = try inside("getent", ["ahostsv4", name]).stdout
    #expect(resolved.hasPrefix("127.0.0.2") && resolved.contains("127.0.0.3"), "\(resolved)")

    let mesh = try MeshFixture("replica-name", services: [])
    let (port, join) = (try freeLoopbackPort(), try freeLoopbackPort())
    let plane = try ServiceProcess(
      "ip",
      [
        "netns", "exec", host.name, binary("control-plane"), "--listen", "127.0.0.3:\(port)",
        "--join", "127.0.0.3:\(join)", "--certs", mesh.certs, "--data",
        mesh.directory.appendingPathComponent("data").path,
      ])
    defer { plane.stop() }
    func meshctl(_ arguments: [String]) throws -> ProcessResult {
      try inside(
        binary("meshctl"),
        arguments + ["--control-plane", "\(name):\(port)", "--certs", mesh.certs])
    }
    let token = mesh.directory.appendingPathComponent("echo.token").path
    let created = try meshctl(["tokens", "create", "--service", "echo", "--out", token])
    #expect(created.status == 0, "\(created.stderr)")

    let sidecar = try mesh.joiningSidecar(
      "echo", app: "127.0.0.1:1", plane: plane,
      replicas: (["\(name):\(port)"], ["\(name):\(join)"]), namespace: host.name)
    defer { sidecar.process.stop() }
    #expect(
      try waitFor(seconds: 30) {
        let status = try meshctl(["status", "-o", "json"])
        return status.stdout.contains("\"connected\":true") && status.stdout.contains("echo@")
      })

    // rpc --mesh reads the mesh from the control plane by the same name (echo has no endpoint
    // to call: it says so, which it can only know from the control plane).
    let call = try inside(
      binary("rpc"),
      [
        "call", "--mesh", "echo", "trellis.echo.v1.Echo/Say", "--control-plane",
        "\(name):\(port)", "--certs", mesh.certs,
      ])
    #expect(call.status != 0)
    #expect(call.stderr.contains("'echo' has no endpoints"), "\(call.stderr)")
  }
}
