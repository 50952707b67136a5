import ArgumentParser
import Crypto
import Foundation
import MeshIdentity
import X509

extension Certs {
  /// `meshctl certs init`: the root, the issuer, the trust bundle and the operator identity.
  struct Init: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Create the mesh CA: a root, an intermediate issuer and the operator identity.",
      usage: "meshctl certs init [<options>]")

    @Option(help: "Folder to write to.") var dir = "certs"
    @Option(help: "The trust domain.") var trustDomain = SPIFFEID.defaultTrustDomain
    @Option(help: "The operator's name, in spiffe://<trust-domain>/operator/<name>.")
    var operatorName = "admin"
    @Flag(help: "Replace an existing CA (every certificate it issued stops being trusted).")
    var force = false

    func run() async throws {
      let files = CAFiles(dir: dir)
      if !force, FileManager.default.fileExists(atPath: files.rootKey) {
        throw MeshctlFailure(
          "\(files.rootKey) exists: the mesh already has a CA (use --force to replace it)")
      }
      do {
        let root = try SigningAuthority.makeRoot(trustDomain: trustDomain)
        let issuer = try root.makeIssuer(trustDomain: trustDomain)
        let operatorKey = P256.Signing.PrivateKey()
        let operatorID = try SPIFFEID.operator(operatorName, trustDomain: trustDomain)
        let operatorCertificate = try issuer.issueSVID(
          for: operatorID, publicKey: Certificate.PublicKey(operatorKey.publicKey),
          lifetime: 365 * 86_400)

        try CertificateFiles.writePrivateKey(root.key, to: files.rootKey)
        try CertificateFiles.writeCertificates([root.certificate], to: files.root)
        try CertificateFiles.writePrivateKey(issuer.key, to: files.issuerKey)
        try CertificateFiles.writeCertificates([issuer.certificate], to: files.issuer)
        try CertificateFiles.writeCertificates([root.certificate], to: files.bundle)
        try CertificateFiles.writePrivateKey(operatorKey, to: files.operatorKey)
        try CertificateFiles.writeCertificates(
          [operatorCertificate, issuer.certificate], to: files.operatorCertificate)
        print("created the mesh CA for trust domain \(trustDomain) in \(dir)/:")
        print("  root      \(files.root) (key \(files.rootKey), mode 0600)")
        print("  issuer    \(files.issuer) (key \(files.issuerKey), mode 0600)")
        print("  bundle    \(files.bundle)")
        print("  operator  \(files.operatorCertificate) as \(operatorID)")
      } catch let error as IdentityError {
        throw MeshctlFailure(error.description)
      }
    }
  }
}

/// Where `meshctl certs` keeps the CA.
