import Crypto
import SwiftASN1
import X509

#if canImport(FoundationEssentials)
  import FoundationEssentials
#else
  import Foundation
#endif

/// A certificate that signs others, with its private key: the mesh's root, or the intermediate
/// issuer that signs workload certificates.
///
/// Each one gets its own subject (carrying a random generation tag) and key identifiers, so
/// chains build unambiguously while two generations overlap during a rotation.
public struct SigningAuthority: Sendable {
  public let certificate: Certificate
  /// The ECDSA P-256 key, the only kind the mesh uses.
  public let key: P256.Signing.PrivateKey

  public init(certificate: Certificate, key: P256.Signing.PrivateKey) {
    self.certificate = certificate
    self.key = key
  }

  var privateKey: Certificate.PrivateKey { Certificate.PrivateKey(key) }

  /// A new self-signed root for a trust domain.
  public static func makeRoot(
    trustDomain: String = SPIFFEID.defaultTrustDomain, validity: TimeInterval = 10 * 365 * 86_400,
    now: Date = Date()
  ) throws -> SigningAuthority {
    let p256 = P256.Signing.PrivateKey()
    let key = Certificate.PrivateKey(p256)
    let subject = try authorityName("Trellis Root CA", trustDomain: trustDomain)
    let trustDomainID = try SPIFFEID(parsing: "spiffe://\(trustDomain)")
    let certificate = try Certificate(
      version: .v3, serialNumber: .init(), publicKey: key.publicKey,
      notValidBefore: now.addingTimeInterval(-300), notValidAfter: now.addingTimeInterval(validity),
      issuer: subject, subject: subject, signatureAlgorithm: .ecdsaWithSHA256,
      extensions: try Certificate.Extensions {
        Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 1))
        Critical(KeyUsage(keyCertSign: true, cRLSign: true))
        SubjectKeyIdentifier(hash: key.publicKey)
        SubjectAlternativeNames([.uniformResourceIdentifier(trustDomainID.description)])
      },
      issuerPrivateKey: key)
    return SigningAuthority(certificate: certificate, key: p256)
  }

  /// A new intermediate issuer signed by this root. It lives no longer than the root.
  public func makeIssuer(
    trustDomain: String = SPIFFEID.defaultTrustDomain, validity: TimeInterval = 365 * 86_400,
    now: Date = Date()
  ) throws -> SigningAuthority {
    let p256 = P256.Signing.PrivateKey()
    let certificate = try signIssuer(
      publicKey: Certificate.PublicKey(p256.publicKey), trustDomain: trustDomain,
      validity: validity, now: now)
    return SigningAuthority(certificate: certificate, key: p256)
  }

  /// An intermediate issuer's certificate for the key of a certificate signing request (the
  /// control plane's next issuer, whose key never leaves it). Only the key is taken from the
  /// request, which must be self-signed over ECDSA P-256.
  public func signIssuer(
    request: CertificateSigningRequest, trustDomain: String = SPIFFEID.defaultTrustDomain,
    validity: TimeInterval = 365 * 86_400, now: Date = Date()
  ) throws -> Certificate {
    try request.checkWorkloadRequest()
    return try signIssuer(
      publicKey: request.publicKey, trustDomain: trustDomain, validity: validity, now: now)
  }

  private func signIssuer(
    publicKey: Certificate.PublicKey, trustDomain: String, validity: TimeInterval, now: Date
  ) throws -> Certificate {
    let trustDomainID = try SPIFFEID(parsing: "spiffe://\(trustDomain)")
    return try Certificate(
      version: .v3, serialNumber: .init(), publicKey: publicKey,
      notValidBefore: now.addingTimeInterval(-300),
      notValidAfter: min(now.addingTimeInterval(validity), self.certificate.notValidAfter),
      issuer: self.certificate.subject,
      subject: try Self.authorityName("Trellis Issuer CA", trustDomain: trustDomain),
      signatureAlgorithm: .ecdsaWithSHA256,
      extensions: try Certificate.Extensions {
        Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
        Critical(KeyUsage(keyCertSign: true, cRLSign: true))
        SubjectKeyIdentifier(hash: publicKey)
        try authorityKeyIdentifier()
        SubjectAlternativeNames([.uniformResourceIdentifier(trustDomainID.description)])
      },
      issuerPrivateKey: privateKey)
  }

  /// An X.509-SVID for `identity` over `publicKey`: one URI SAN, not a CA, key usage
  /// digitalSignature (critical), extended key usage serverAuth and clientAuth. It starts a
  /// minute early to absorb clock skew and never outlives this authority.
  public func issueSVID(
    for identity: SPIFFEID, publicKey: Certificate.PublicKey, lifetime: TimeInterval = 86_400,
    now: Date = Date()
  ) throws -> Certificate {
    try Certificate(
      version: .v3, serialNumber: .init(), publicKey: publicKey,
      notValidBefore: now.addingTimeInterval(-60),
      notValidAfter: min(now.addingTimeInterval(lifetime), certificate.notValidAfter),
      issuer: certificate.subject,
      subject: try DistinguishedName {
        OrganizationName(identity.trustDomain)
        CommonName(identity.serviceName ?? String(identity.path.split(separator: "/").last ?? ""))
      },
      signatureAlgorithm: .ecdsaWithSHA256,
      extensions: try Certificate.Extensions {
        Critical(BasicConstraints.notCertificateAuthority)
        Critical(KeyUsage(digitalSignature: true))
        try ExtendedKeyUsage([.serverAuth, .clientAuth])
        SubjectKeyIdentifier(hash: publicKey)
        try authorityKeyIdentifier()
        SubjectAlternativeNames([.uniformResourceIdentifier(identity.description)])
      },
      issuerPrivateKey: privateKey)
  }

  /// Signs a certificate signing request into an SVID for `identity`. The identity is the
  /// authority's decision (from the join token or the caller's current certificate), never
  /// read from the request; the request must be self-signed over an ECDSA P-256 key.
  public func issueSVID(
    for identity: SPIFFEID, request: CertificateSigningRequest, lifetime: TimeInterval = 86_400,
    now: Date = Date()
  ) throws -> Certificate {
    try request.checkWorkloadRequest()
    return try issueSVID(
      for: identity, publicKey: request.publicKey, lifetime: lifetime, now: now)
  }

  private func authorityKeyIdentifier() throws -> AuthorityKeyIdentifier {
    let ski = try certificate.extensions.subjectKeyIdentifier
    return AuthorityKeyIdentifier(
      keyIdentifier: ski?.keyIdentifier
        ?? SubjectKeyIdentifier(hash: certificate.publicKey)
        .keyIdentifier)
  }

  private static func authorityName(
    _ name: String, trustDomain: String
  ) throws
    -> DistinguishedName
  {
    // A random generation tag gives every root and issuer its own subject.
    let generation = (0..<4).map { _ in hexByte(UInt8.random(in: 0...255)) }
      .joined()
    return try DistinguishedName {
      OrganizationName(trustDomain)
      CommonName("\(name) \(generation)")
    }
  }
}

/// A certificate or key that cannot be made or used, with the reason.
public struct IdentityError: Error, CustomStringConvertible, Equatable {
  public let description: String
  public init(_ description: String) { self.description = description }
}

extension CertificateSigningRequest {
  /// A request the mesh signs: self-signed, over an ECDSA P-256 key.
  public func checkWorkloadRequest() throws(IdentityError) {
    guard publicKey.isValidSignature(signature, for: self) else {
      throw IdentityError("the certificate signing request is not signed by its own key")
    }
    guard P256.Signing.PublicKey(publicKey) != nil else {
      throw IdentityError("the certificate signing request's key is not ECDSA P-256")
    }
  }

  /// A workload's request over `key`, PEM. It names nothing: the control plane decides the
  /// identity from the join token or the caller's current certificate.
  public static func workloadPEM(_ key: P256.Signing.PrivateKey) throws -> String {
    try CertificateSigningRequest(
      version: .v1, subject: DistinguishedName(), privateKey: Certificate.PrivateKey(key),
      attributes: CertificateSigningRequest.Attributes()
    ).serializeAsPEM().pemString
  }
}
