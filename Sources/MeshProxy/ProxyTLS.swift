import MeshIdentity
import NIOConcurrencyHelpers
import NIOCore
import NIOSSL
import NIOTLS
import X509

#if canImport(FoundationEssentials)
  import FoundationEssentials
#else
  import Foundation
#endif

/// The sidecar's TLS between mesh peers: TLS 1.3 only, ALPN h2, ECDSA P-256 workload
/// certificates, and every peer validated as an X.509-SVID of the mesh on every handshake.
public final class ProxyTLS: Sendable {
  /// What one set of certificate files makes: both TLS contexts, the validator for peers, and
  /// the facts of our own certificate. Replaced whole when the files change; connections
  /// already open keep the material they started with.
  private struct Material: Sendable {
    var serverContext: NIOSSLContext
    var clientContext: NIOSSLContext
    var validator: SVIDValidator
    var certificateStatus: CertificateStatus
  }

  private let material: NIOLockedValueBox<Material>
  private let trustDomain: String

  /// The workload's own certificate, as `/certs` and readiness report it.
  var certificateStatus: CertificateStatus { material.withLockedValue { $0.certificateStatus } }

  /// `certificateChain` is the workload's leaf first, then its issuer.
  public init(
    certificateChain: [Certificate], privateKeyPEM: String, bundle: TrustBundle,
    trustDomain: String = SPIFFEID.defaultTrustDomain
  ) throws {
    self.trustDomain = trustDomain
    self.material = NIOLockedValueBox(
      try Self.material(certificateChain, privateKeyPEM, bundle, trustDomain))
  }

  /// Reads certificate, key and bundle from PEM files.
  public convenience init(
    certificate: String, privateKey: String, bundle: String, trustDomain: String
  )
    throws
  {
    let files = try Self.read(certificate: certificate, privateKey: privateKey, bundle: bundle)
    try self.init(
      certificateChain: files.chain, privateKeyPEM: files.key, bundle: files.bundle,
      trustDomain: trustDomain)
  }

  /// Replaces certificate, key and bundle from their files; the old ones stay in use if the
  /// new ones do not make a valid configuration. New handshakes use the new material at once.
  public func reload(certificate: String, privateKey: String, bundle: String) throws -> String {
    let files = try Self.read(certificate: certificate, privateKey: privateKey, bundle: bundle)
    let new = try Self.material(files.chain, files.key, files.bundle, trustDomain)
    material.withLockedValue { $0 = new }
    return new.certificateStatus.serial
  }

  private static func read(
    certificate: String, privateKey: String, bundle: String
  ) throws -> (chain: [Certificate], key: String, bundle: TrustBundle) {
    let chain = try CertificateFiles.readCertificates(certificate)
    guard !chain.isEmpty else { throw IdentityError("\(certificate) holds no certificate") }
    guard let key = try? String(contentsOfFile: privateKey, encoding: .utf8) else {
      throw IdentityError("cannot read \(privateKey)")
    }
    let roots = try CertificateFiles.readCertificates(bundle)
    guard !roots.isEmpty else { throw IdentityError("\(bundle) holds no certificate") }
    return (chain, key, TrustBundle(roots: roots))
  }

  private static func material(
    _ certificateChain: [Certificate], _ privateKeyPEM: String, _ bundle: TrustBundle,
    _ trustDomain: String
  ) throws -> Material {
    let chain = try certificateChain.map {
      NIOSSLCertificateSource.certificate(
        try NIOSSLCertificate(bytes: try $0.serializeAsPEM().derBytes, format: .der))
    }
    let key = NIOSSLPrivateKeySource.privateKey(
      try NIOSSLPrivateKey(bytes: Array(privateKeyPEM.utf8), format: .pem))
    let roots = try bundle.roots.map {
      try NIOSSLCertificate(bytes: try $0.serializeAsPEM().derBytes, format: .der)
    }

    var server = TLSConfiguration.makeServerConfiguration(certificateChain: chain, privateKey: key)
    server.minimumTLSVersion = .tlsv13
    server.applicationProtocols = ["h2"]
    // Requests and requires a client certificate; the custom callback below decides.
    server.certificateVerification = .noHostnameVerification
    server.trustRoots = .certificates(roots)

    var client = TLSConfiguration.makeClientConfiguration()
    client.minimumTLSVersion = .tlsv13
    client.applicationProtocols = ["h2"]
    client.certificateChain = chain
    client.privateKey = key
    client.certificateVerification = .noHostnameVerification
    client.trustRoots = .certificates(roots)

    return Material(
      serverContext: try NIOSSLContext(configuration: server),
      clientContext: try NIOSSLContext(configuration: client),
      validator: SVIDValidator(bundle: bundle, trustDomain: trustDomain),
      certificateStatus: CertificateStatus(certificateChain[0]))
  }

  /// A server-side handler; `identified` receives the peer's verified identity.
  func serverHandler(
    identified: @escaping @Sendable (SPIFFEID) -> Void,
    rejected: @escaping @Sendable (String) -> Void = { _ in }
  ) -> NIOSSLServerHandler {
    let (context, validator) = material.withLockedValue { ($0.serverContext, $0.validator) }
    return NIOSSLServerHandler(context: context) { certificates, promise in
      Self.verify(
        certificates, validator: validator, expected: nil, promise: promise,
        identified: identified, rejected: rejected)
    }
  }

  /// A client-side handler that accepts only a peer presenting `expected` (secure naming).
  func clientHandler(expecting expected: String?) throws -> NIOSSLClientHandler {
    let (context, validator) = material.withLockedValue { ($0.clientContext, $0.validator) }
    return try NIOSSLClientHandler(context: context, serverHostname: nil) {
      certificates, promise in
      Self.verify(
        certificates, validator: validator, expected: expected, promise: promise,
        identified: { _ in }, rejected: { _ in })
    }
  }

  /// Validates the chain off the event loop (certificate path building is async in
  /// swift-certificates); a handshake is not a per-request cost.
  private static func verify(
    _ certificates: [NIOSSLCertificate], validator: SVIDValidator, expected: String?,
    promise: EventLoopPromise<NIOSSLVerificationResult>,
    identified: @escaping @Sendable (SPIFFEID) -> Void,
    rejected: @escaping @Sendable (String) -> Void
  ) {
    let chain: [Certificate]
    do {
      chain = try certificates.map { try Certificate(derEncoded: try $0.toDERBytes()) }
    } catch {
      rejected("malformed_certificate")
      promise.succeed(.failed)
      return
    }
    Task {
      do {
        // Without an expected identity this side is the server: the peer is a client.
        let identity = try await validator.validate(
          chain: chain, as: expected == nil ? .client : .server)
        if let expected, identity.description != expected {
          rejected("wrong_identity")
          promise.succeed(.failed)
          return
        }
        identified(identity)
        promise.succeed(.certificateVerified)
      } catch {
        rejected((error as? SVIDRejection)?.reason.rawValue ?? "invalid_certificate")
        promise.succeed(.failed)
      }
    }
  }
}

/// A workload certificate's facts for `/certs` and readiness.
struct CertificateStatus: Sendable {
  var identity: String
  var serial: String
  var issuer: String
  var notBefore: Date
  var notAfter: Date

  init(_ certificate: Certificate) {
    identity =
      (try? certificate.extensions.subjectAlternativeNames)??.compactMap { name -> String? in
        if case .uniformResourceIdentifier(let uri) = name { return uri }
        return nil
      }.first ?? ""
    serial = certificate.serialHex
    issuer = "\(certificate.issuer)"
    notBefore = certificate.notValidBefore
    notAfter = certificate.notValidAfter
  }

  var secondsLeft: Double { notAfter.timeIntervalSinceNow }
  var notAfterEpoch: Int { Int(notAfter.timeIntervalSince1970) }

  var json: String {
    let quoted = jsonString
    return """
      {"identity":\(quoted(identity)),"serial":\(quoted(serial)),"issuer":\(quoted(issuer)),\
      "not_before":\(quoted(notBefore.formatted(.iso8601))),\
      "not_after":\(quoted(notAfter.formatted(.iso8601))),\
      "remaining_seconds":\(max(0, Int(secondsLeft)))}

      """
  }
}

/// Watches an accepted connection's TLS handshake: it must finish within `timeout` (a slow
/// or silent client does not hold a connection open), and the peer's identity must be checked
/// on every handshake. A full handshake is checked by the verification callback. A resumed
/// session skips that callback; its ticket was issued by this server's current TLS context
/// (a reload makes a new context, whose tickets are new), so its chain was verified then, and
/// the certificate the session carries is checked again here as an SVID of the trust domain,
/// valid now — or the connection is closed. Failures before verification (a plaintext client, no client
/// certificate, an old TLS version) are counted by reason; a refused certificate is counted by
/// the verification callback with the validator's reason.
final class HandshakeGuard: ChannelInboundHandler, RemovableChannelHandler {
  typealias InboundIn = NIOAny

  private let metrics: SidecarMetrics
  private let peer: PeerIdentity
  private let trustDomain: String
  private let timeout: TimeAmount
  private var timer: Scheduled<Void>?
  private var counted = false

  init(
    metrics: SidecarMetrics, peer: PeerIdentity, trustDomain: String,
    timeout: TimeAmount = .seconds(10)
  ) {
    self.metrics = metrics
    self.peer = peer
    self.trustDomain = trustDomain
    self.timeout = timeout
  }

  func handlerAdded(context: ChannelHandlerContext) {
    let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
    timer = context.eventLoop.scheduleTask(in: timeout) {
      let (handler, context) = loopBound.value
      handler.count("handshake_timeout")
      context.close(promise: nil)
    }
  }

  func handlerRemoved(context: ChannelHandlerContext) {
    timer?.cancel()
  }

  func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
    if case .handshakeCompleted? = event as? TLSUserEvent {
      timer?.cancel()
      if !peer.isSet {
        let session = try? context.pipeline.syncOperations.handler(type: NIOSSLServerHandler.self)
        guard let identity = resumedIdentity(session?.peerCertificate) else {
          count("unverified_resumption")
          context.close(promise: nil)
          return
        }
        peer.set(identity.description)
      }
      context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }
    context.fireUserInboundEventTriggered(event)
  }

  func errorCaught(context: ChannelHandlerContext, error: any Error) {
    let text = "\(error)"
    if text.contains("WRONG_VERSION_NUMBER") || text.contains("HTTP_REQUEST") {
      count("not_tls")
    } else if text.contains("PEER_DID_NOT_RETURN_A_CERTIFICATE") {
      count("no_certificate")
    } else if text.contains("CERTIFICATE_VERIFY_FAILED") {
      counted = true  // counted with its reason by the verification callback
    } else if text.contains("PROTOCOL_VERSION") || text.contains("UNSUPPORTED_PROTOCOL")
      || text.contains("NO_SUPPORTED_VERSIONS")
    {
      count("protocol_version")
    } else if case NIOSSLError.uncleanShutdown = error {
      count("closed_during_handshake")
    } else {
      count("other")
    }
    context.fireErrorCaught(error)
  }

  /// The identity in a resumed session's certificate, if it is still a valid SVID of the
  /// trust domain.
  private func resumedIdentity(_ certificate: NIOSSLCertificate?) -> SPIFFEID? {
    guard let certificate,
      let leaf = try? Certificate(derEncoded: try certificate.toDERBytes()),
      let identity = try? SVIDValidator.leafIdentity(leaf),
      (try? SVIDValidator.checkExtendedKeyUsage(leaf, as: .client)) != nil,
      identity.trustDomain == trustDomain,
      leaf.notValidBefore <= Date(), Date() < leaf.notValidAfter
    else { return nil }
    return identity
  }

  private func count(_ reason: String) {
    guard !counted else { return }
    counted = true
    metrics.recordTLSFailure(reason: reason)
  }
}
