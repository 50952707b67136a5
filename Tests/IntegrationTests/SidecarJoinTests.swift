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

  /// A sidecar for `service` that joins through the control plane.
  func joiningSidecar(
    _ service: String, app: String, mesh meshFile: String? = nil, inbound: String = "127.0.0.1:0",
    instance: String? = nil, extra: String = ""
  ) throws -> RunningSidecar {
    try mesh.joiningSidecar(
      service, app: app, plane: plane, mesh: meshFile, inbound: inbound, instance: instance,
      extra: extra)
  }

  func call(_ client: RunningSidecar) throws -> String {
    let result = try run(try resolve("python3"), [script, "call", client.outbound, "Unary", "hi"])
    return (try jsonObjects(result.stdout).first?["code"] as? String) ?? result.stderr
  }

  func freePort() throws -> String { try freeLoopbackPort() }

  func serial(_ sidecar: RunningSidecar) throws -> String {
    let page = try sidecar.adminPage("/certs").body
    let object = try JSONSerialization.jsonObject(with: Data(page.utf8)) as? [String: Any]
    return object?["serial"] as? String ?? ""
  }

  /// An echo sidecar and a client sidecar, both joined, the client told the echo endpoint by
  /// its bootstrap's mesh file (no config applied).
  func echoAndStaticClient() throws -> (server: RunningSidecar, client: RunningSidecar) {
    let server = try joiningSidecar("echo", app: app.address)
    let clientMesh = try mesh.write(
      "client-mesh.yaml", "services:\n  echo:\n    endpoints:\n      - address: \(server.inbound)\n"
    )
    return (server, try joiningSidecar("client", app: "127.0.0.1:1", mesh: clientMesh))
  }

  @Test func sidecarsJoinRenewAndRestartWithoutTheControlPlane() throws {
    let (joined, client) = try echoAndStaticClient()
    var server = joined
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

  /// One-minute certificates renewed for three minutes, then `meshctl certs rotate --service`
  /// and `rotate-ca --root`, all under continuous calls: no call fails, every sidecar ends on a
  /// certificate from the new issuer under the new root, and a certificate chained to the old
  /// root is refused afterwards.
  @Test func rotationsUnderLoadFailNoCall() throws {
    let (server, client) = try echoAndStaticClient()
    defer {
      client.process.stop()
      server.process.stop()
    }
    #expect(try call(client) == "OK")
    _ = try statuses { $0["echo"] != nil && $0["client"] != nil }
    // The client's identity as it is now, chained to the root about to be replaced.
    let state = mesh.directory.appendingPathComponent("state/client").path
    let old = mesh.directory.appendingPathComponent("old-client.pem").path
    try FileManager.default.copyItem(atPath: "\(state)/svid.pem", toPath: old)
    try FileManager.default.copyItem(
      atPath: "\(state)/svid-key.pem",
      toPath: old.replacingOccurrences(of: ".pem", with: "-key.pem"))

    // Three minutes of one-minute certificates (each sidecar renews about four times), then
    // the rotations, all under continuous calls.
    let load = try BackgroundLoad(through: client.outbound, seconds: 205)
    Thread.sleep(forTimeInterval: 180)

    let echoSerial = try serial(server)
    let renew = try meshctl(["certs", "rotate", "--service", "echo", "--timeout", "20s"])
    #expect(renew.status == 0, "\(renew.stdout)\(renew.stderr)")
    // The sidecar's certificate watcher picks the new files up within a second or two.
    let renewed = Date().addingTimeInterval(10)
    while try serial(server) == echoSerial, Date() < renewed { Thread.sleep(forTimeInterval: 0.2) }
    #expect(try serial(server) != echoSerial)
    let rotate = try meshctl(["certs", "rotate-ca", "--root", "--timeout", "20s"])
    #expect(rotate.status == 0, "\(rotate.stdout)\(rotate.stderr)")
    #expect(rotate.stdout.contains("step 3/3"), "\(rotate.stdout)")

    let summary = try load.finish()
    #expect(summary["failed"] as? Int == 0, "\(summary)")
    #expect((summary["ok"] as? Int ?? 0) > 100, "\(summary)")
    #expect(
      server.process.log.components(separatedBy: "certificate renewed").count > 3,
      "\(server.process.log)")

    // Every sidecar serves with a certificate from the new issuer, under the new root only.
    let status = try meshctl(["certs", "status", "-o", "json"])
    let object = try #require(
      try JSONSerialization.jsonObject(with: Data(status.stdout.utf8)) as? [String: Any],
      "\(status.stdout)\(status.stderr)")
    let roots = object["roots"] as? [String] ?? []
    #expect(roots.count == 1, "\(object)")
    for sidecar in object["sidecars"] as? [[String: Any]] ?? [] {
      #expect(sidecar["issuer"] as? String == object["issuer"] as? String, "\(sidecar)")
      #expect(sidecar["root"] as? String == roots.first, "\(sidecar)")
    }
    let bundle = try String(contentsOfFile: "\(state)/bundle.pem", encoding: .utf8)
    #expect(bundle.components(separatedBy: "BEGIN CERTIFICATE").count == 2)
    #expect(try call(client) == "OK")
    // The issuer's key stayed in the control plane; `certs issue` says so.
    let issue = try run(
      binary("meshctl"), ["certs", "issue", "--service", "x", "--dir", mesh.certs])
    #expect(issue.status != 0)
    #expect(
      issue.stderr.contains("the issuer's key is kept by the control plane"), "\(issue.stderr)")

    // The old identity no longer opens a connection; the current one does.
    func handshake(_ certificate: String) throws -> ProcessResult {
      try run(
        "openssl",
        [
          "s_client", "-connect", server.inbound, "-CAfile", "\(mesh.certs)/bundle.pem", "-alpn",
          "h2", "-cert", certificate, "-cert_chain", certificate, "-key",
          certificate.replacingOccurrences(of: ".pem", with: "-key.pem"),
        ], stdin: Data("Q\n".utf8))
    }
    // (TLS 1.3: the client hears of the refusal after its side of the handshake is done, so
    // the server's count of refusals is the evidence.)
    let untrusted = ["reason": "untrusted_chain"]
    let before = try server.metric("trellis_tls_handshake_failures_total", untrusted)
    _ = try handshake("\(state)/svid.pem")
    #expect(try server.metric("trellis_tls_handshake_failures_total", untrusted) == before)
    let refused = try handshake(old)
    #expect(
      try server.metric("trellis_tls_handshake_failures_total", untrusted) == before + 1,
      "\(refused.stdout)\(refused.stderr)")
  }

  /// Each registered endpoint as `meshctl get endpoints -o json` shows it, polled until `done`
  /// holds (or 20 s pass).
  func registered(until done: ([[String: Any]]) -> Bool) throws -> [[String: Any]] {
    var rows: [[String: Any]] = []
    let deadline = Date().addingTimeInterval(20)
    repeat {
      let result = try meshctl(["get", "endpoints", "-o", "json"])
      rows =
        ((try? JSONSerialization.jsonObject(with: Data(result.stdout.utf8))) as? [[String: Any]]
        ?? []).filter { ($0["source"] as? String ?? "").hasPrefix("registered") }
      if done(rows) { return rows }
      Thread.sleep(forTimeInterval: 0.25)
    } while Date() < deadline
    return rows
  }

  /// Sidecars register their endpoints once their apps report SERVING, with labels and the
  /// app's methods; a caller reaches a service known only by registration; an app that dies
  /// is withdrawn at once, a sidecar shut down withdraws its endpoint, and one killed expires
  /// with its lease.
  @Test func endpointsAreRegisteredWhileTheirAppsServe() throws {
    let config = try mesh.write("empty.yaml", "services: {}\n")
    #expect(try meshctl(["apply", "-f", config]).status == 0)
    let directory = mesh.directory
    let usersA = try startService(
      "user-service", database: directory.appendingPathComponent("a.sqlite"))
    let usersB = try startService(
      "user-service", database: directory.appendingPathComponent("b.sqlite"))
    let payments = try startService(
      "payment-service", database: directory.appendingPathComponent("p.sqlite"))
    defer {
      usersA.stop()
      usersB.stop()
      payments.stop()
    }
    let a = try joiningSidecar(
      "users", app: usersA.address, instance: "users-a",
      extra: "register: {labels: {version: v1}, lease: 30s}\n")
    let b = try joiningSidecar(
      "users", app: usersB.address, instance: "users-b",
      extra: "register: {labels: {version: v2}, lease: 3s}\n")
    let pay = try joiningSidecar(
      "payments", app: payments.address, extra: "register: {lease: 60s}\n")
    let client = try joiningSidecar("orders", app: "127.0.0.1:1")
    defer {
      for sidecar in [a, b, pay, client] { sidecar.process.stop() }
    }

    var rows = try registered { $0.count == 3 }
    #expect(rows.count == 3, "\(rows)")
    let users = rows.filter { $0["service"] as? String == "users" }
    #expect(
      Set(users.compactMap { ($0["labels"] as? [String: String])?["version"] }) == ["v1", "v2"])
    #expect(Set(users.compactMap { $0["address"] as? String }) == [a.inbound, b.inbound])
    let methods = users.first?["methods"] as? [[String: Any]] ?? []
    let levels = Dictionary(
      uniqueKeysWithValues: methods.compactMap { method in
        (method["name"] as? String).map { ($0, method["idempotency"] as? String ?? "") }
      })
    #expect(levels["shop.v1.UserService/GetUser"] == "no_side_effects", "\(methods)")
    #expect(levels["shop.v1.UserService/CreateUser"] == "unknown", "\(methods)")
    #expect(levels["grpc.health.v1.Health/Check"] == nil)

    // The caller knows users only from the registrations.
    let call = try rpc([
      "call", "--plaintext", "--authority", "users", client.outbound,
      "shop.v1.UserService/ListUsers", "-d", "{}",
    ])
    #expect(call.status == 0, "\(call.stdout)\(call.stderr)")
    let status = try meshctl(["status", "-o", "json"]).stdout
    #expect(status.contains("\"registered\":true"), "\(status)")
    // So does the operator's `rpc --mesh`.
    let direct = try rpc([
      "call", "--mesh", "users", "shop.v1.UserService/ListUsers", "-d", "{}", "--control-plane",
      plane.address, "--certs", mesh.certs,
    ])
    #expect(direct.status == 0, "\(direct.stdout)\(direct.stderr)")

    // An app that dies is withdrawn within a probe or two (its lease is 30 s).
    usersA.kill()
    rows = try registered { rows in !rows.contains { $0["address"] as? String == a.inbound } }
    #expect(!rows.contains { $0["address"] as? String == a.inbound }, "\(rows)")
    // A sidecar shut down withdraws its endpoint at once.
    #expect(pay.process.stop() == 0)
    rows = try registered { rows in !rows.contains { $0["service"] as? String == "payments" } }
    #expect(!rows.contains { $0["service"] as? String == "payments" }, "\(rows)")
    // A sidecar killed expires with its lease (3 s).
    b.process.kill()
    rows = try registered { $0.isEmpty }
    #expect(rows.isEmpty, "\(rows)")
  }

  func meshctl(_ arguments: [String], at address: String? = nil) throws -> ProcessResult {
    try run(
      binary("meshctl"),
      arguments + ["--control-plane", address ?? plane.address, "--certs", mesh.certs])
  }

  /// Each service's sidecar status, polled until `done` holds (or `timeout` passes).
  func statuses(
    at address: String? = nil, timeout: TimeInterval = 15,
    until done: ([String: [String: Any]]) -> Bool
  ) throws -> [String: [String: Any]] {
    var byService: [String: [String: Any]] = [:]
    let deadline = Date().addingTimeInterval(timeout)
    repeat {
      let result = try meshctl(["status", "-o", "json"], at: address)
      let document =
        (try? JSONSerialization.jsonObject(with: Data(result.stdout.utf8))) as? [String: Any]
      let rows = document?["sidecars"] as? [[String: Any]]
      byService = [:]
      for row in rows ?? [] {
        byService[(row["node"] as? String ?? "").components(separatedBy: "@")[0]] = row
      }
      if done(byService) { return byService }
      Thread.sleep(forTimeInterval: 0.2)
    } while Date() < deadline
    return byService
  }

  /// An echo sidecar on a known port and a client sidecar, both joined, and version 1 applied:
  /// the echo service at that port.
  func echoAndClientAtVersion1() throws -> (
    port: String, server: RunningSidecar, client: RunningSidecar
  ) {
    let port = try freePort()
    let server = try joiningSidecar("echo", app: app.address, inbound: "127.0.0.1:\(port)")
    let client = try joiningSidecar("client", app: "127.0.0.1:1")
    let v1 = try mesh.write(
      "v1.yaml", "services:\n  echo:\n    endpoints:\n      - address: 127.0.0.1:\(port)\n")
    let applied = try meshctl(["apply", "-f", v1])
    #expect(applied.status == 0, "\(applied.stderr)")
    return (port, server, client)
  }

  /// `kill -9` of the control plane under continuous calls: none fails; a sidecar restarted
  /// while it is down serves from its persisted state; once it is back every sidecar
  /// resubscribes and runs the current version.
  @Test func theControlPlaneKilledUnderLoadFailsNoCall() throws {
    let (_, joined, client) = try echoAndClientAtVersion1()
    var server = joined
    defer {
      client.process.stop()
      server.process.stop()
    }
    _ = try statuses {
      $0["echo"]?["version"] as? Int == 1 && $0["client"]?["version"] as? Int == 1
    }
    #expect(try call(client) == "OK")
    let listen = try logField(plane.log, "address")
    let join = try logField(plane.log, "join_address")

    let load = try BackgroundLoad(through: client.outbound, seconds: 8)
    Thread.sleep(forTimeInterval: 2)
    plane.kill()
    let summary = try load.finish()
    #expect(summary["failed"] as? Int == 0, "\(summary)")
    #expect((summary["ok"] as? Int ?? 0) > 50, "\(summary)")

    // Restarted while the control plane is down: it serves with what it persisted.
    server.process.stop()
    server = try RunningSidecar(
      ServiceProcess(
        binary("sidecar"),
        ["--config", mesh.directory.appendingPathComponent("echo-sidecar.yaml").path]))
    #expect(server.process.log.contains("using the persisted config"), "\(server.process.log)")
    #expect(try call(client) == "OK")

    // Back on the same addresses and data: every sidecar resubscribes and converges.
    try restartConvergesAtVersion1(listen: listen, join: join, client: client)
  }

  /// SIGTERM ends the control plane's streams that last as long as their peers (sidecars'
  /// config and telemetry streams, an operator's tap) with UNAVAILABLE, so it exits at once
  /// with sidecars connected; they serve on, and converge again on its successor.
  @Test func onSIGTERMTheControlPlaneEndsItsStreamsAndExits() throws {
    let (_, server, client) = try echoAndClientAtVersion1()
    defer {
      client.process.stop()
      server.process.stop()
    }
    _ = try statuses {
      $0["echo"]?["version"] as? Int == 1 && $0["client"]?["version"] as? Int == 1
    }
    let listen = try logField(plane.log, "address")
    let join = try logField(plane.log, "join_address")
    let tap = Process()
    tap.executableURL = URL(fileURLWithPath: try binary("meshctl"))
    tap.arguments = ["tap", "echo", "--control-plane", plane.address, "--certs", mesh.certs]
    let tapErrors = Pipe()
    tap.standardError = tapErrors
    tap.standardOutput = FileHandle.nullDevice
    try tap.run()
    Thread.sleep(forTimeInterval: 1)
    #expect(tap.isRunning)

    let started = Date()
    let status = plane.stop(timeout: 30)
    let took = Date().timeIntervalSince(started)
    #expect(status == 0)
    #expect(took < 5, "the control plane took \(took) s to stop")
    let tapDeadline = Date().addingTimeInterval(10)
    while tap.isRunning, Date() < tapDeadline { Thread.sleep(forTimeInterval: 0.05) }
    if tap.isRunning { tap.terminate() }
    tap.waitUntilExit()
    let tapSaid = String(
      decoding: tapErrors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    #expect(tap.terminationStatus != 0)
    #expect(tapSaid.contains("the control plane is shutting down"), "\(tapSaid)")
    #expect(try call(client) == "OK")

    try restartConvergesAtVersion1(listen: listen, join: join, client: client)
  }

  /// A sidecar that stops answering (its process stopped: the connection stays open and
  /// nothing is read, as when its host vanishes) loses its config stream to the control
  /// plane's keepalive, and the one stream this control plane may serve goes to another,
  /// which keeps it while quiet, pinging.
  @Test func aSilentSidecarsStreamIsFreedByKeepalive() throws {
    let fixture = try MeshFixture("keepalive", services: [])
    let plane = try ServiceProcess(
      binary("control-plane"),
      [
        "--listen", "127.0.0.1:0", "--join", "127.0.0.1:0", "--certs", fixture.certs, "--data",
        fixture.directory.appendingPathComponent("data").path, "--max-config-streams", "1",
        "--keepalive", "2s",
      ])
    defer { plane.stop() }
    func connected() throws -> [String: Bool] {
      let status = try fixture.meshctl(["status", "-o", "json"], plane: plane)
      let document = try JSONSerialization.jsonObject(with: Data(status.utf8)) as? [String: Any]
      var byService: [String: Bool] = [:]
      for row in document?["sidecars"] as? [[String: Any]] ?? [] {
        let service = (row["node"] as? String ?? "").components(separatedBy: "@")[0]
        byService[service] = row["connected"] as? Bool ?? false
      }
      return byService
    }
    let silent = try fixture.joiningSidecar("echo", app: "127.0.0.1:1", plane: plane)
    defer { silent.process.stop() }
    #expect(try waitFor(seconds: 15) { try connected()["echo"] == true })
    #expect(kill(silent.process.pid, SIGSTOP) == 0)
    defer { kill(silent.process.pid, SIGCONT) }
    let started = Date()
    let other = try fixture.joiningSidecar("client", app: "127.0.0.1:1", plane: plane)
    defer { other.process.stop() }
    #expect(
      try waitFor(seconds: 20) {
        let now = try connected()
        return now["echo"] == false && now["client"] == true
      }, "\((try? connected()) ?? [:])\n\(other.process.log)")
    print(
      "the silent sidecar's stream went to another after \(Date().timeIntervalSince(started)) s")
    // The stream now held is quiet (no config is applied) while the sidecar pings each 10 s:
    // gRPC's default would send it away for too many pings at the fourth, 40 s in.
    let before = other.process.log.components(separatedBy: "config stream lost").count
    Thread.sleep(forTimeInterval: 45)
    #expect(
      other.process.log.components(separatedBy: "config stream lost").count == before,
      "\(other.process.log)")
    #expect(try connected()["client"] == true)
  }

  /// A control plane started again on `listen` and `join` with the same data: the echo and
  /// client sidecars subscribe to it again and run version 1, and calls go through.
  func restartConvergesAtVersion1(listen: String, join: String, client: RunningSidecar) throws {
    let restarted = try ServiceProcess(
      binary("control-plane"),
      [
        "--listen", listen, "--join", join, "--certs", mesh.certs, "--data",
        mesh.directory.appendingPathComponent("data").path,
      ])
    defer { restarted.stop() }
    let converged = try statuses(at: restarted.address, timeout: 60) { nodes in
      ["echo", "client"].allSatisfy {
        nodes[$0]?["connected"] as? Bool == true && nodes[$0]?["version"] as? Int == 1
      }
    }
    #expect(converged["echo"]?["connected"] as? Bool == true, "\(converged)")
    #expect(converged["client"]?["connected"] as? Bool == true, "\(converged)")
    #expect(try call(client) == "OK")
  }

  @Test func appliedConfigReachesEverySidecarAndABadSnapshotIsNacked() throws {
    let (port, server, joined) = try echoAndClientAtVersion1()
    var client = joined
    defer {
      client.process.stop()
      server.process.stop()
    }
    var status = try statuses { nodes in
      nodes["echo"]?["version"] as? Int == 1 && nodes["client"]?["version"] as? Int == 1
    }
    #expect(status["client"]?["version"] as? Int == 1, "\(status)")
    #expect(status["echo"]?["version"] as? Int == 1, "\(status)")
    #expect(status["echo"]?["spiffe_id"] as? String == "spiffe://trellis.local/svc/echo")
    #expect(try call(client) == "OK")

    // A config the echo sidecar cannot run (another service at its own inbound address): it
    // NACKs and keeps version 1; the client runs version 2.
    let v2 = try mesh.write(
      "v2.yaml",
      "services:\n  echo:\n    endpoints:\n      - address: 127.0.0.1:\(port)\n"
        + "  other:\n    endpoints:\n      - address: 127.0.0.1:\(port)\n")
    #expect(try meshctl(["apply", "-f", v2]).status == 0)
    status = try statuses { nodes in
      nodes["echo"]?["last_nack_version"] as? Int == 2 && nodes["client"]?["version"] as? Int == 2
    }
    #expect(status["echo"]?["version"] as? Int == 1, "\(status)")
    #expect(status["echo"]?["last_nack_version"] as? Int == 2, "\(status)")
    let nack = status["echo"]?["last_nack_error"] as? String ?? ""
    #expect(nack.contains("is this sidecar's own inbound address"), "\(status)")
    #expect(status["client"]?["version"] as? Int == 2, "\(status)")
    #expect(try call(client) == "OK")
    let table = try meshctl(["status"]).stdout
    #expect(table.contains("stale") && table.contains("synced"), "\(table)")

    // A rollback to version 1 is stored as version 3, and both sidecars run it.
    #expect(try meshctl(["rollback", "1"]).status == 0)
    status = try statuses { nodes in
      nodes["echo"]?["version"] as? Int == 3 && nodes["client"]?["version"] as? Int == 3
    }
    #expect(status["echo"]?["version"] as? Int == 3, "\(status)")
    #expect(status["client"]?["version"] as? Int == 3, "\(status)")
    #expect(try call(client) == "OK")

    // Without the control plane, a restarted client starts with the config it last ran.
    plane.kill()
    client.process.stop()
    client = try RunningSidecar(
      ServiceProcess(
        binary("sidecar"),
        ["--config", mesh.directory.appendingPathComponent("client-sidecar.yaml").path]))
    #expect(client.process.log.contains("using the persisted config"), "\(client.process.log)")
    #expect(try call(client) == "OK")
  }

  /// The traffic policies act as applied with `meshctl apply`, and `meshctl get routes` shows
  /// them: a fault route answers at once, the next version without it lets calls through.
  @Test func policiesAppliedWithMeshctlActAtOnce() throws {
    let (port, server, client) = try echoAndClientAtVersion1()
    defer {
      client.process.stop()
      server.process.stop()
    }
    _ = try statuses { $0["client"]?["version"] as? Int == 1 }
    #expect(try call(client) == "OK")
    let drill = try mesh.write(
      "drill.yaml",
      """
      services:
        echo:
          endpoints:
            - address: 127.0.0.1:\(port)
          circuitBreaker: {maxConcurrentRequests: 50}
      routes:
        - service: echo
          name: drill
          fault: {abort: {code: RESOURCE_EXHAUSTED, percent: 100}}
      """)
    #expect(try meshctl(["apply", "-f", drill]).status == 0)
    _ = try statuses { $0["client"]?["version"] as? Int == 2 }
    #expect(try call(client) == "RESOURCE_EXHAUSTED")
    let routes = try meshctl(["get", "routes", "-o", "json"])
    #expect(routes.stdout.contains("\"drill\""), "\(routes.stdout)")
    #expect(routes.stdout.contains("RESOURCE_EXHAUSTED"), "\(routes.stdout)")
    #expect(try client.metric("trellis_faults_injected_total", ["service": "echo"]) == 1)
    #expect(try meshctl(["rollback", "1"]).status == 0)
    _ = try statuses { $0["client"]?["version"] as? Int == 3 }
    #expect(try call(client) == "OK")
  }

  /// `rpc call --mesh SERVICE`: the operator calls a service by name; the endpoint comes from
  /// the control plane, the app sees the operator's identity, and a peer that is not that
  /// service is refused (secure naming).
  @Test func rpcCallsAServiceOfTheMeshByName() throws {
    let echo = try ServiceProcess(
      try resolve("python3"),
      [
        PythonInteropTests.python.appendingPathComponent("echo_server.py").path,
        mesh.directory.appendingPathComponent("stubs").path, integrationInputs.path,
      ])
    defer { echo.stop() }
    let port = try freePort()
    let server = try joiningSidecar("echo", app: echo.address, inbound: "127.0.0.1:\(port)")
    defer { server.process.stop() }
    let config = try mesh.write(
      "mesh.yaml",
      "services:\n  echo:\n    endpoints:\n      - address: 127.0.0.1:\(port)\n"
        + "  users:\n    endpoints:\n      - address: 127.0.0.1:\(port)\n")
    #expect(try meshctl(["apply", "-f", config]).status == 0)
    let target = ["--control-plane", plane.address, "--certs", mesh.certs]

    let say = try rpc(
      ["call", "--mesh", "echo", "trellis.echo.v1.Echo/Say", "-d", #"{"text":"who"}"#] + target)
    #expect(say.status == 0, "\(say.stderr)")
    let headers = try jsonObjects(say.stdout).first?["headers"] as? [String: String]
    #expect(headers?["x-trellis-peer-identity"] == "spiffe://trellis.local/operator/admin")

    let unknown = try rpc(["call", "--mesh", "nope", "trellis.echo.v1.Echo/Say"] + target)
    #expect(unknown.status != 0)
    #expect(
      unknown.stderr.contains("'nope' has no endpoints in the mesh config"), "\(unknown.stderr)")
    // `users` points at the echo sidecar, which cannot prove it is `users`.
    let impostor = try rpc(
      ["call", "--mesh", "users", "trellis.echo.v1.Echo/Say", "-d", #"{"text":"x"}"#] + target)
    #expect(impostor.status != 0)
    #expect(!impostor.stdout.contains("x-trellis-peer-identity"), "\(impostor.stdout)")
  }
}
