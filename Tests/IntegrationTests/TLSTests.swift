import Foundation
import TestSupport
import Testing

/// `rpc` over TLS (its default) against Python's grpcio, with certificates made by the openssl
/// CLI: server verification, `--server-name`, and client certificates for mutual TLS.
@Suite struct TLSTests {
  /// A CA, a server certificate for `echo.test` and a client certificate, in `directory`.
  static func makeCertificates(in directory: URL) throws {
    func openssl(_ arguments: [String]) throws {
      let result = try run("openssl", arguments, directory: directory)
      guard result.status == 0 else { throw HarnessError("openssl \(arguments): \(result.stderr)") }
    }
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    try openssl(
      ["req", "-x509"] + ec + [
        "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=Test CA",
      ])
    for (name, extensions) in [
      ("server", "subjectAltName=DNS:echo.test\nextendedKeyUsage=serverAuth"),
      (
        "client",
        "subjectAltName=URI:spiffe://trellis.local/operator/test\nextendedKeyUsage=clientAuth"
      ),
    ] {
      try openssl(
        ["req"] + ec + ["-keyout", "\(name).key", "-out", "\(name).csr", "-subj", "/CN=\(name)"])
      try extensions.write(
        to: directory.appendingPathComponent("\(name).ext"), atomically: true, encoding: .utf8)
      try openssl([
        "x509", "-req", "-in", "\(name).csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial",
        "-out", "\(name).pem", "-days", "1", "-extfile", "\(name).ext",
      ])
    }
  }

  @Test func verifiesTheServerAndPresentsAClientCertificate() throws {
    let directory = try makeTemporaryDirectory("tls")
    try Self.makeCertificates(in: directory)
    func path(_ name: String) -> String { directory.appendingPathComponent(name).path }
    let server = try ServiceProcess(
      try resolve("python3"),
      [
        PythonInteropTests.python.appendingPathComponent("echo_server.py").path, path("stubs"),
        integrationInputs.path, "--tls", path("server.pem"), path("server.key"),
        "--client-ca", path("ca.pem"),
      ])
    defer { server.stop() }
    let say = ["trellis.echo.v1.Echo/Say", "-d", #"{"text":"over tls"}"#]

    // TLS is the default: an untrusted server certificate is refused.
    let untrusted = try rpc(["call", server.address] + say)
    #expect(untrusted.status == 1, "\(untrusted.stdout)")
    #expect(untrusted.stderr.hasPrefix("rpc: "))

    // Trusted, but the certificate names echo.test, not 127.0.0.1: --server-name fixes that;
    // without a client certificate the server (which requires one) refuses.
    let noClientCert = try rpc(
      ["call", server.address, "--cacert", path("ca.pem"), "--server-name", "echo.test"] + say)
    #expect(noClientCert.status == 1)

    let mutual = try rpc(
      [
        "call", server.address, "--cacert", path("ca.pem"), "--server-name", "echo.test",
        "--cert", path("client.pem"), "--key", path("client.key"),
      ] + say)
    #expect(mutual.status == 0, "\(mutual.stderr)")
    #expect(try jsonObjects(mutual.stdout).first?["text"] as? String == "over tls")

    let wrongName = try rpc(
      [
        "call", server.address, "--cacert", path("ca.pem"), "--server-name", "other.test",
        "--cert", path("client.pem"), "--key", path("client.key"),
      ] + say)
    #expect(wrongName.status == 1)

    let missingKey = try rpc(["call", server.address, "--cert", path("client.pem")] + say)
    #expect(missingKey.status == 2)
    #expect(missingKey.stderr.contains("--cert and --key must be given together"))
  }
}
