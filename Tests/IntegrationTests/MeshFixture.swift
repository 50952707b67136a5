import Foundation
import TestSupport

/// A static mesh for a test, as a user would set one up from the README: a CA and workload
/// certificates from `meshctl certs`, a mesh config file, and sidecars started with bootstrap
/// files.
final class MeshFixture: @unchecked Sendable {
  let directory: URL
  let certs: String

  /// Creates the CA and a certificate for each of `services`.
  init(_ name: String, services: [String]) throws {
    directory = try makeTemporaryDirectory(name)
    certs = directory.appendingPathComponent("certs").path
    try meshctl(["certs", "init", "--dir", certs])
    for service in services {
      try meshctl(["certs", "issue", "--service", service, "--dir", certs])
    }
  }

  func meshctl(_ arguments: [String]) throws {
    let result = try run(binary("meshctl"), arguments)
    guard result.status == 0 else { throw HarnessError("meshctl \(arguments): \(result.stderr)") }
  }

  /// Writes `text` to `name` in the fixture's directory; returns the path.
  @discardableResult
  func write(_ name: String, _ text: String) throws -> String {
    let path = directory.appendingPathComponent(name).path
    try text.write(toFile: path, atomically: true, encoding: .utf8)
    return path
  }

  /// The bootstrap file for `service`'s sidecar.
  func bootstrap(
    _ service: String, app: String, mesh: String? = nil, limits: String = "",
    inbound: String = "127.0.0.1:0"
  ) -> String {
    var text = """
      service: \(service)
      app: \(app)
      listen:
        inbound: \(inbound)
        outbound: 127.0.0.1:0
        admin: 127.0.0.1:0
      tls:
        cert: certs/\(service).pem
        key: certs/\(service)-key.pem
        bundle: certs/bundle.pem

      """
    if let mesh { text += "mesh: \(mesh)\n" }
    if !limits.isEmpty { text += "limits:\n\(limits)\n" }
    return text
  }

  /// The usual pair: a sidecar for `echo` beside `app`, and a `client` sidecar whose mesh
  /// config routes `echo` to it.
  func pair(
    app: String, serverLimits: String = "", clientLimits: String = ""
  ) throws
    -> (server: RunningSidecar, client: RunningSidecar)
  {
    let server = try sidecar("echo", app: app, limits: serverLimits)
    let clientMesh = try write(
      "client-mesh.yaml",
      """
      services:
        echo:
          endpoints:
            - address: \(server.inbound)
      """)
    let client = try sidecar("client", app: "127.0.0.1:1", mesh: clientMesh, limits: clientLimits)
    return (server, client)
  }

  /// Starts a sidecar from a bootstrap file written for it.
  func sidecar(
    _ service: String, app: String, mesh: String? = nil, limits: String = "",
    inbound: String = "127.0.0.1:0"
  ) throws -> RunningSidecar {
    let file = try write(
      "\(service)-sidecar.yaml",
      bootstrap(service, app: app, mesh: mesh, limits: limits, inbound: inbound))
    return try RunningSidecar(ServiceProcess(binary("sidecar"), ["--config", file]))
  }
}

extension MeshFixture {
  /// A control plane with the fixture's CA, on free ports.
  func controlPlane(_ extra: [String] = []) throws -> ServiceProcess {
    try ServiceProcess(
      binary("control-plane"),
      [
        "--listen", "127.0.0.1:0", "--join", "127.0.0.1:0", "--certs", certs, "--data",
        directory.appendingPathComponent("data").path,
      ] + extra)
  }

  /// `meshctl ARGUMENTS` against `plane`, as the operator; returns standard output.
  @discardableResult
  func meshctl(_ arguments: [String], plane: ServiceProcess) throws -> String {
    let result = try meshctlResult(arguments, plane: plane)
    guard result.status == 0 else {
      throw HarnessError("meshctl \(arguments.joined(separator: " ")): \(result.stderr)")
    }
    return result.stdout
  }

  /// `meshctl` at `plane`, as the operator; whatever it answered.
  func meshctlResult(_ arguments: [String], plane: ServiceProcess) throws -> ProcessResult {
    try run(binary("meshctl"), arguments + ["--control-plane", plane.address, "--certs", certs])
  }

  /// A sidecar for `service` that joins through `plane` with a join token (made once per
  /// instance), as the README's control-plane section sets one up.
  /// `replicas` lists the control plane replicas the sidecar may use (default: `plane`'s
  /// addresses alone).
  func joiningSidecar(
    _ service: String, app: String, plane: ServiceProcess, mesh meshFile: String? = nil,
    inbound: String = "127.0.0.1:0", instance: String? = nil, extra: String = "",
    replicas: (addresses: [String], joins: [String])? = nil, namespace: String? = nil
  ) throws -> RunningSidecar {
    let name = instance ?? service
    let token = directory.appendingPathComponent("\(name).token").path
    if !FileManager.default.fileExists(atPath: token) {
      try meshctl(["tokens", "create", "--service", service, "--out", token], plane: plane)
    }
    var text = """
      service: \(service)
      app: \(app)
      listen: {inbound: \(inbound), outbound: 127.0.0.1:0, admin: 127.0.0.1:0}
      controlPlane:
        address: [\(replicas?.addresses.joined(separator: ", ") ?? plane.address)]
        join: [\(try replicas?.joins.joined(separator: ", ") ?? logField(plane.log, "join_address"))]
        tokenFile: \(name).token
        bundle: certs/bundle.pem
      state: state/\(name)

      """
    if let meshFile { text += "mesh: \(meshFile)\n" }
    text += extra
    let file = try write("\(name)-sidecar.yaml", text)
    guard let namespace else {
      return try RunningSidecar(ServiceProcess(binary("sidecar"), ["--config", file]))
    }
    return try RunningSidecar(
      ServiceProcess("ip", ["netns", "exec", namespace, binary("sidecar"), "--config", file]))
  }
}

/// A sidecar process and the addresses it logged.
struct RunningSidecar {
  let process: ServiceProcess
  /// The outbound (h2c) listener.
  var outbound: String { process.address }
  let inbound: String
  let admin: String

  init(_ process: ServiceProcess) throws {
    self.process = process
    inbound = try logField(process.log, "inbound_address")
    admin = try logField(process.log, "admin_address")
  }

  /// GETs an admin page; returns the HTTP status and body.
  func adminPage(_ path: String) throws -> (status: Int, body: String) {
    let result = try run("curl", ["-s", "-w", "\n%{http_code}", "http://\(admin)\(path)"])
    var lines = result.stdout.split(separator: "\n", omittingEmptySubsequences: false)
    let status = Int(lines.popLast() ?? "") ?? 0
    return (status, lines.joined(separator: "\n").trimmingCharacters(in: .whitespacesAndNewlines))
  }

  /// The value of one sample in `/metrics`, or 0 when it has not been counted yet.
  func metric(_ name: String, _ labels: [String: String]) throws -> Double {
    let body = try adminPage("/metrics").body
    for line in body.split(separator: "\n")
    where line.hasPrefix(name + "{") || (labels.isEmpty && line.hasPrefix(name + " ")) {
      let matches = labels.allSatisfy { line.contains("\($0.key)=\"\($0.value)\"") }
      if matches, let value = line.split(separator: " ").last.flatMap({ Double($0) }) {
        return value
      }
    }
    return 0
  }
}

/// A field of the JSON `listening` line a process logged.
func logField(_ log: String, _ key: String) throws -> String {
  for line in log.split(separator: "\n") where line.contains("\"listening\"") {
    let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
    if let value = object?[key] as? String { return value }
  }
  throw HarnessError("no \(key) in \(log)")
}

/// Calls the app received, as logged by `echo_server.py`.
func appCalls(_ app: ServiceProcess) -> Int {
  app.log.split(separator: "\n").filter { $0.contains("\"message\": \"call\"") }.count
}
