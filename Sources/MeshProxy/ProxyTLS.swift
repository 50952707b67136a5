import Foundation
import MeshIdentity
import NIOCore
import NIOSSL
import X509

/// The sidecar's TLS between mesh peers: TLS 1.3 only, ALPN h2, ECDSA P-256 workload
/// certificates, and every peer validated as an X.509-SVID of the mesh on every handshake.
public final class ProxyTLS: Sendable {
  private let serverContext: NIOSSLContext
  private let clientContext: NIOSSLContext
  private let validator: SVIDValidator

  /// `certificateChain` is the workload's leaf first, then its issuer.
  public init(
    certificateChain: [Certificate], privateKeyPEM: String, bundle: TrustBundle,
    trustDomain: String = SPIFFEID.defaultTrustDomain
  ) throws {
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
    self.serverContext = try NIOSSLContext(configuration: server)

    var client = TLSConfiguration.makeClientConfiguration()
    client.minimumTLSVersion = .tlsv13
    client.applicationProtocols = ["h2"]
    client.certificateChain = chain
    client.privateKey = key
    client.certificateVerification = .noHostnameVerification
    client.trustRoots = .certificates(roots)
    self.clientContext = try NIOSSLContext(configuration: client)

    self.validator = SVIDValidator(bundle: bundle, trustDomain: trustDomain)
  }

  /// A server-side handler; `identified` receives the peer's verified identity.
  func serverHandler(identified: @escaping @Sendable (SPIFFEID) -> Void) -> NIOSSLServerHandler {
    NIOSSLServerHandler(context: serverContext) { [validator] certificates, promise in
      Self.verify(certificates, validator: validator, expected: nil, promise: promise) {
        identified($0)
      }
    }
  }

  /// A client-side handler that accepts only a peer presenting `expected` (secure naming).
  func clientHandler(expecting expected: String?) throws -> NIOSSLClientHandler {
    try NIOSSLClientHandler(context: clientContext, serverHostname: nil) {
      [validator] certificates, promise in
      Self.verify(certificates, validator: validator, expected: expected, promise: promise) { _ in }
    }
  }

  /// Validates the chain off the event loop (certificate path building is async in
  /// swift-certificates); a handshake is not a per-request cost.
  private static func verify(
    _ certificates: [NIOSSLCertificate], validator: SVIDValidator, expected: String?,
    promise: EventLoopPromise<NIOSSLVerificationResult>,
    identified: @escaping @Sendable (SPIFFEID) -> Void
  ) {
    let chain: [Certificate]
    do {
      chain = try certificates.map { try Certificate(derEncoded: try $0.toDERBytes()) }
    } catch {
      promise.succeed(.failed)
      return
    }
    Task {
      do {
        let identity = try await validator.validate(chain: chain)
        if let expected, identity.description != expected {
          promise.succeed(.failed)
          return
        }
        identified(identity)
        promise.succeed(.certificateVerified)
      } catch {
        promise.succeed(.failed)
      }
    }
  }
}
