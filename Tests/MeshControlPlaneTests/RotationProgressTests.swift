import Foundation
import MeshIdentity
import MeshProtos
import Testing
import X509

@testable import MeshControlPlane

/// How a replica counts its sidecars through an issuer switch. Each replica signs with an
/// issuer of its own, and a sidecar renews at whichever replica it uses: a certificate from
/// the issuer another replica signs with now is as good as one from this replica's, and one
/// from an issuer no replica signs with any more must be renewed.
@Suite struct RotationProgressTests {
  let root: SigningAuthority
  let bundle: TrustBundle

  init() throws {
    root = try SigningAuthority.makeRoot()
    bundle = TrustBundle(roots: [root.certificate])
  }

  func generation(_ number: Int64, _ issuer: SigningAuthority) throws -> MeshTrust.Generation {
    MeshTrust.Generation(
      number: number, bundle: bundle, bundlePEM: try bundle.pemString(), issuer: issuer)
  }

  /// Connects `node`, serving a certificate from `issuer`.
  func connect(_ hub: ConfigHub, _ node: String, issuedBy issuer: SigningAuthority) {
    var hello = Trellis_Mesh_V1_SubscribeRequest()
    hello.node = node
    hello.certificateSerial = "serial-of-\(node)"
    let identity = "spiffe://trellis.local/svc/\(node)"
    _ = hub.subscribe(
      id: UUID(), node: node, identity: identity, hello: hello,
      issued: IssuedCertificate(
        spiffeID: identity, issuedAt: Date(), notAfter: Date().addingTimeInterval(3600),
        issuerSerial: issuer.certificate.serialHex),
      certificateNotAfter: nil)
  }

  @Test func aCertificateFromAnotherReplicasIssuerInForceCounts() throws {
    let (oldA, oldB, newA, newB) = (
      try root.makeIssuer(), try root.makeIssuer(), try root.makeIssuer(), try root.makeIssuer()
    )
    // Replica a's view: it signs with oldA; replica b signs with oldB.
    let hub = ConfigHub()
    hub.publish(trust: try generation(1, oldA))
    hub.setIssuersInForce([(oldA.certificate, root.certificate), (oldB.certificate, nil)])
    connect(hub, "moved-from-b", issuedBy: oldB)
    connect(hub, "stays-on-a", issuedBy: oldA)

    // a switches to newA: its own old issuer is no longer in force, b's still is.
    hub.publish(trust: try generation(2, newA))
    hub.setIssuersInForce([(newA.certificate, nil), (oldB.certificate, nil)])
    var progress = hub.progress(.issuer(newA.certificate.serialHex))
    #expect(progress.done == ["moved-from-b"])
    #expect(progress.waiting == ["stays-on-a"])

    connect(hub, "stays-on-a", issuedBy: newA)
    #expect(hub.progress(.issuer(newA.certificate.serialHex)).waiting.isEmpty)

    // b switches to newB: the certificate from oldB must be renewed now, wherever its sidecar
    // is; one from newB counts here too.
    hub.setIssuersInForce([(newA.certificate, nil), (newB.certificate, nil)])
    progress = hub.progress(.issuer(newA.certificate.serialHex))
    #expect(progress.done == ["stays-on-a"])
    #expect(progress.waiting == ["moved-from-b"])
    connect(hub, "moved-from-b", issuedBy: newB)
    progress = hub.progress(.issuer(newA.certificate.serialHex))
    #expect(progress.done == ["moved-from-b", "stays-on-a"])
  }

  @Test func withOneControlPlaneOnlyTheNewIssuerCounts() throws {
    let (old, new) = (try root.makeIssuer(), try root.makeIssuer())
    let hub = ConfigHub()
    hub.publish(trust: try generation(1, old))
    hub.setIssuersInForce([(old.certificate, nil)])
    connect(hub, "n1", issuedBy: old)
    hub.publish(trust: try generation(2, new))
    hub.setIssuersInForce([(new.certificate, nil)])
    #expect(hub.progress(.issuer(new.certificate.serialHex)).waiting == ["n1"])
  }
}
