import Foundation
import TestSupport
import Testing

/// `control-plane --store etcd://…`: the control plane's state in a real etcd member, through
/// what an operator does (join tokens, certificates, config versions) and a `kill -9`.
@Suite struct EtcdStoreTests {
  @Test func aControlPlaneKeepsItsStateInEtcd() throws {
    let etcd = try EtcdServer()
    defer { etcd.stop() }
    let mesh = try MeshFixture("etcd-store", services: ["users"])
    let data = mesh.directory.appendingPathComponent("data").path
    func start() throws -> ServiceProcess {
      try ServiceProcess(
        binary("control-plane"),
        [
          "--listen", "127.0.0.1:0", "--join", "127.0.0.1:0", "--certs", mesh.certs,
          "--data", data, "--store", etcd.url,
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
    #expect(FileManager.default.fileExists(atPath: "\(data)/keys/issuer-1.key.pem"))

    // A store option that names no etcd is refused before anything starts.
    let bad = try run(binary("control-plane"), ["--store", "etcd://nowhere", "--data", data])
    #expect(bad.status != 0 && bad.stderr.contains("--store"), "\(bad.stderr)")
  }
}
