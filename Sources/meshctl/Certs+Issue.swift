import ArgumentParser
import Crypto
import Foundation
import MeshIdentity
import X509

extension Certs {
  /// `meshctl certs issue --service NAME`: a key and an SVID from the issuer, for static setups
  /// and tests (the control plane issues them in a running mesh).
  struct Issue: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Issue a workload key and X.509-SVID for a service from the mesh CA.",
      usage: "meshctl certs issue [<options>] --service <service>")

    @Option(help: "The service; its identity is spiffe://<trust-domain>/svc/<service>.")
    var service: String
    @Option(help: "Folder holding the CA.") var dir = "certs"
    @Option(help: "Folder to write <service>.pem and <service>-key.pem to (default: the CA's).")
    var out: String?
    @Option(help: "How long the certificate is valid: 90s, 15m, 24h, 7d.") var lifetime = "24h"

    func run() async throws {
      let files = CAFiles(dir: dir)
      let issuer: SigningAuthority
      do {
        issuer = try files.loadIssuer()
      } catch {
        throw MeshctlFailure(error.description)
      }
      let seconds = try durationOption(lifetime, "--lifetime")
      let trustDomain =
        (try? SVIDValidator.leafIdentity(
          try CertificateFiles.readCertificates(files.operatorCertificate)[0]))?
        .trustDomain ?? SPIFFEID.defaultTrustDomain
      let identity: SPIFFEID
      do {
        identity = try SPIFFEID.workload(service, trustDomain: trustDomain)
      } catch {
        throw ValidationError("--service \(service): \(error)")
      }
      let key = P256.Signing.PrivateKey()
      let folder = out ?? dir
      do {
        let certificate = try issuer.issueSVID(
          for: identity, publicKey: Certificate.PublicKey(key.publicKey), lifetime: seconds)
        try CertificateFiles.writePrivateKey(key, to: "\(folder)/\(service)-key.pem")
        try CertificateFiles.writeCertificates(
          [certificate, issuer.certificate], to: "\(folder)/\(service).pem")
        print(
          """
          issued \(identity), serial \(certificate.serialHex), valid until \
          \(certificate.notValidAfter)
          """
        )
        print("  certificate  \(folder)/\(service).pem (with the issuer)")
        print("  key          \(folder)/\(service)-key.pem (mode 0600)")
      } catch let error as IdentityError {
        throw MeshctlFailure(error.description)
      }
    }
  }
}
