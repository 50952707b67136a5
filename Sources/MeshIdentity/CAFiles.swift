#if canImport(FoundationEssentials)
  import FoundationEssentials
#else
  import Foundation
#endif

/// Where `meshctl certs init` keeps the mesh's CA: the root, the issuer it signed, the trust
/// bundle, and the operator identity.
public struct CAFiles: Sendable {
  public let dir: String

  public init(dir: String) { self.dir = dir }

  public var root: String { "\(dir)/root.pem" }
  public var rootKey: String { "\(dir)/root-key.pem" }
  public var issuer: String { "\(dir)/issuer.pem" }
  public var issuerKey: String { "\(dir)/issuer-key.pem" }
  public var bundle: String { "\(dir)/bundle.pem" }
  public var operatorCertificate: String { "\(dir)/operator.pem" }
  public var operatorKey: String { "\(dir)/operator-key.pem" }

  /// The issuer, ready to sign.
  public func loadIssuer() throws(IdentityError) -> SigningAuthority {
    guard FileManager.default.fileExists(atPath: issuerKey) else {
      if FileManager.default.fileExists(atPath: issuer) {
        throw IdentityError(
          """
          \(issuer) has no key beside it: since `meshctl certs rotate-ca` the issuer's key is kept \
          by the control plane; get certificates from it (meshctl certs request, or a sidecar with \
          a join token)
          """
        )
      }
      throw IdentityError("no CA in \(dir)/: run meshctl certs init first")
    }
    do {
      return SigningAuthority(
        certificate: try CertificateFiles.readCertificates(issuer)[0],
        key: try CertificateFiles.readPrivateKey(issuerKey))
    } catch let error as IdentityError {
      throw error
    } catch {
      throw IdentityError("cannot read the issuer in \(dir)/: \(error)")
    }
  }
}
