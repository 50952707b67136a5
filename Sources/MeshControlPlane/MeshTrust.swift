import Crypto
import Foundation
import MeshIdentity
import NIOCertificateReloading
import NIOCore
import NIOSSL
import SwiftASN1
import Synchronization
import X509

/// The mesh's trust as the control plane runs it: the roots every bundle holds, the issuer
/// that signs now, and the control plane's own certificate from that issuer. A rotation
/// installs a new generation while the listeners keep running: each TLS handshake reads the
/// certificate and the roots in force at that moment.
public final class MeshTrust: Sendable {
  /// One generation of trust.
  public struct Generation: Sendable {
    public var number: Int64
    public var bundle: TrustBundle
    public var bundlePEM: String
    public var issuer: SigningAuthority

    public init(
      number: Int64, bundle: TrustBundle, bundlePEM: String, issuer: SigningAuthority
    ) {
      self.number = number
      self.bundle = bundle
      self.bundlePEM = bundlePEM
      self.issuer = issuer
    }

    /// The issuer's serial, hex, as `meshctl certs inspect` shows it.
    public var issuerSerial: String { issuer.certificate.serialHex }

    /// The root the issuer chains to.
    public var issuerRoot: Certificate? {
      bundle.roots.first { $0.subject == issuer.certificate.issuer }
    }
  }

  /// The control plane's own certificate chain and key, PEM and ready for NIOSSL.
  public struct OwnCertificate: Sendable {
    public var chainPEM: [String]
    public var keyPEM: String
    public var notBefore: Date
    public var notAfter: Date
    var override: NIOSSLContextConfigurationOverride
  }

  private struct State {
    var generation: Generation
    var validator: SVIDValidator
    var own: OwnCertificate
  }

  public let trustDomain: String
  private let state: Mutex<State>

  /// The control plane's own identity, `spiffe://<td>/svc/control-plane`.
  public let identity: SPIFFEID

  public init(_ generation: Generation, trustDomain: String) throws {
    self.trustDomain = trustDomain
    identity = try SPIFFEID.workload("control-plane", trustDomain: trustDomain)
    state = Mutex(
      State(
        generation: generation,
        validator: SVIDValidator(bundle: generation.bundle, trustDomain: trustDomain),
        own: try Self.ownCertificate(identity, from: generation.issuer)))
  }

  /// A generation from stored PEM.
  public static func generation(_ stored: StoredTrust) throws -> Generation {
    Generation(
      number: stored.generation, bundle: try TrustBundle(pem: stored.bundle),
      bundlePEM: stored.bundle,
      issuer: SigningAuthority(
        certificate: try Certificate(pemEncoded: stored.issuer),
        key: try P256.Signing.PrivateKey(pemRepresentation: stored.issuerKey)))
  }

  public var current: Generation { state.withLock { $0.generation } }

  /// The control plane's certificate in force.
  public var own: OwnCertificate { state.withLock { $0.own } }

  /// Puts `generation` in force unless a newer one is; the control plane's own certificate is
  /// issued again when the issuer changed.
  public func install(_ generation: Generation) throws {
    let issuerChanged = current.issuer.certificate != generation.issuer.certificate
    let own = issuerChanged ? try Self.ownCertificate(identity, from: generation.issuer) : nil
    state.withLock {
      guard $0.generation.number < generation.number else { return }
      $0.generation = generation
      $0.validator = SVIDValidator(bundle: generation.bundle, trustDomain: trustDomain)
      if let own { $0.own = own }
    }
  }

  /// Issues the control plane's own certificate again once two thirds of its life are gone;
  /// returns whether it did.
  public func renewOwnCertificateIfDue(now: Date = Date()) throws -> Bool {
    let (own, issuer) = state.withLock { ($0.own, $0.generation.issuer) }
    let renewAt = own.notBefore.addingTimeInterval(
      own.notAfter.timeIntervalSince(own.notBefore) * 2 / 3)
    guard now >= renewAt else { return false }
    let renewed = try Self.ownCertificate(identity, from: issuer)
    state.withLock { $0.own = renewed }
    return true
  }

  /// A 30-day certificate for the control plane, with the issuer in its chain.
  private static func ownCertificate(
    _ identity: SPIFFEID, from issuer: SigningAuthority
  ) throws -> OwnCertificate {
    let key = P256.Signing.PrivateKey()
    let certificate = try issuer.issueSVID(
      for: identity, publicKey: Certificate.PublicKey(key.publicKey), lifetime: 30 * 86_400)
    var override = NIOSSLContextConfigurationOverride()
    override.certificateChain = try [certificate, issuer.certificate].map {
      .certificate(try NIOSSLCertificate(bytes: try $0.derBytes, format: .der))
    }
    override.privateKey = .privateKey(
      try NIOSSLPrivateKey(bytes: Array(key.pemRepresentation.utf8), format: .pem))
    return OwnCertificate(
      chainPEM: try [certificate, issuer.certificate].map { try $0.serializeAsPEM().pemString },
      keyPEM: key.pemRepresentation, notBefore: certificate.notValidBefore,
      notAfter: certificate.notValidAfter, override: override)
  }

  /// Checks a client's chain (DER, leaf first) as an X.509-SVID against the roots in force
  /// now: the check of the control plane's own TLS (`ControlFront`).
  @Sendable func checkClient(_ chain: [[UInt8]], _ loop: any EventLoop) -> EventLoopFuture<Void> {
    let validator = state.withLock { $0.validator }
    let promise = loop.makePromise(of: Void.self)
    promise.completeWithTask {
      let certificates = try chain.map { try Certificate(derEncoded: $0) }
      _ = try await validator.validate(chain: certificates, as: .client)
    }
    return promise.futureResult
  }

  /// Checks a client's chain as an X.509-SVID against the roots in force now.
  @Sendable public func verify(
    _ certificates: [NIOSSLCertificate],
    _ promise: EventLoopPromise<NIOSSLVerificationResultWithMetadata>
  ) {
    let validator = state.withLock { $0.validator }
    let chain: [Certificate]
    do {
      chain = try certificates.map { try Certificate(derEncoded: try $0.toDERBytes()) }
    } catch {
      promise.succeed(.failed)
      return
    }
    Task {
      do {
        _ = try await validator.validate(chain: chain, as: .client)
        promise.succeed(.certificateVerified(VerificationMetadata(.init(certificates))))
      } catch {
        promise.succeed(.failed)
      }
    }
  }
}

extension MeshTrust: CertificateReloader {
  public var sslContextConfigurationOverride: NIOSSLContextConfigurationOverride {
    state.withLock { $0.own.override }
  }
}

extension Certificate {
  var derBytes: [UInt8] {
    get throws {
      var serializer = DER.Serializer()
      try serializer.serialize(self)
      return serializer.serializedBytes
    }
  }
}
