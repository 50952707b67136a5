import Foundation
import TestSupport
import Testing

/// Two sidecars between a client and a server, over mutual TLS with identities from
/// `meshctl certs`: calls of every kind pass through unchanged except for the verified caller
/// identity the inbound side adds.
@Suite(.serialized) final class SidecarTests {
  let directory: URL
  let app: ServiceProcess
  let serverSidecar: ServiceProcess
  let clientSidecar: ServiceProcess
  let serverInbound: String

  init() throws {
    directory = try makeTemporaryDirectory("sidecar")
    let certs = directory.appendingPathComponent("certs").path
    for arguments in [
      ["certs", "init", "--dir", certs], ["certs", "issue", "--service", "echo", "--dir", certs],
      ["certs", "issue", "--service", "client", "--dir", certs],
    ] {
      let result = try run(binary("meshctl"), arguments)
      guard result.status == 0 else { throw HarnessError("meshctl \(arguments): \(result.stderr)") }
    }
    app = try ServiceProcess(
      try resolve("python3"),
      [
        PythonInteropTests.python.appendingPathComponent("echo_server.py").path,
        directory.appendingPathComponent("stubs").path, integrationInputs.path,
      ])
    func sidecar(_ service: String, _ extra: [String]) throws -> ServiceProcess {
      try ServiceProcess(
        binary("sidecar"),
        [
          "--service", service, "--inbound", "127.0.0.1:0", "--outbound", "127.0.0.1:0",
          "--cert", "\(certs)/\(service).pem", "--key", "\(certs)/\(service)-key.pem",
          "--bundle", "\(certs)/bundle.pem",
        ] + extra)
    }
    serverSidecar = try sidecar("echo", ["--app", app.address])
    serverInbound = try Self.inboundAddress(serverSidecar.log)
    clientSidecar = try sidecar(
      "client", ["--app", "127.0.0.1:1", "--route", "echo=\(serverInbound)"])
  }

  deinit {
    clientSidecar.stop()
    serverSidecar.stop()
    app.stop()
  }

  static func inboundAddress(_ log: String) throws -> String {
    for line in log.split(separator: "\n") where line.contains("\"listening\"") {
      let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
      if let address = object?["inbound_address"] as? String { return address }
    }
    throw HarnessError("no inbound address in \(log)")
  }

  func call(_ method: String, _ data: String, _ extra: [String] = []) throws -> ProcessResult {
    try rpc(
      [
        "call", "--plaintext", "--authority", "echo", clientSidecar.address,
        "trellis.echo.v1.Echo/\(method)", "-d", data,
      ]
        + extra)
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
      "call", "--plaintext", "--authority", "nowhere", clientSidecar.address,
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
    let certs = directory.appendingPathComponent("certs").path
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
