import Crypto
import Foundation
import GRPCCore
import MeshIdentity
import MeshProtos
import SwiftASN1
import X509

/// The steps of a rotation of the mesh's roots or issuer, each checked before it changes
/// anything, so no step can leave a sidecar unable to verify another:
///
/// 1. add the new root to every bundle (root rotation only);
/// 2. sign with the new issuer, and have every sidecar renew from it;
/// 3. keep only the new root (root rotation only).
///
/// `meshctl certs rotate-ca` runs them in order, each once every connected sidecar has done
/// the one before. A step asked again changes nothing and only waits.
struct TrustRotation {
  let control: ControlContext

  init(_ control: ControlContext) { self.control = control }

  /// Makes the change a request asks for; returns what the sidecars must do for it.
  func start(_ request: Trellis_Mesh_V1_RotateRequest) async throws -> ConfigHub.Step {
    let current = control.trust.current
    switch request.step {
    case .addRoots:
      let roots = try certificates(request.certificates, "roots")
      for root in roots { try checkRoot(root) }
      let new = roots.filter { !current.bundle.roots.contains($0) }
      guard !new.isEmpty else { return .trust(current.number) }
      let generation = try await control.install(
        bundle: current.bundle.roots + new, issuer: current.issuer,
        reason: "added root \(new.map { "\($0.subject)" }.joined(separator: ", "))")
      return .trust(generation.number)

    case .switchIssuer:
      let given = try certificates(request.certificates, "issuer")
      guard given.count == 1, let certificate = given.first else {
        throw RPCError(code: .invalidArgument, message: "give exactly one issuer certificate")
      }
      if certificate == current.issuer.certificate { return .issuer(current.issuerSerial) }
      guard let pem = try await control.store.pendingIssuerKey(),
        let key = try? P256.Signing.PrivateKey(pemRepresentation: pem)
      else {
        throw RPCError(
          code: .failedPrecondition,
          message: "no issuer key has been prepared: call PrepareIssuer and sign its CSR")
      }
      guard certificate.publicKey == Certificate.PublicKey(key.publicKey) else {
        throw RPCError(
          code: .invalidArgument,
          message: "the issuer certificate is not for the key prepared last (PrepareIssuer)")
      }
      try checkIssuer(certificate, roots: current.bundle.roots)
      let generation = try await control.install(
        bundle: current.bundle.roots,
        issuer: SigningAuthority(certificate: certificate, key: key),
        reason: "switched the issuer to \(certificate.subject)")
      return .issuer(generation.issuerSerial)

    case .keepRoots:
      let roots = try certificates(request.certificates, "roots")
      for root in roots where !current.bundle.roots.contains(root) {
        throw RPCError(
          code: .failedPrecondition,
          message: "\(root.subject) is not in the bundle: add it first (step ADD_ROOTS)")
      }
      // Every control plane's issuer, not only this one's.
      let issuers =
        [current.issuer.certificate]
        + (try await control.store.issuersInForce().map { try Certificate(pemEncoded: $0) })
      for issuer in issuers where !roots.contains(where: { signs($0, issuer) }) {
        throw RPCError(
          code: .failedPrecondition,
          message:
            """
            the issuer in force (\(issuer.subject)) chains to none of these roots: switch the \
            issuer first, or every certificate would stop being trusted
            """
        )
      }
      guard Set(roots.map(\.serialHex)) != Set(current.bundle.roots.map(\.serialHex)) else {
        return .trust(current.number)
      }
      let dropped = current.bundle.roots.filter { !roots.contains($0) }
      let generation = try await control.install(
        bundle: roots, issuer: current.issuer,
        reason: "dropped root \(dropped.map { "\($0.subject)" }.joined(separator: ", "))")
      return .trust(generation.number)

    case .renewService:
      let identity: SPIFFEID
      do {
        identity = try SPIFFEID.workload(request.service, trustDomain: control.trustDomain)
      } catch {
        throw RPCError(code: .invalidArgument, message: "service '\(request.service)': \(error)")
      }
      let now = Date()
      try await control.store.requestRenewal(of: identity.description, now: now)
      control.hub.requestRenewal(of: identity.description, at: now)
      return .renewed(identity.description)

    case .unspecified, .UNRECOGNIZED:
      throw RPCError(code: .invalidArgument, message: "no rotation step given")
    }
  }

  /// A step as the operator asked for it: "add roots: CN=…", "renew service: spiffe://…".
  func name(of request: Trellis_Mesh_V1_RotateRequest) -> String {
    let subjects =
      ((try? certificates(request.certificates, "")) ?? []).map { "\($0.subject)" }
      .joined(separator: ", ")
    switch request.step {
    case .addRoots: return "add roots: \(subjects)"
    case .switchIssuer: return "switch issuer: \(subjects)"
    case .keepRoots: return "keep roots: \(subjects)"
    case .renewService:
      let identity = try? SPIFFEID.workload(request.service, trustDomain: control.trustDomain)
      return "renew service: \(identity.map(\.description) ?? request.service)"
    case .unspecified, .UNRECOGNIZED: return "unknown"
    }
  }

  private func certificates(_ pem: String, _ what: String) throws -> [Certificate] {
    do {
      let documents = try PEMDocument.parseMultiple(pemString: pem)
      guard !documents.isEmpty else { throw IdentityError("no certificate") }
      return try documents.map { try Certificate(pemDocument: $0) }
    } catch {
      throw RPCError(code: .invalidArgument, message: "the \(what) are not PEM certificates")
    }
  }

  /// A root: a self-signed CA of this trust domain, valid now.
  private func checkRoot(_ root: Certificate) throws {
    guard root.subject == root.issuer, signs(root, root) else {
      throw RPCError(code: .invalidArgument, message: "\(root.subject) is not self-signed")
    }
    try checkAuthority(root)
  }

  /// An issuer: a CA valid now, signed by one of `roots`.
  private func checkIssuer(_ issuer: Certificate, roots: [Certificate]) throws {
    try checkAuthority(issuer)
    guard roots.contains(where: { signs($0, issuer) }) else {
      throw RPCError(
        code: .invalidArgument,
        message:
          "\(issuer.subject) is not signed by a root in the bundle (\(roots.map { "\($0.subject)" }.joined(separator: ", ")))"
      )
    }
  }

  private func checkAuthority(_ certificate: Certificate) throws {
    guard case .isCertificateAuthority = try certificate.extensions.basicConstraints else {
      throw RPCError(code: .invalidArgument, message: "\(certificate.subject) is not a CA")
    }
    let now = Date()
    guard certificate.notValidBefore <= now, now < certificate.notValidAfter else {
      throw RPCError(
        code: .invalidArgument, message: "\(certificate.subject) is not valid now")
    }
    let names = try certificate.extensions.subjectAlternativeNames ?? SubjectAlternativeNames([])
    let trustDomain = "spiffe://\(control.trustDomain)"
    guard names.contains(.uniformResourceIdentifier(trustDomain)) else {
      throw RPCError(
        code: .invalidArgument,
        message: "\(certificate.subject) does not name trust domain \(trustDomain)")
    }
  }

  private func signs(_ authority: Certificate, _ certificate: Certificate) -> Bool {
    authority.subject == certificate.issuer
      && authority.publicKey.isValidSignature(certificate.signature, for: certificate)
  }
}
