import Foundation
import TestSupport
import Testing

/// Sidecars that start with only a join token and the control plane's addresses: they get
/// their identities, serve calls over mutual TLS, renew before expiry without failing a call,
/// and — with the control plane killed — restart and serve from their persisted state.
@Suite(.serialized) final class SidecarJoinTests {
  let mesh: MeshFixture
  let plane: ServiceProcess
  let app: ServiceProcess
  let script = PythonInteropTests.python.appendingPathComponent("transparency.py").path

  init() throws {
    mesh = try MeshFixture("join", services: [])
    plane = try ServiceProcess(
      binary("control-plane"),
      [
        "--listen", "127.0.0.1:0", "--join", "127.0.0.1:0", "--certs", mesh.certs, "--data",
        mesh.directory.appendingPathComponent("data").path, "--leaf-lifetime", "60s",
      ])
    app = try ServiceProcess(try resolve("python3"), [script, "serve"])
  }

  deinit {
    plane.stop()
    app.stop()
  }

  /// A bootstrap file for `service` that joins through the control plane.
  func joiningSidecar(
    _ service: String, app: String, mesh meshFile: String? = nil
  ) throws
    -> RunningSidecar
  {
    let token = mesh.directory.appendingPathComponent("\(service).token").path
    if !FileManager.default.fileExists(atPath: token) {
      let created = try run(
        binary("meshctl"),
        [
          "tokens", "create", "--service", service, "--out", token, "--control-plane",
          plane.address, "--certs", mesh.certs,
        ])
      guard created.status == 0 else { throw HarnessError("tokens create: \(created.stderr)") }
    }
    var text = """
      service: \(service)
      app: \(app)
      listen: {inbound: 127.0.0.1:0, outbound: 127.0.0.1:0, admin: 127.0.0.1:0}
      controlPlane:
        address: \(plane.address)
        join: \(try logField(plane.log, "join_address"))
        tokenFile: \(service).token
        bundle: certs/bundle.pem
      state: state/\(service)

      """
    if let meshFile { text += "mesh: \(meshFile)\n" }
    let file = try mesh.write("\(service)-sidecar.yaml", text)
    return try RunningSidecar(ServiceProcess(binary("sidecar"), ["--config", file]))
  }

  func call(_ client: RunningSidecar) throws -> String {
    let result = try run(try resolve("python3"), [script, "call", client.outbound, "Unary", "hi"])
    return (try jsonObjects(result.stdout).first?["code"] as? String) ?? result.stderr
  }

  func serial(_ sidecar: RunningSidecar) throws -> String {
    let page = try sidecar.adminPage("/certs").body
    let object = try JSONSerialization.jsonObject(with: Data(page.utf8)) as? [String: Any]
    return object?["serial"] as? String ?? ""
  }

  @Test func sidecarsJoinRenewAndRestartWithoutTheControlPlane() throws {
    var server = try joiningSidecar("echo", app: app.address)
    let clientMesh = try mesh.write(
      "client-mesh.yaml", "services:\n  echo:\n    endpoints:\n      - address: \(server.inbound)\n"
    )
    let client = try joiningSidecar("client", app: "127.0.0.1:1", mesh: clientMesh)
    defer {
      client.process.stop()
      server.process.stop()
    }
    #expect(server.process.log.contains("joined the mesh"), "\(server.process.log)")
    let certs =
      try JSONSerialization.jsonObject(
        with: Data(try server.adminPage("/certs").body.utf8)) as? [String: Any]
    #expect(certs?["identity"] as? String == "spiffe://trellis.local/svc/echo")
    #expect(try call(client) == "OK")

    // Renewal at 70 % of a one-minute life, under continuous calls: none fails.
    let first = try serial(server)
    let loadResult = try run(try resolve("python3"), [script, "load", client.outbound, "30"])
    let summary = try #require(try jsonObjects(loadResult.stdout).first, "\(loadResult.stderr)")
    #expect(summary["failed"] as? Int == 0, "\(summary)")
    #expect((summary["ok"] as? Int ?? 0) > 100)
    #expect(try serial(server) != first, "\(server.process.log)")
    #expect(server.process.log.contains("certificate renewed"))
    #expect(server.process.log.contains("certificate reloaded"))

    // Without the control plane, a restarted sidecar serves from its persisted state.
    plane.kill()
    server.process.stop()
    let inbound = server.inbound
    let restartText = try String(
      contentsOfFile: mesh.directory.appendingPathComponent("echo-sidecar.yaml").path,
      encoding: .utf8
    ).replacingOccurrences(of: "inbound: 127.0.0.1:0", with: "inbound: \(inbound)")
    let restartFile = try mesh.write("echo-restart.yaml", restartText)
    server = try RunningSidecar(ServiceProcess(binary("sidecar"), ["--config", restartFile]))
    #expect(server.process.log.contains("using the persisted certificate"))
    #expect(try call(client) == "OK")
  }
}
