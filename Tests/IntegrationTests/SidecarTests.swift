import Foundation
import TestSupport
import Testing

/// Two sidecars between a client and a server, over mutual TLS with identities from
/// `meshctl certs`: calls of every kind pass through unchanged except for the verified caller
/// identity the inbound side adds.
@Suite(.serialized) final class SidecarTests {
  let mesh: MeshFixture
  let app: ServiceProcess
  let serverSidecar: RunningSidecar
  let clientSidecar: RunningSidecar
  let intruderSidecar: RunningSidecar
  var directory: URL { mesh.directory }
  var serverInbound: String { serverSidecar.inbound }

  init() throws {
    mesh = try MeshFixture("sidecar", services: ["echo", "client", "intruder"])
    app = try ServiceProcess(
      try resolve("python3"),
      [
        PythonInteropTests.python.appendingPathComponent("echo_server.py").path,
        mesh.directory.appendingPathComponent("stubs").path, integrationInputs.path,
      ])
    // The server's rules: `client` may call anything, `intruder` only Say.
    let serverMesh = try mesh.write(
      "server-mesh.yaml",
      """
      services:
        echo:
          authorization:
            allow:
              - from: client
              - from: spiffe://trellis.local/svc/intruder
                methods: [trellis.echo.v1.Echo/Say]
      """)
    serverSidecar = try mesh.sidecar("echo", app: app.address, mesh: serverMesh)
    let clientMesh = try mesh.write(
      "client-mesh.yaml",
      """
      services:
        echo:
          endpoints:
            - address: \(serverSidecar.inbound)
              labels: {version: v1}
      """)
    clientSidecar = try mesh.sidecar("client", app: "127.0.0.1:1", mesh: clientMesh)
    intruderSidecar = try mesh.sidecar("intruder", app: "127.0.0.1:1", mesh: clientMesh)
  }

  deinit {
    intruderSidecar.process.stop()
    clientSidecar.process.stop()
    serverSidecar.process.stop()
    app.stop()
  }

  func call(
    _ method: String, _ data: String, _ extra: [String] = [], via sidecar: RunningSidecar? = nil
  ) throws -> ProcessResult {
    // `client` resolves methods by reflection through the mesh; others may not call it.
    let schema = sidecar == nil ? [] : ["--protoset", try echoProtoset()]
    return try rpc(
      [
        "call", "--plaintext", "--authority", "echo", (sidecar ?? clientSidecar).outbound,
        "trellis.echo.v1.Echo/\(method)", "-d", data,
      ] + schema + extra)
  }

  @Test func everyKindOfCallPassesThrough() throws {
    let say = try call("Say", #"{"text":"hello"}"#)
    #expect(say.status == 0, "\(say.stderr)")
    let answer = try #require(try jsonObjects(say.stdout).first)
    #expect(answer["text"] as? String == "hello")
    let expand = try call("Expand", #"{"text":"n","repeat":3}"#)
    #expect(try jsonObjects(expand.stdout).map { $0["text"] as? String } == ["n 0", "n 1", "n 2"])
    let collect = try call("Collect", #"{"text":"a"} {"text":"b"}"#)
    #expect(try jsonObjects(collect.stdout).first?["text"] as? String == "a b")
    let chat = try call("Chat", #"{"text":"x"} {"text":"y"}"#)
    #expect(try jsonObjects(chat.stdout).map { $0["text"] as? String } == ["X", "Y"])
  }

  @Test func theServerSeesTheVerifiedCallerAndNoForgedCopy() throws {
    let say = try call(
      "Say", #"{"text":"who"}"#,
      ["-H", "x-trellis-peer-identity: spiffe://trellis.local/svc/forged", "-H", "x-custom: kept"])
    let headers = try #require(try jsonObjects(say.stdout).first?["headers"] as? [String: String])
    #expect(headers["x-trellis-peer-identity"] == "spiffe://trellis.local/svc/client")
    #expect(headers["x-custom"] == "kept")
  }

  @Test func statusesAndMessagesPassUnchanged() throws {
    let fail = try call("Say", #"{"text":"100% ünïcode","failWithCode":9}"#)
    #expect(fail.status == 64 + 9)
    #expect(fail.stderr == "rpc: FAILED_PRECONDITION: failing as asked: 100% ünïcode\n")
  }

  @Test func anUnknownServiceIsUnavailableWithTheReason() throws {
    let result = try rpc([
      "call", "--plaintext", "--authority", "nowhere", clientSidecar.outbound,
      "trellis.echo.v1.Echo/Say", "--protoset", try echoProtoset(), "-d", "{}",
    ])
    #expect(result.status == 64 + 14)
    #expect(result.stderr == "rpc: UNAVAILABLE: no route to 'nowhere'\n")
  }

  @Test func theInboundListenerRefusesCallersWithoutAMeshIdentity() throws {
    // Plaintext h2c to the inbound listener fails: it speaks only TLS.
    let plaintext = try rpc(["list", "--plaintext", serverInbound])
    #expect(plaintext.status != 0)
    // TLS without a client certificate: the handshake is refused (openssl as the client).
    let certs = mesh.certs
    let noCert = try run(
      "openssl",
      [
        "s_client", "-connect", serverInbound, "-CAfile", "\(certs)/bundle.pem", "-alpn", "h2",
        "-tls1_3",
      ],
      stdin: Data())
    #expect(noCert.stdout.contains("Verify return code: 0") || noCert.status != 0)
    #expect(!app.log.contains("openssl"))
    // With the mesh's operator certificate the handshake completes.
    let withCert = try run(
      "openssl",
      [
        "s_client", "-connect", serverInbound, "-CAfile", "\(certs)/bundle.pem", "-alpn", "h2",
        "-cert", "\(certs)/operator.pem", "-key", "\(certs)/operator-key.pem",
      ], stdin: Data())
    #expect(withCert.stdout.contains("ALPN protocol: h2"), "\(withCert.stdout)\(withCert.stderr)")
    #expect(withCert.stdout.contains("Protocol  : TLSv1.3") || withCert.stdout.contains("TLSv1.3"))
  }

  @Test func callersTheRulesDoNotAllowArePermissionDeniedAndTheAppSeesNothing() throws {
    let before = appCalls(app)
    let denied = try call("Expand", #"{"text":"n","repeat":1}"#, via: intruderSidecar)
    #expect(denied.status == 64 + 7)
    #expect(
      denied.stderr
        == "rpc: PERMISSION_DENIED: spiffe://trellis.local/svc/intruder is not allowed to call /trellis.echo.v1.Echo/Expand on echo\n"
    )
    #expect(appCalls(app) == before, "\(app.log)")
    // The method the rules name is allowed for the same caller.
    let allowed = try call("Say", #"{"text":"hi"}"#, via: intruderSidecar)
    #expect(allowed.status == 0, "\(allowed.stderr)")
    #expect(appCalls(app) == before + 1)
    #expect(
      try serverSidecar.metric(
        "trellis_requests_total",
        [
          "direction": "inbound", "method": "/trellis.echo.v1.Echo/Expand",
          "grpc_code": "PERMISSION_DENIED",
        ])
        == 1)
  }

  @Test func theAdminPortReportsLivenessReadinessMetricsAndCertificates() throws {
    #expect(try serverSidecar.adminPage("/live").status == 200)
    #expect(try serverSidecar.adminPage("/ready") == (200, "ready"))
    #expect(try serverSidecar.adminPage("/nope").status == 404)
    for _ in 0..<3 {
      let counted = try call("Say", #"{"text":"count me"}"#)
      #expect(counted.status == 0, "\(counted.stderr)")
    }
    let labels = [
      "direction": "outbound", "service": "echo", "method": "/trellis.echo.v1.Echo/Say",
      "grpc_code": "OK",
    ]
    let page = try clientSidecar.adminPage("/metrics").body
    #expect(try clientSidecar.metric("trellis_requests_total", labels) == 3, "\(page)")
    #expect(
      try clientSidecar.metric("trellis_request_duration_seconds_count", labels) == 3, "\(page)")
    var inbound = labels
    inbound["direction"] = "inbound"
    #expect(try serverSidecar.metric("trellis_requests_total", inbound) == 3)
    // /certs names the identity and the serial `meshctl certs inspect` shows for the file.
    let certs = try #require(
      try JSONSerialization.jsonObject(with: Data(try serverSidecar.adminPage("/certs").body.utf8))
        as? [String: Any])
    #expect(certs["identity"] as? String == "spiffe://trellis.local/svc/echo")
    let inspect = try run(
      binary("meshctl"), ["certs", "inspect", "\(mesh.certs)/echo.pem", "-o", "json"])
    let inspected = try #require(try jsonObjects(inspect.stdout).first)
    #expect(
      (certs["serial"] as? String)?.replacingOccurrences(of: ":", with: "").lowercased()
        == (inspected["serial"] as? String)?.replacingOccurrences(of: ":", with: "").lowercased())
    #expect((certs["remaining_seconds"] as? Int ?? 0) > 3600)
  }

  @Test func mistakesInTheBootstrapAndMeshFilesAreNamedWithFileLineAndField() throws {
    let badMesh = try mesh.write(
      "bad-mesh.yaml",
      """
      services:
        echo:
          endpoints:
            - adress: 127.0.0.1:1
      """)
    let file = try mesh.write(
      "bad-sidecar.yaml", mesh.bootstrap("client", app: "127.0.0.1:1", mesh: "bad-mesh.yaml"))
    let result = try run(binary("sidecar"), ["--config", file])
    #expect(result.status != 0)
    #expect(
      result.stderr.contains(
        """
        \(badMesh):4:9: services.echo.endpoints[0].adress: unknown field; expected one of address, \
        labels
        """
      ), "\(result.stderr)")
    let badBootstrap = try mesh.write(
      "bad-bootstrap.yaml",
      mesh.bootstrap("client", app: "127.0.0.1:99999"))
    let second = try run(binary("sidecar"), ["--config", badBootstrap])
    #expect(second.status != 0)
    #expect(
      second.stderr.contains("bad-bootstrap.yaml:2:6: app: '99999' is not a port"),
      "\(second.stderr)")
    // A listen address another process holds is named, with the listener, in one line.
    let taken = try mesh.write(
      "taken-bootstrap.yaml",
      mesh.bootstrap("client", app: "127.0.0.1:1", inbound: serverInbound))
    let third = try run(binary("sidecar"), ["--config", taken])
    #expect(third.status == 1)
    #expect(
      third.stderr.hasSuffix(
        "sidecar: cannot listen on \(serverInbound) (inbound): address already in use\n"),
      "\(third.stderr)")
  }

  func echoProtoset() throws -> String {
    let path = directory.appendingPathComponent("echo.protoset").path
    let result = try run(
      "protoc",
      [
        "-I", integrationInputs.path, "-I", "/usr/include", "--include_imports",
        "--descriptor_set_out=\(path)", "echo.proto",
      ])
    guard result.status == 0 else { throw HarnessError(result.stderr) }
    return path
  }
}
