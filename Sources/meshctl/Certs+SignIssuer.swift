import ArgumentParser
import Foundation
import MeshIdentity
import X509

extension Certs {
  /// `meshctl certs sign-issuer CSR --out FILE`: the root signs the issuer a control plane
  /// prepared, so that each control plane sharing an etcd store signs with a key of its own.
  struct SignIssuer: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      commandName: "sign-issuer",
      abstract: "Sign with the root the issuer a control plane prepared (its CSR).",
      usage: "meshctl certs sign-issuer <csr> --out <file> [--dir <dir>]",
      discussion: """
        A control plane that joins others on etcd signs with an issuer of its own. It makes the \
        key, which never leaves its --data folder, writes the CSR to <data>/issuer.csr, and \
        waits for the certificate at <data>/issuer.pem. This command signs the CSR with the \
        root's key from --dir and writes the certificate to --out.
        """)

    @Argument(help: "The control plane's CSR (PEM): <data>/issuer.csr.") var csr: String
    @Option(help: "Where to write the issuer's certificate: <data>/issuer.pem.") var out: String
    @Option(help: "Folder holding the CA: the root and its key.") var dir = "certs"

    func run() async throws {
      let files = CAFiles(dir: dir)
      let root: SigningAuthority
      do {
        root = try files.loadRoot()
      } catch {
        throw MeshctlFailure("the root and its key are needed to sign an issuer: \(error)")
      }
      let request: CertificateSigningRequest
      do {
        request = try CertificateSigningRequest(
          pemEncoded: try String(contentsOfFile: csr, encoding: .utf8))
      } catch {
        throw MeshctlFailure("\(csr) is not a PEM certificate signing request: \(error)")
      }
      let issuer = try root.signIssuer(
        request: request, trustDomain: try RotateCA.trustDomain(of: root.certificate))
      try CertificateFiles.writeCertificates([issuer], to: out)
      print(
        "signed issuer \(issuer.subject), serial \(issuer.serialHex), valid until \(issuer.notValidAfter)"
      )
      print("  certificate  \(out)")
    }
  }
}

extension CAFiles {
  /// The root and its key (which `meshctl certs rotate-ca` and `sign-issuer` need).
  func loadRoot() throws -> SigningAuthority {
    SigningAuthority(
      certificate: try CertificateFiles.readCertificates(root)[0],
      key: try CertificateFiles.readPrivateKey(rootKey))
  }
}
