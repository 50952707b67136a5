import Crypto
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import MeshConfig
import MeshIdentity
import MeshProtos
import ServiceLifecycle
import SwiftASN1
import X509

#if canImport(FoundationEssentials)
  import FoundationEssentials
#else
  import Foundation
#endif

/// Keeps a sidecar's identity: the first certificate from the control plane's join listener
/// (paid for with the join token), then renewals over the current identity at 70 % of each
/// certificate's life (with jitter). The key is made here and never leaves the machine.
///
/// Everything is written to the sidecar's state folder (key 0600), where the sidecar's
/// certificate watcher picks it up. A certificate there that is still valid is used as it is,
/// so a sidecar restarted while the control plane is down serves again at once. A failed
/// renewal keeps the current certificate and tries again with backoff.
public struct CertificateKeeper: Service {
  public struct Files: Sendable {
    public var certificate: String
    public var privateKey: String
    public var bundle: String

    public init(certificate: String, privateKey: String, bundle: String) {
      self.certificate = certificate
      self.privateKey = privateKey
      self.bundle = bundle
    }
  }

  private let link: SidecarBootstrap.ControlPlaneLink
  private let replicas: ControlPlaneReplicas
  private let files: Files
  private let events: CertificateEvents
  private let logger: Logger

  public init(
    link: SidecarBootstrap.ControlPlaneLink, replicas: ControlPlaneReplicas, files: Files,
    events: CertificateEvents, logger: Logger
  ) {
    self.link = link
    self.replicas = replicas
    self.files = files
    self.events = events
    self.logger = logger
  }

  /// Makes sure a valid certificate is in place: the persisted one, or a first one from the
  /// join listener. Throws (the sidecar does not start) when neither is possible.
  public func ensureCertificate() async throws {
    if let current = try? currentCertificate(), current.notValidAfter > Date() {
      logger.info(
        "using the persisted certificate",
        metadata: ["not_after": "\(current.notValidAfter)", "file": "\(files.certificate)"])
      return
    }
    let token: String
    do {
      token = try String(contentsOfFile: link.tokenFile, encoding: .utf8)
        .trimmedOfWhitespace
    } catch {
      throw IdentityError(
        "no certificate in \(files.certificate) and no join token in \(link.tokenFile)")
    }
    let response = try await certify(token: token)
    logger.info(
      "joined the mesh",
      metadata: ["identity": "\(response.spiffeID)", "serial": "\(response.serial)"])
  }

  /// Renews at 70 % of each certificate's life, or when the control plane asks, until
  /// shutdown.
  public func run() async throws {
    var failures = 0
    while !Task.isShuttingDownGracefully {
      let wait: TimeInterval
      if failures > 0 {
        // 1 s, 2 s, 4 s … up to a minute, with jitter.
        wait =
          min(60, Double(sign: .plus, exponent: min(failures - 1, 6), significand: 1))
          * Double.random(in: 0.8...1.2)
      } else if let current = try? currentCertificate() {
        let life = current.notValidAfter.timeIntervalSince(current.notValidBefore)
        let renewAt = current.notValidBefore.addingTimeInterval(
          life * 0.7 * Double.random(in: 0.9...1.0))
        wait = max(0, renewAt.timeIntervalSinceNow)
      } else {
        wait = 1
      }
      // Shutdown ends the wait at once; so does a renewal the control plane asks for.
      let asked = await cancelWhenGracefulShutdown {
        await withTaskGroup(of: Bool.self) { group in
          group.addTask {
            try? await Task.sleep(for: .milliseconds(Int64(wait * 1000)))
            return false
          }
          group.addTask {
            await events.renewalRequested()
            return true
          }
          let asked = await group.next() ?? false
          group.cancelAll()
          return asked
        }
      }
      if Task.isShuttingDownGracefully || Task.isCancelled { return }
      if asked {
        // Up to a second apart, so a whole mesh asked at once does not renew in one burst.
        try? await Task.sleep(for: .milliseconds(Int.random(in: 0...1000)))
      }
      do {
        let response = try await certify(token: nil)
        failures = 0
        events.renewed()
        logger.info(
          asked ? "certificate renewed as the control plane asked" : "certificate renewed",
          metadata: ["serial": "\(response.serial)", "not_after_unix": "\(response.notAfterUnix)"])
      } catch {
        failures += 1
        logger.warning(
          "certificate renewal failed; keeping the current one",
          metadata: ["error": "\(error)", "attempt": "\(failures)"])
      }
    }
  }

  private func currentCertificate() throws -> Certificate {
    try CertificateFiles.readCertificates(files.certificate)[0]
  }

  /// One Certify call: with the token on the join listener, or over the current identity; at
  /// the replica in use, then at each other one while they cannot be reached.
  private func certify(token: String?) async throws -> Trellis_Mesh_V1_CertifyResponse {
    let key = P256.Signing.PrivateKey()
    var request = Trellis_Mesh_V1_CertifyRequest()
    request.csr = try CertificateSigningRequest.workloadPEM(key)
    request.token = token ?? ""
    let targets = token == nil ? replicas.ordered : replicas.orderedJoins
    var response: Trellis_Mesh_V1_CertifyResponse?
    for (index, target) in targets.enumerated() {
      do {
        response = try await certify(request, at: target, token: token)
        break
      } catch let error as RPCError
        where index < targets.count - 1
        && [.unavailable, .deadlineExceeded].contains(error.code)
      {
        logger.warning(
          "the control plane at \(target) cannot be reached; trying another replica",
          metadata: ["error": "\(error)"])
      }
    }
    guard let response else { throw RPCError(code: .unavailable, message: "no replica answered") }
    try write(key: key, response)
    return response
  }

  private func certify(
    _ request: Trellis_Mesh_V1_CertifyRequest, at target: Address, token: String?
  ) async throws -> Trellis_Mesh_V1_CertifyResponse {
    let security: HTTP2ClientTransport.Posix.TransportSecurity
    if token == nil {
      security = .meshIdentity(
        certificate: files.certificate, key: files.privateKey, bundle: files.bundle)
    } else {
      security = .meshJoin(bundle: link.bundle)
    }
    let transport = try HTTP2ClientTransport.Posix(
      target: target.target, transportSecurity: security)
    var options = CallOptions.defaults
    options.timeout = .seconds(10)
    return try await withGRPCClient(transport: transport) { [request, options] client in
      try await Trellis_Mesh_V1_Identity.Client(wrapping: client).certify(request, options: options)
    }
  }

  /// Writes key, then certificate, then bundle, each by rename, so a reader sees whole files.
  private func write(
    key: P256.Signing.PrivateKey, _ response: Trellis_Mesh_V1_CertifyResponse
  )
    throws
  {
    try CertificateFiles.writePrivateKey(key, to: files.privateKey)
    try CertificateFiles.replace(files.certificate, with: Array(response.certificateChain.utf8))
    try CertificateFiles.replace(files.bundle, with: Array(response.trustBundle.utf8))
  }
}
