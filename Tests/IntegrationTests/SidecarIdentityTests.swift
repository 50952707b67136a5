import Foundation
import TestSupport
import Testing

/// The sidecar's identity rules checked with the `openssl` CLI as an independent party:
/// certificates `meshctl` issues verify with `openssl verify`, and the inbound listener refuses
/// every certificate that is not a valid SVID of the mesh — the app receiving nothing — while
/// counting why. Then rotation under load and the drain on SIGTERM.
@Suite(.serialized) final class SidecarIdentityTests {
  let mesh: MeshFixture
  let server: ServiceProcess
  let serverSidecar: RunningSidecar
  let clientSidecar: RunningSidecar
  let script = PythonInteropTests.python.appendingPathComponent("transparency.py").path

  init() throws {
    mesh = try MeshFixture("identity", services: ["echo", "client"])
    server = try ServiceProcess(try resolve("python3"), [script, "serve"])
    (serverSidecar, clientSidecar) = try mesh.pair(
      app: server.address, serverLimits: "  handshakeTimeout: 1s\n  drainTimeout: 10s")
  }

  deinit {
    clientSidecar.process.stop()
    serverSidecar.process.stop()
    server.stop()
  }

  var certs: String { mesh.certs }

  func openssl(_ arguments: [String], stdin: String = "") throws -> ProcessResult {
    try run("openssl", arguments, stdin: Data(stdin.utf8))
  }

  /// Makes a key and a certificate for `spiffe://trellis.local/svc/client` with `extensions`,
  /// signed by the mesh's issuer (or by `signer`); returns the certificate's path.
  func craft(
    _ name: String, extensions: String, signer: (cert: String, key: String)? = nil
  )
    throws -> String
  {
    let base = mesh.directory.appendingPathComponent(name).path
    _ = try openssl([
      "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
      "-keyout", "\(base)-key.pem", "-subj", "/O=trellis.local", "-out", "\(base).csr",
    ])
    try extensions.write(toFile: "\(base).ext", atomically: true, encoding: .utf8)
    let signer = signer ?? ("\(certs)/issuer.pem", "\(certs)/issuer-key.pem")
    let result = try openssl([
      "x509", "-req", "-in", "\(base).csr", "-CA", signer.cert, "-CAkey", signer.key,
      "-CAcreateserial", "-days", "1", "-extfile", "\(base).ext", "-out", "\(base).pem",
    ])
    guard result.status == 0 else { throw HarnessError("openssl x509: \(result.stderr)") }
    return "\(base).pem"
  }

  /// Connects to the inbound listener with `certificate` and returns openssl's output.
  func handshake(_ certificate: String, chain: String? = nil) throws -> String {
    let key = certificate.replacingOccurrences(of: ".pem", with: "-key.pem")
    var arguments = [
      "s_client", "-connect", serverSidecar.inbound, "-CAfile", "\(certs)/bundle.pem", "-alpn",
      "h2", "-cert", certificate, "-key", key,
    ]
    if let chain { arguments += ["-cert_chain", chain] }
    let result = try openssl(arguments)
    return result.stdout + result.stderr
  }

  func refusals(_ reason: String) throws -> Double {
    try serverSidecar.metric("trellis_tls_handshake_failures_total", ["reason": reason])
  }

  /// A client that resumes its TLS session (a session ticket, no certificate exchange) is
  /// still identified: the certificate the session carries is checked again as an SVID, and
  /// the call on the resumed connection is served.
  @Test func aResumedSessionIsIdentifiedAndServed() throws {
    let result = try run(
      try resolve("python3"),
      [
        PythonInteropTests.python.appendingPathComponent("tls_resume.py").path,
        serverSidecar.inbound, "\(certs)/bundle.pem", "\(certs)/client.pem",
        "\(certs)/client-key.pem", "echo", "/t.T/Unary",
      ])
    let outcome = try #require(try jsonObjects(result.stdout).first, "\(result.stderr)")
    #expect(outcome["first"] as? String == "0", "\(outcome)")
    #expect(outcome["reused"] as? Bool == true, "\(outcome)")
    #expect(outcome["second"] as? String == "0", "\(outcome)")
    #expect(try refusals("unverified_resumption") == 0)
  }

  /// A session from before the trust bundle changed is not resumed: the sidecar's new bundle
  /// (a root that did not sign the caller) comes with new ticket keys, so the caller's ticket is
  /// refused, its chain is verified in full against the bundle in force, and it is turned away.
  @Test func aSessionFromBeforeTheBundleChangedIsVerifiedAgainstTheNewOne() throws {
    let other = mesh.directory.appendingPathComponent("other-root").path
    _ = try openssl([
      "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
      "-keyout", "\(other)-key.pem", "-subj", "/O=trellis.local", "-days", "1",
      "-out", "\(other).pem",
    ])
    // The sidecar polls its files each second.
    let swap = "cp '\(other).pem' '\(certs)/bundle.pem' && sleep 2.5"
    let result = try run(
      try resolve("python3"),
      [
        PythonInteropTests.python.appendingPathComponent("tls_resume.py").path,
        serverSidecar.inbound, "\(certs)/bundle.pem", "\(certs)/client.pem",
        "\(certs)/client-key.pem", "echo", "/t.T/Unary", "--between", swap,
      ])
    let outcome = try #require(try jsonObjects(result.stdout).first, "\(result.stderr)")
    #expect(outcome["first"] as? String == "0", "\(outcome)")
    #expect(outcome["reused"] as? Bool == false, "\(outcome)")
    #expect(outcome["second"] as? String == "closed", "\(outcome)")
    #expect(try refusals("untrusted_chain") == 1)
    #expect(try refusals("unverified_resumption") == 0)
    #expect(serverSidecar.process.log.contains("certificate reloaded"))
  }

  @Test func certificatesFromMeshctlVerifyWithOpenSSL() throws {
    let verify = try openssl([
      "verify", "-CAfile", "\(certs)/bundle.pem", "-untrusted", "\(certs)/issuer.pem",
      "\(certs)/client.pem",
    ])
    #expect(verify.stdout.contains("client.pem: OK"), "\(verify.stdout)\(verify.stderr)")
    let text = try openssl(["x509", "-in", "\(certs)/client.pem", "-noout", "-text"]).stdout
    #expect(text.contains("URI:spiffe://trellis.local/svc/client"))
    #expect(text.contains("CA:FALSE"))
    #expect(text.contains("TLS Web Server Authentication, TLS Web Client Authentication"))
  }

  @Test func theInboundListenerRefusesEveryCertificateThatIsNotAnSVIDOfTheMesh() throws {
    let valid =
      "subjectAltName=URI:spiffe://trellis.local/svc/client\n"
      + "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
      + "extendedKeyUsage=serverAuth,clientAuth\n"
    let issuer = "\(certs)/issuer.pem"

    // A well-formed SVID signed by the mesh's issuer is accepted: the control.
    let good = try craft("good", extensions: valid)
    #expect(try handshake(good, chain: issuer).contains("ALPN protocol: h2"))

    // Two URI SANs; cA=true: not SVIDs.
    let twoSANs = try craft(
      "two-sans",
      extensions: valid.replacingOccurrences(
        of: "svc/client\n", with: "svc/client,URI:spiffe://trellis.local/svc/other\n"))
    _ = try handshake(twoSANs, chain: issuer)
    let isCA = try craft(
      "is-ca",
      extensions: valid.replacingOccurrences(of: "CA:FALSE", with: "CA:TRUE")
        .replacingOccurrences(of: "digitalSignature", with: "digitalSignature,keyCertSign"))
    _ = try handshake(isCA, chain: issuer)
    // A certificate for servers only (extended key usage serverAuth) may not call.
    let serverOnly = try craft(
      "server-only",
      extensions: valid.replacingOccurrences(of: "serverAuth,clientAuth", with: "serverAuth"))
    _ = try handshake(serverOnly, chain: issuer)
    #expect(try refusals("not_an_svid") == 3)

    // A certificate from another CA, and an expired one from the mesh's own issuer.
    let otherRoot = mesh.directory.appendingPathComponent("other-root").path
    _ = try openssl([
      "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
      "-keyout", "\(otherRoot)-key.pem", "-subj", "/O=elsewhere", "-days", "1", "-out",
      "\(otherRoot).pem", "-addext", "basicConstraints=critical,CA:TRUE",
      "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    ])
    let foreign = try craft(
      "foreign", extensions: valid, signer: ("\(otherRoot).pem", "\(otherRoot)-key.pem"))
    _ = try handshake(foreign)
    let expired = try expiredCertificate(extensions: valid)
    _ = try handshake(expired, chain: issuer)
    #expect(try refusals("untrusted_chain") == 2)

    // No certificate at all, and plaintext HTTP/2.
    _ = try openssl([
      "s_client", "-connect", serverSidecar.inbound, "-CAfile", "\(certs)/bundle.pem", "-alpn",
      "h2",
    ])
    #expect(try refusals("no_certificate") == 1)
    let plaintext = try run(
      "curl", ["-s", "--http2-prior-knowledge", "http://\(serverSidecar.inbound)/t.T/Unary"])
    #expect(plaintext.status != 0)
    #expect(try refusals("not_tls") == 1)

    // A client that opens TCP and says nothing is closed after the handshake timeout (1 s).
    let silent = try run(
      "bash",
      [
        "-c",
        "exec 3<>/dev/tcp/\(serverSidecar.inbound.replacingOccurrences(of: ":", with: "/")); cat <&3",
      ])
    #expect(silent.status == 0)
    #expect(try refusals("handshake_timeout") == 1)

    // None of it reached the app: the server counted no call.
    let inbound = try serverSidecar.metric(
      "trellis_requests_total", ["direction": "inbound", "grpc_code": "OK"])
    #expect(inbound == 0)
  }

  /// A certificate whose validity ended yesterday, signed by the mesh's issuer (`openssl ca`
  /// can set the dates).
  func expiredCertificate(extensions: String) throws -> String {
    let base = mesh.directory.appendingPathComponent("expired").path
    let ca = mesh.directory.appendingPathComponent("ca").path
    try FileManager.default.createDirectory(atPath: ca, withIntermediateDirectories: true)
    try "".write(toFile: "\(ca)/index.txt", atomically: true, encoding: .utf8)
    try "1000\n".write(toFile: "\(ca)/serial", atomically: true, encoding: .utf8)
    try """
    [ca]
    default_ca = mesh
    [mesh]
    database = \(ca)/index.txt
    serial = \(ca)/serial
    new_certs_dir = \(ca)
    default_md = sha256
    policy = anything
    copy_extensions = none
    [anything]
    organizationName = optional
    [svid]
    \(extensions)
    """.write(toFile: "\(ca)/ca.cnf", atomically: true, encoding: .utf8)
    _ = try openssl([
      "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
      "-keyout", "\(base)-key.pem", "-subj", "/O=trellis.local", "-out", "\(base).csr",
    ])
    let result = try openssl([
      "ca", "-batch", "-config", "\(ca)/ca.cnf", "-cert", "\(certs)/issuer.pem", "-keyfile",
      "\(certs)/issuer-key.pem", "-in", "\(base).csr", "-out", "\(base).pem", "-extensions",
      "svid", "-startdate", "20200101000000Z", "-enddate", "20200102000000Z", "-notext",
    ])
    guard result.status == 0 else { throw HarnessError("openssl ca: \(result.stderr)") }
    return "\(base).pem"
  }

  @Test func replacingTheCertificateUnderLoadFailsNoCallAndNewConnectionsPresentTheNewSerial()
    throws
  {
    func servedSerial() throws -> String {
      let output = try handshake("\(certs)/operator.pem")
      let pem = try #require(
        output.range(of: "-----BEGIN CERTIFICATE-----").flatMap { start in
          output.range(of: "-----END CERTIFICATE-----", range: start.upperBound..<output.endIndex)
            .map { String(output[start.lowerBound..<$0.upperBound]) }
        })
      return try run("openssl", ["x509", "-noout", "-serial"], stdin: Data(pem.utf8)).stdout
    }
    func fileSerial() throws -> String {
      try openssl(["x509", "-in", "\(certs)/echo.pem", "-noout", "-serial"]).stdout
    }
    let before = try fileSerial()
    #expect(try servedSerial() == before)

    let load = try BackgroundLoad(through: clientSidecar.outbound, seconds: 4)
    Thread.sleep(forTimeInterval: 1)
    try mesh.meshctl(["certs", "issue", "--service", "echo", "--dir", certs])
    let after = try fileSerial()
    #expect(after != before)
    let summary = try load.finish()
    #expect(summary["failed"] as? Int == 0, "\(summary)")
    #expect((summary["ok"] as? Int ?? 0) > 50, "\(summary)")
    #expect(try servedSerial() == after)
    #expect(serverSidecar.process.log.contains("certificate reloaded"))
  }

  @Test func onSIGTERMCallsInFlightFinishAndTheSidecarExits() throws {
    let slow = Process()
    slow.executableURL = URL(fileURLWithPath: try resolve("python3"))
    slow.arguments = [script, "call", clientSidecar.outbound, "Sleep", "1500"]
    let output = Pipe()
    slow.standardOutput = output
    try slow.run()
    // SIGTERM only once the call has reached the app (the server sidecar opened its app
    // connection for it): a loaded machine may take a while to start the client.
    let deadline = Date().addingTimeInterval(20)
    while try serverSidecar.metric("trellis_connections_open", ["kind": "app"]) < 1,
      Date() < deadline
    {
      Thread.sleep(forTimeInterval: 0.05)
    }
    Thread.sleep(forTimeInterval: 0.2)
    let started = Date()
    let status = serverSidecar.process.stop()
    slow.waitUntilExit()
    let answer = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    #expect(answer.contains(#""code": "OK""#), "\(answer)")
    #expect(status == 0)
    #expect(Date().timeIntervalSince(started) < 8)
    #expect(serverSidecar.process.log.contains("draining"))
    // Gone now: a new call through the client's sidecar is UNAVAILABLE with the reason.
    let after = try run(
      try resolve("python3"), [script, "call", clientSidecar.outbound, "Unary", "x"])
    #expect(after.stdout.contains("UNAVAILABLE"), "\(after.stdout)")
  }

  /// A call that outlasts `drainTimeout` (a stream that never ends, say) does not hold the
  /// sidecar: when the timeout passes the call is ended and the sidecar exits.
  @Test func aCallOutlastingTheDrainTimeoutIsEndedAndTheSidecarExits() throws {
    let (server, client) = try mesh.pair(
      app: self.server.address, serverLimits: "  drainTimeout: 1s")
    defer { client.process.stop() }
    let slow = Process()
    slow.executableURL = URL(fileURLWithPath: try resolve("python3"))
    slow.arguments = [script, "call", client.outbound, "Sleep", "60000"]
    let output = Pipe()
    slow.standardOutput = output
    try slow.run()
    let deadline = Date().addingTimeInterval(20)
    while try server.metric("trellis_connections_open", ["kind": "app"]) < 1, Date() < deadline {
      Thread.sleep(forTimeInterval: 0.05)
    }
    let started = Date()
    let status = server.process.stop(timeout: 30)
    let stopping = Date().timeIntervalSince(started)
    slow.waitUntilExit()
    let answer = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    #expect(status == 0)
    #expect(stopping >= 1 && stopping < 10, "the sidecar took \(stopping) s to exit")
    #expect(Date().timeIntervalSince(started) < 15, "the call was not ended: \(answer)")
    #expect(!answer.contains(#""code": "OK""#), "\(answer)")
    #expect(server.process.log.contains("drain timed out; closing the calls still open"))
  }
}
