import Crypto
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import MeshIdentity
import ServiceLifecycle
import X509

/// The control plane: the mesh's certificate authority and configuration store, served over
/// two listeners.
///
/// - `listen`: mutual TLS. Every caller presents an SVID of the mesh: workloads renew their
///   certificates here, the operator runs the admin methods.
/// - `join`: TLS without a client certificate, for a workload's first certificate, paid for
///   with a join token. Only `Identity` is served there.
///
/// The control plane's own certificate (`spiffe://<td>/svc/control-plane`) is issued at start
/// by the issuer it signs with.
public struct ControlPlane: Service {
  public struct Configuration: Sendable {
    public var listen: (host: String, port: Int)
    public var join: (host: String, port: Int)
    /// Where `meshctl certs init` wrote the CA (the issuer and its key, the bundle).
    public var certs: String
    /// Where the state lives (`control.sqlite`).
    public var data: String
    public var trustDomain: String
    public var leafLifetime: TimeInterval

    public init(
      listen: (host: String, port: Int), join: (host: String, port: Int), certs: String,
      data: String, trustDomain: String, leafLifetime: TimeInterval
    ) {
      self.listen = listen
      self.join = join
      self.certs = certs
      self.data = data
      self.trustDomain = trustDomain
      self.leafLifetime = leafLifetime
    }
  }

  private let configuration: Configuration
  private let logger: Logger

  public init(_ configuration: Configuration, logger: Logger) {
    self.configuration = configuration
    self.logger = logger
  }

  public func run() async throws {
    let files = CAFiles(dir: configuration.certs)
    let issuer = try files.loadIssuer()
    let bundlePEM = try String(contentsOfFile: files.bundle, encoding: .utf8)
    let store = try ControlStore(directory: configuration.data)
    let control = ControlContext(
      store: store, issuer: issuer, bundlePEM: bundlePEM, trustDomain: configuration.trustDomain,
      defaultLeafLifetime: configuration.leafLifetime)

    // The control plane's own identity.
    let key = P256.Signing.PrivateKey()
    let identity = try SPIFFEID.workload("control-plane", trustDomain: configuration.trustDomain)
    let certificate = try issuer.issueSVID(
      for: identity, publicKey: Certificate.PublicKey(key.publicKey), lifetime: 30 * 86_400)
    let chain: [TLSConfig.CertificateSource] = [
      .bytes(Array(try certificate.serializeAsPEM().pemString.utf8), format: .pem),
      .bytes(Array(try issuer.certificate.serializeAsPEM().pemString.utf8), format: .pem),
    ]
    let privateKey = TLSConfig.PrivateKeySource.bytes(
      Array(key.pemRepresentation.utf8), format: .pem)

    let mtls = HTTP2ServerTransport.Posix(
      address: .ipv4(host: configuration.listen.host, port: configuration.listen.port),
      transportSecurity: .mTLS(certificateChain: chain, privateKey: privateKey) { tls in
        tls.trustRoots = .certificates([.bytes(Array(bundlePEM.utf8), format: .pem)])
        tls.clientCertificateVerification = .noHostnameVerification
      })
    let join = HTTP2ServerTransport.Posix(
      address: .ipv4(host: configuration.join.host, port: configuration.join.port),
      transportSecurity: .tls(certificateChain: chain, privateKey: privateKey))
    let main = GRPCServer(
      transport: mtls,
      services: [IdentityService(control), AdminService(control), ConfigService(control)])
    let joinServer = GRPCServer(transport: join, services: [IdentityService(control)])

    try await withGracefulShutdownHandler {
      try await withThrowingDiscardingTaskGroup { group in
        group.addTask { try await main.serve() }
        group.addTask { try await joinServer.serve() }
        guard let listening = try? await mtls.listeningAddress,
          let joining = try? await join.listeningAddress
        else { return }
        logger.info(
          "listening",
          metadata: [
            "address": "\(Self.describe(listening))", "join_address": "\(Self.describe(joining))",
            "identity": "\(identity)",
          ])
      }
    } onGracefulShutdown: {
      logger.info("shutting down")
      main.beginGracefulShutdown()
      joinServer.beginGracefulShutdown()
    }
  }

  private static func describe(_ address: GRPCNIOTransportCore.SocketAddress) -> String {
    address.ipv4.map { "\($0.host):\($0.port)" } ?? address.ipv6.map { "[\($0.host)]:\($0.port)" }
      ?? "\(address)"
  }
}
