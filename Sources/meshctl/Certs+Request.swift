import ArgumentParser
import Crypto
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import MeshConfig
import MeshControlClient
import MeshIdentity
import MeshProtos
import MeshServiceKit
import SwiftASN1
import X509

extension Certs {
  /// `meshctl certs request --token-file F --join HOST:PORT --name NAME`: a key made here, a
  /// CSR sent to the control plane's join listener with a join token, and the SVID it signs.
  struct Request: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      abstract:
        """
        Get a workload certificate from the control plane with a join token (the key never leaves \
        this machine).
        """,
      usage: "meshctl certs request [<options>] --token-file <token-file> --name <name>"
    )

    @Option(help: "File holding the join token from `meshctl tokens create`.") var tokenFile: String
    @Option(help: "The control plane's join listener, HOST:PORT.") var join = "127.0.0.1:15001"
    @Option(help: "The trust bundle that verifies the control plane.") var bundle =
      "certs/bundle.pem"
    @Option(help: "Write <name>.pem, <name>-key.pem and <name>-bundle.pem here.") var out = "."
    @Option(help: "The files' base name.") var name: String
    @Option(help: "The lifetime to ask for: 90s, 15m, 24h (default: the control plane's).")
    var lifetime: String?
    @Option(
      help:
        """
        Send this PEM CSR (a key made elsewhere, by openssl say) instead of making a key here; \
        only the certificate is written.
        """
    )
    var csr: String?

    func run() async throws {
      let token: String
      do {
        token = try String(contentsOfFile: tokenFile, encoding: .utf8)
          .trimmingCharacters(in: .whitespacesAndNewlines)
      } catch {
        throw MeshctlFailure("cannot read \(tokenFile)")
      }
      guard FileManager.default.fileExists(atPath: bundle) else {
        throw MeshctlFailure("cannot read \(bundle): pass the mesh's trust bundle with --bundle")
      }
      let target: HostPort
      do {
        target = try HostPort(parsing: join)
      } catch {
        throw ValidationError("--join: \(error)")
      }
      var key: P256.Signing.PrivateKey?
      var request = Trellis_Mesh_V1_CertifyRequest()
      if let csr {
        guard let text = try? String(contentsOfFile: csr, encoding: .utf8) else {
          throw MeshctlFailure("cannot read \(csr)")
        }
        request.csr = text
      } else {
        let made = P256.Signing.PrivateKey()
        request.csr = try CertificateSigningRequest.workloadPEM(made)
        key = made
      }
      request.token = token
      if let lifetime {
        request.lifetimeSeconds = Int64(try durationOption(lifetime, "--lifetime"))
      }
      let transport = try HTTP2ClientTransport.Posix(
        target: target.target,
        transportSecurity: .meshJoin(bundle: bundle))
      let response: Trellis_Mesh_V1_CertifyResponse
      do {
        response = try await withCommandClient(transport: transport) { [request] client in
          try await Trellis_Mesh_V1_Identity.Client(wrapping: client).certify(request)
        }
      } catch let error as RPCError {
        throw MeshctlFailure("\(error.code.canonicalName): \(error.message)")
      }
      if let key { try CertificateFiles.writePrivateKey(key, to: "\(out)/\(name)-key.pem") }
      try Data(response.certificateChain.utf8).write(to: URL(fileURLWithPath: "\(out)/\(name).pem"))
      try Data(response.trustBundle.utf8).write(
        to: URL(fileURLWithPath: "\(out)/\(name)-bundle.pem"))
      print(
        """
        issued \(response.spiffeID), serial \(response.serial), valid until \
        \(Date(timeIntervalSince1970: TimeInterval(response.notAfterUnix)))
        """
      )
    }
  }
}
