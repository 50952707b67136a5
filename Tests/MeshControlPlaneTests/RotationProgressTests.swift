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

  /// The steps `Rotate` waits on are in `Status` while they run, with their progress, and gone
  /// once they end (however they end).
  @Test func aRunningStepIsShownWithItsProgress() throws {
    let (old, new) = (try root.makeIssuer(), try root.makeIssuer())
    let hub = ConfigHub()
    hub.publish(trust: try generation(1, old))
    hub.setIssuersInForce([(new.certificate, nil)])
    connect(hub, "n1", issuedBy: old)
    connect(hub, "n2", issuedBy: new)
    #expect(hub.rotations.isEmpty)
    let started = Date(timeIntervalSince1970: 1_700_000_000)
    let id = hub.started(
      rotation: .issuer(new.certificate.serialHex), named: "switch issuer: CN=next", at: started)
    var running = hub.rotations
    #expect(running.count == 1)
    #expect(running.first?.step == "switch issuer: CN=next")
    #expect(running.first?.startedUnix == 1_700_000_000)
    #expect(running.first?.progress.doneCount == 1 && running.first?.progress.total == 2)
    #expect(running.first?.progress.waitingFor == ["n1"])
    #expect(running.first?.progress.done == false)
    #expect(running.first?.progress.trustGeneration == 1)

    connect(hub, "n1", issuedBy: new)
    running = hub.rotations
    #expect(running.first?.progress.doneCount == 2 && running.first?.progress.done == true)
    hub.finished(rotation: id)
    #expect(hub.rotations.isEmpty)
  }
}
