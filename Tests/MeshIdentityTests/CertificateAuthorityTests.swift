import Crypto
import Foundation
import MeshIdentity
import SwiftASN1
import TestSupport
import Testing
import X509

/// The CA issues SVIDs that the validator accepts and that openssl, an independent party,
/// verifies; the validator refuses every certificate that is not a proper SVID of the mesh.
@Suite struct CertificateAuthorityTests {
  let root: SigningAuthority
  let issuer: SigningAuthority

  init() throws {
    root = try SigningAuthority.makeRoot()
    issuer = try root.makeIssuer()
  }

  func issue(
    _ service: String = "users", lifetime: TimeInterval = 3600, now: Date = Date()
  )
    throws -> Certificate
  {
    let key = P256.Signing.PrivateKey()
    return try issuer.issueSVID(
      for: try .workload(service), publicKey: .init(key.publicKey), lifetime: lifetime, now: now)
  }

  func validator() -> SVIDValidator {
    SVIDValidator(bundle: TrustBundle(roots: [root.certificate]))
  }

  @Test func issuedSVIDFollowsTheRules() async throws {
    let leaf = try issue()
    #expect(try leaf.extensions.basicConstraints == .notCertificateAuthority)
    let usage = try #require(try leaf.extensions.keyUsage)
    #expect(usage.digitalSignature && !usage.keyCertSign && !usage.cRLSign)
    #expect(leaf.extensions.first { $0.oid == .X509ExtensionID.keyUsage }?.critical == true)
    let eku = try #require(try leaf.extensions.extendedKeyUsage)
    #expect(eku.contains(.serverAuth) && eku.contains(.clientAuth))
    #expect(leaf.notValidAfter.timeIntervalSince(leaf.notValidBefore) <= 3600 + 60)
    let identity = try await validator().validate(chain: [leaf, issuer.certificate], as: .client)
    #expect(identity.description == "spiffe://trellis.local/svc/users")
    // Root and issuer have distinct subjects and key identifiers.
    #expect(root.certificate.subject != issuer.certificate.subject)
    #expect(
      try root.certificate.extensions.subjectKeyIdentifier
        != issuer.certificate.extensions.subjectKeyIdentifier)
  }

  @Test func opensslVerifiesTheChain() throws {
    let directory = try makeTemporaryDirectory("openssl-verify")
    let leaf = try issue()
    try CertificateFiles.writeCertificates(
      [root.certificate], to: directory.appendingPathComponent("root.pem").path)
    try CertificateFiles.writeCertificates(
      [issuer.certificate], to: directory.appendingPathComponent("issuer.pem").path)
    try CertificateFiles.writeCertificates(
      [leaf], to: directory.appendingPathComponent("leaf.pem").path)
    let result = try run(
      "openssl",
      [
        "verify", "-CAfile", "root.pem", "-untrusted", "issuer.pem", "-purpose", "sslclient",
        "leaf.pem",
      ],
      directory: directory)
    #expect(result.status == 0, "\(result.stdout)\(result.stderr)")
    #expect(result.stdout.contains("leaf.pem: OK"))
    let server = try run(
      "openssl",
      [
        "verify", "-CAfile", "root.pem", "-untrusted", "issuer.pem", "-purpose", "sslserver",
        "leaf.pem",
      ],
      directory: directory)
    #expect(server.status == 0, "\(server.stdout)\(server.stderr)")
    let text = try run(
      "openssl", ["x509", "-in", "leaf.pem", "-noout", "-text"], directory: directory)
    #expect(text.stdout.contains("URI:spiffe://trellis.local/svc/users"))
    #expect(text.stdout.contains("CA:FALSE"))
    #expect(text.stdout.contains("ASN1 OID: prime256v1"))
  }

  @Test func refusesAnotherCAsCertificate() async throws {
    let otherIssuer = try SigningAuthority.makeRoot().makeIssuer()
    let key = P256.Signing.PrivateKey()
    let foreign = try otherIssuer.issueSVID(
      for: try .workload("users"), publicKey: .init(key.publicKey))
    await #expect {
      try await validator().validate(chain: [foreign, otherIssuer.certificate], as: .client)
    } throws: { ($0 as? SVIDRejection)?.reason == .untrusted }
  }

  @Test func refusesAnExpiredCertificate() async throws {
    let old = try issue(lifetime: 60, now: Date().addingTimeInterval(-3600))
    await #expect {
      try await validator().validate(chain: [old, issuer.certificate], as: .client)
    } throws: { ($0 as? SVIDRejection)?.reason == .untrusted }
  }

  @Test func refusesAnotherTrustDomain() async throws {
    let key = P256.Signing.PrivateKey()
    let stranger = try issuer.issueSVID(
      for: try SPIFFEID(parsing: "spiffe://elsewhere.org/svc/users"),
      publicKey: .init(key.publicKey))
    await #expect {
      try await validator().validate(chain: [stranger, issuer.certificate], as: .client)
    } throws: { ($0 as? SVIDRejection)?.reason == .wrongTrustDomain }
  }

  @Test func refusesCertificatesThatAreNotSVIDs() async throws {
    func forged(_ extensions: Certificate.Extensions) throws -> Certificate {
      let key = P256.Signing.PrivateKey()
      return try Certificate(
        version: .v3, serialNumber: .init(), publicKey: .init(key.publicKey),
        notValidBefore: Date().addingTimeInterval(-60),
        notValidAfter: Date().addingTimeInterval(3600),
        issuer: issuer.certificate.subject, subject: try DistinguishedName { CommonName("forged") },
        signatureAlgorithm: .ecdsaWithSHA256, extensions: extensions,
        issuerPrivateKey: .init(issuer.key))
    }
    let twoURIs = try forged(
      try Certificate.Extensions {
        Critical(KeyUsage(digitalSignature: true))
        SubjectAlternativeNames([
          .uniformResourceIdentifier("spiffe://trellis.local/svc/a"),
          .uniformResourceIdentifier("spiffe://trellis.local/svc/b"),
        ])
      })
    let isCA = try forged(
      try Certificate.Extensions {
        Critical(BasicConstraints.isCertificateAuthority(maxPathLength: nil))
        SubjectAlternativeNames([.uniformResourceIdentifier("spiffe://trellis.local/svc/a")])
      })
    let signsCerts = try forged(
      try Certificate.Extensions {
        Critical(KeyUsage(digitalSignature: true, keyCertSign: true))
        SubjectAlternativeNames([.uniformResourceIdentifier("spiffe://trellis.local/svc/a")])
      })
    let noURI = try forged(
      try Certificate.Extensions { SubjectAlternativeNames([.dnsName("users.example.com")]) })
    for (certificate, expected) in [
      (twoURIs, "2 URI SANs"), (isCA, "is a CA"), (signsCerts, "may sign certificates"),
      (noURI, "0 URI SANs"),
    ] {
      await #expect {
        try await validator().validate(chain: [certificate, issuer.certificate], as: .client)
      } throws: { error in
        guard let rejection = error as? SVIDRejection else { return false }
        return rejection.reason == .notAnSVID && rejection.detail.contains(expected)
      }
    }
  }

  @Test func theExtendedKeyUsageMustAllowTheRoleThePeerPlays() async throws {
    let extensions = try Certificate.Extensions {
      Critical(KeyUsage(digitalSignature: true))
      try ExtendedKeyUsage([.serverAuth])
      SubjectAlternativeNames([.uniformResourceIdentifier("spiffe://trellis.local/svc/a")])
    }
    let key = P256.Signing.PrivateKey()
    let serverOnly = try Certificate(
      version: .v3, serialNumber: .init(), publicKey: .init(key.publicKey),
      notValidBefore: Date() - 60, notValidAfter: Date() + 3600,
      issuer: issuer.certificate.subject, subject: try DistinguishedName { CommonName("a") },
      signatureAlgorithm: .ecdsaWithSHA256, extensions: extensions,
      issuerPrivateKey: .init(issuer.key))
    let chain = [serverOnly, issuer.certificate]
    #expect(try await validator().validate(chain: chain, as: .server).serviceName == "a")
    await #expect {
      try await validator().validate(chain: chain, as: .client)
    } throws: { error in
      (error as? SVIDRejection)?.detail.contains("does not allow a TLS client") == true
    }
    // What the mesh's CA issues serves either end.
    let issued = try issue()
    #expect(
      try await validator().validate(chain: [issued, issuer.certificate], as: .server).serviceName
        == "users")
  }

  @Test func aBundleWithTwoRootsTrustsBoth() async throws {
    let newRoot = try SigningAuthority.makeRoot()
    let newIssuer = try newRoot.makeIssuer()
    let bundle = TrustBundle(roots: [root.certificate, newRoot.certificate])
    let reread = try TrustBundle(pem: try bundle.pemString())
    #expect(reread == bundle)
    let validator = SVIDValidator(bundle: reread)
    let key = P256.Signing.PrivateKey()
    let fromNew = try newIssuer.issueSVID(
      for: try .workload("orders"), publicKey: .init(key.publicKey))
    #expect(
      try await validator.validate(chain: [fromNew, newIssuer.certificate], as: .client).serviceName
        == "orders")
    #expect(
      try await validator.validate(chain: [try issue(), issuer.certificate], as: .client)
        .serviceName == "users")
  }

  @Test func signsACertificateSigningRequest() throws {
    let key = P256.Signing.PrivateKey()
    let request = try CertificateSigningRequest(
      version: .v1, subject: try DistinguishedName { CommonName("anything") },
      privateKey: .init(key), attributes: .init(), signatureAlgorithm: .ecdsaWithSHA256)
    let leaf = try issuer.issueSVID(for: try .workload("payments"), request: request)
    #expect(leaf.publicKey == Certificate.PublicKey(key.publicKey))
    #expect(try SVIDValidator.leafIdentity(leaf).serviceName == "payments")
  }
}
