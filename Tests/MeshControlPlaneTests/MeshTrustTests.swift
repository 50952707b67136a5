import Foundation
import MeshControlPlane
import MeshIdentity
import Testing
import X509

/// The control plane's trust in force: its own certificate is renewed before it runs out, and
/// a new issuer brings a new certificate for the control plane from that issuer.
@Suite struct MeshTrustTests {
  func generation(_ number: Int64, root: SigningAuthority) throws -> MeshTrust.Generation {
    let bundle = TrustBundle(roots: [root.certificate])
    return MeshTrust.Generation(
      number: number, bundle: bundle, bundlePEM: try bundle.pemString(),
      issuer: try root.makeIssuer())
  }

  @Test func theOwnCertificateIsRenewedAtTwoThirdsOfItsLife() throws {
    let root = try SigningAuthority.makeRoot()
    let trust = try MeshTrust(try generation(1, root: root), trustDomain: "trellis.local")
    let first = trust.own
    #expect(first.notAfter.timeIntervalSince(first.notBefore) > 29 * 86_400)
    #expect(try !trust.renewOwnCertificateIfDue(now: Date().addingTimeInterval(19 * 86_400)))
    #expect(trust.own.chainPEM == first.chainPEM)
    #expect(try trust.renewOwnCertificateIfDue(now: Date().addingTimeInterval(21 * 86_400)))
    #expect(trust.own.chainPEM != first.chainPEM)
  }

  @Test func aNewIssuerBringsANewOwnCertificate() throws {
    let root = try SigningAuthority.makeRoot()
    let trust = try MeshTrust(try generation(1, root: root), trustDomain: "trellis.local")
    let next = try generation(2, root: root)
    try trust.install(next)
    let leaf = try Certificate(pemEncoded: trust.own.chainPEM[0])
    #expect(leaf.issuer == next.issuer.certificate.subject)
    #expect(trust.current.number == 2)
  }
}
