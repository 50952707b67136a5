import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import MeshConfig
import MeshIdentity
import MeshProtos
import ServiceLifecycle
import Synchronization

/// A sidecar's config stream: it subscribes to the control plane over its own identity,
/// validates each snapshot, applies it and ACKs, or NACKs with the reason and keeps running
/// the config it has. The last good config is kept in the state folder, so a sidecar
/// restarted while the control plane is down starts with it. A broken stream is opened again
/// with backoff and jitter.
///
/// Snapshots also carry the mesh's trust: the bundle is written where the sidecar's
/// certificate watcher reloads it, and a request to renew goes to the certificate keeper. Every
/// message tells the control plane the trust generation and the certificate serial in use.
public struct ConfigSubscriber: Service {
  public struct Identity: Sendable {
    /// The sidecar's service and the inbound address it advertises.
    public var service: String
    public var advertise: String
    public var trustDomain: String

    public init(service: String, advertise: String, trustDomain: String) {
      self.service = service
      self.advertise = advertise
      self.trustDomain = trustDomain
    }

    /// The sidecar's name in `meshctl status`.
    var node: String { "\(service)@\(advertise)" }
  }

  private let link: SidecarBootstrap.ControlPlaneLink
  private let files: CertificateKeeper.Files
  private let identity: Identity
  private let state: String
  private let events: CertificateEvents
  private let apply: @Sendable (MeshConfig) -> Void
  private let logger: Logger

  public init(
    link: SidecarBootstrap.ControlPlaneLink, files: CertificateKeeper.Files, identity: Identity,
    state: String, events: CertificateEvents, logger: Logger,
    apply: @escaping @Sendable (MeshConfig) -> Void
  ) {
    self.link = link
    self.files = files
    self.identity = identity
    self.state = state
    self.events = events
    self.apply = apply
    self.logger = logger
  }

  private var configFile: String { "\(state)/mesh.yaml" }
  private var versionFile: String { "\(state)/mesh.version" }
  private var trustFile: String { "\(state)/trust.generation" }

  /// The trust generation whose bundle is in place (0: the one the sidecar joined with).
  private func persistedTrustGeneration() -> Int64 {
    (try? String(contentsOfFile: trustFile, encoding: .utf8)).flatMap {
      Int64($0.trimmingCharacters(in: .whitespacesAndNewlines))
    } ?? 0
  }

  /// The serial of the certificate in use.
  private func certificateSerial() -> String {
    (try? CertificateFiles.readCertificates(files.certificate))?.first?.serialHex ?? ""
  }

  /// The last config this sidecar ran, as persisted, and its version.
  public func persisted() -> (config: MeshConfig, version: Int64)? {
    guard let text = try? String(contentsOfFile: configFile, encoding: .utf8),
      let versionText = try? String(contentsOfFile: versionFile, encoding: .utf8),
      let version = Int64(versionText.trimmingCharacters(in: .whitespacesAndNewlines)),
      let config = try? MeshConfig(yaml: text, file: configFile)
    else { return nil }
    return (config, version)
  }

  public func run() async throws {
    let progress = Progress(
      running: persisted()?.version ?? 0, trust: persistedTrustGeneration())
    while !Task.isShuttingDownGracefully {
      do {
        try await cancelWhenGracefulShutdown { try await self.stream(progress) }
      } catch {
        if Task.isShuttingDownGracefully || Task.isCancelled { return }
        logger.warning(
          "config stream lost; running version \(progress.running)",
          metadata: ["error": "\(error)", "attempt": "\(progress.failures + 1)"])
      }
      progress.failed()
      let failures = progress.failures
      // 0.5 s, 1 s, 2 s … up to 30 s, with jitter, so sidecars do not return in a herd.
      let wait = min(30, 0.5 * pow(2, Double(max(0, failures - 1)))) * Double.random(in: 0.5...1.5)
      do {
        // Shutdown ends the wait at once.
        try await cancelWhenGracefulShutdown {
          try await Task.sleep(for: .milliseconds(Int64(wait * 1000)))
        }
      } catch {
        return
      }
    }
  }

  /// The version and trust generation running and the failed attempts in a row, shared with
  /// the stream's tasks.
  private final class Progress: Sendable {
    private let state: Mutex<(running: Int64, trust: Int64, failures: Int)>
    init(running: Int64, trust: Int64) { state = Mutex((running, trust, 0)) }
    var running: Int64 {
      get { state.withLock { $0.running } }
      set { state.withLock { $0.running = newValue } }
    }
    var trust: Int64 {
      get { state.withLock { $0.trust } }
      set { state.withLock { $0.trust = newValue } }
    }
    var failures: Int { state.withLock { $0.failures } }
    func failed() { state.withLock { $0.failures += 1 } }
    func established() { state.withLock { $0.failures = 0 } }
  }

  /// One subscription, until the stream ends.
  private func stream(_ progress: Progress) async throws {
    let transport = try HTTP2ClientTransport.Posix(
      target: .ipv4(address: link.address.host, port: link.address.port),
      transportSecurity: .meshIdentity(
        certificate: files.certificate, key: files.privateKey, bundle: files.bundle))
    let (requests, outbox) = AsyncStream.makeStream(of: Trellis_Mesh_V1_SubscribeRequest.self)
    // Every message says what runs now; one with no nonce only reports it.
    let report = { @Sendable in
      var message = Trellis_Mesh_V1_SubscribeRequest()
      message.node = identity.node
      message.version = progress.running
      message.trustGeneration = progress.trust
      message.certificateSerial = certificateSerial()
      return message
    }
    outbox.yield(report())
    events.onRenewed { outbox.yield(report()) }
    defer { events.onRenewed(nil) }
    try await withGRPCClient(transport: transport) { client in
      try await Trellis_Mesh_V1_Config.Client(wrapping: client).subscribe(
        requestProducer: { writer in
          for await request in requests { try await writer.write(request) }
        },
        onResponse: { response in
          progress.established()
          for try await snapshot in response.messages {
            var errors: [String] = []
            // The trust first: it does not depend on the config being good.
            if snapshot.trustGeneration != 0, snapshot.trustGeneration != progress.trust {
              do {
                try installBundle(snapshot)
                progress.trust = snapshot.trustGeneration
                logger.info(
                  "trust bundle installed",
                  metadata: ["trust_generation": "\(snapshot.trustGeneration)"])
              } catch {
                errors.append("trust generation \(snapshot.trustGeneration): \(error)")
              }
            }
            if snapshot.version != 0, snapshot.version != progress.running {
              do {
                let config = try check(snapshot)
                apply(config)
                try persist(snapshot)
                progress.running = snapshot.version
                logger.info("config applied", metadata: ["version": "\(snapshot.version)"])
              } catch {
                errors.append("\(error)")
                logger.warning(
                  "config refused; keeping version \(progress.running)",
                  metadata: ["version": "\(snapshot.version)", "error": "\(error)"])
              }
            }
            if snapshot.renewCertificate { events.requestRenewal() }
            var answer = report()
            answer.responseNonce = snapshot.nonce
            answer.errorDetail = errors.joined(separator: "; ")
            outbox.yield(answer)
          }
          outbox.finish()
        })
    }
  }

  /// Validates a snapshot as this sidecar must run it.
  private func check(_ snapshot: Trellis_Mesh_V1_ConfigSnapshot) throws -> MeshConfig {
    let config = try MeshConfig(yaml: snapshot.yaml, file: "version \(snapshot.version)")
    guard config.trustDomain == identity.trustDomain else {
      throw ConfigError(
        file: "version \(snapshot.version)", line: nil, column: nil, field: "trustDomain",
        message:
          "\(config.trustDomain) is not this sidecar's trust domain (\(identity.trustDomain))")
    }
    // An endpoint at this sidecar's own inbound address would send calls round in a loop.
    for (name, service) in config.services.sorted(by: { $0.key < $1.key })
    where name != identity.service {
      for endpoint in service.endpoints where "\(endpoint.address)" == identity.advertise {
        throw ConfigError(
          file: "version \(snapshot.version)", line: nil, column: nil,
          field: "services.\(name).endpoints",
          message: "\(endpoint.address) is this sidecar's own inbound address (\(identity.service))"
        )
      }
    }
    return config
  }

  private func persist(_ snapshot: Trellis_Mesh_V1_ConfigSnapshot) throws {
    try write([(configFile, snapshot.yaml), (versionFile, "\(snapshot.version)\n")])
  }

  /// Writes the bundle where the sidecar's certificate watcher reloads it, then its generation.
  private func installBundle(_ snapshot: Trellis_Mesh_V1_ConfigSnapshot) throws {
    let bundle = try TrustBundle(pem: snapshot.trustBundle)
    guard !bundle.roots.isEmpty else { throw IdentityError("the trust bundle is empty") }
    try write([(files.bundle, snapshot.trustBundle), (trustFile, "\(snapshot.trustGeneration)\n")])
  }

  /// Each file whole or not at all (written aside, then renamed over).
  private func write(_ files: [(path: String, text: String)]) throws {
    try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
    for (path, text) in files {
      let temporary = path + ".new"
      try Data(text.utf8).write(to: URL(fileURLWithPath: temporary))
      guard rename(temporary, path) == 0 else { throw IdentityError("cannot replace \(path)") }
    }
  }
}
