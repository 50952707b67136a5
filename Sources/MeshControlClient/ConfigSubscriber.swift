import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import MeshConfig
import MeshIdentity
import MeshProtos
import ServiceLifecycle
import Synchronization

#if canImport(FoundationEssentials)
  import FoundationEssentials
#else
  import Foundation
#endif

/// A sidecar's config stream: it subscribes to the control plane over its own identity,
/// validates each snapshot, applies it and ACKs, or NACKs with the reason and keeps running
/// the config it has. The last good config is kept in the state folder, so a sidecar
/// restarted while the control plane is down starts with it. A broken stream is opened again
/// with backoff and jitter.
///
/// Snapshots also carry the mesh's trust and its registered endpoints. The bundle is written
/// where the sidecar's certificate watcher reloads it; a request to renew goes to the
/// certificate keeper; registered endpoints are added to the config's own. Every message tells
/// the control plane the trust generation and the certificate serial in use.
///
/// While the app reports SERVING on `grpc.health.v1`, the stream also registers the sidecar's
/// inbound endpoint with its labels and the app's methods (read by reflection), renewed every
/// third of its lease; an app that stops serving is withdrawn, and so is the endpoint when the
/// sidecar shuts down.
public struct ConfigSubscriber: Service {
  public struct Identity: Sendable {
    public var service: String
    public var trustDomain: String

    public init(service: String, trustDomain: String) {
      self.service = service
      self.trustDomain = trustDomain
    }
  }

  /// What the sidecar registers, and how it knows its app is serving.
  public struct Registering: Sendable {
    public var app: Address
    public var labels: [String: String]
    public var lease: Duration
    /// How often the app's health is asked.
    public var probeInterval: Duration
    /// How many health probes in a row the app may leave unanswered before its endpoint is
    /// withdrawn (an answer of NOT_SERVING withdraws it at once).
    public static let unansweredProbes = 2

    public init(
      app: Address, labels: [String: String], lease: Duration = .seconds(15),
      probeInterval: Duration = .seconds(1)
    ) {
      self.app = app
      self.labels = labels
      self.lease = lease
      self.probeInterval = probeInterval
    }
  }

  private let connection: ControlPlaneConnection
  private var replicas: ControlPlaneReplicas { connection.replicas }
  private let files: CertificateKeeper.Files
  private let identity: Identity
  private let advertised: @Sendable () async -> String?
  private let registering: Registering?
  private let base: MeshConfig
  private let state: String
  private let events: CertificateEvents
  /// Called with every config the sidecar runs from now on, and its version.
  private let apply: @Sendable (MeshConfig, Int64) -> Void
  private let logger: Logger

  /// `advertised` gives the inbound address others dial once it is bound; `base` is the config
  /// the sidecar started with (its bootstrap's mesh file), run until the control plane sends one.
  public init(
    connection: ControlPlaneConnection, files: CertificateKeeper.Files, identity: Identity,
    advertised: @escaping @Sendable () async -> String?, registering: Registering?,
    base: MeshConfig, state: String, events: CertificateEvents, logger: Logger,
    apply: @escaping @Sendable (MeshConfig, Int64) -> Void
  ) {
    self.connection = connection
    self.files = files
    self.identity = identity
    self.advertised = advertised
    self.registering = registering
    self.base = base
    self.state = state
    self.events = events
    self.apply = apply
    self.logger = logger
  }

  private var configFile: String { "\(state)/mesh.yaml" }
  private var versionFile: String { "\(state)/mesh.version" }
  private var trustFile: String { "\(state)/trust.generation" }
  private var discoveryFile: String { "\(state)/discovery.bin" }

  /// The trust generation whose bundle is in place (0: the one the sidecar joined with).
  private func persistedTrustGeneration() -> Int64 {
    (try? String(contentsOfFile: trustFile, encoding: .utf8)).flatMap {
      Int64($0.trimmedOfWhitespace)
    } ?? 0
  }

  private func persistedConfig() -> (config: MeshConfig, version: Int64)? {
    guard let text = try? String(contentsOfFile: configFile, encoding: .utf8),
      let versionText = try? String(contentsOfFile: versionFile, encoding: .utf8),
      let version = Int64(versionText.trimmedOfWhitespace),
      let config = try? MeshConfig(yaml: text, file: configFile)
    else { return nil }
    return (config, version)
  }

  private func persistedDiscovery() -> Trellis_Mesh_V1_Discovery? {
    guard let data = FileManager.default.contents(atPath: discoveryFile) else { return nil }
    return try? Trellis_Mesh_V1_Discovery(serializedBytes: data)
  }

  /// What this sidecar last ran, as persisted: the config version and the registered
  /// endpoints added to it; nil when nothing was persisted.
  public func persisted() -> (config: MeshConfig, version: Int64)? {
    let config = persistedConfig()
    let discovery = persistedDiscovery()
    guard config != nil || discovery != nil else { return nil }
    return (
      Self.merge(config?.config ?? base, discovery, own: identity.service, logger: nil),
      config?.version ?? 0
    )
  }

  /// The serial of the certificate in use.
  private func certificateSerial() -> String {
    (try? CertificateFiles.readCertificates(files.certificate))?.first?.serialHex ?? ""
  }

  public func run() async throws {
    guard let advertise = await advertised() else { return }  // cancelled before binding
    let persisted = persistedConfig()
    let progress = Progress(
      node: "\(identity.service)@\(advertise)", advertise: advertise,
      running: persisted?.version ?? 0, config: persisted?.config ?? base,
      trust: persistedTrustGeneration(), discovery: persistedDiscovery())
    try await withThrowingDiscardingTaskGroup { group in
      if let registering {
        group.addTask { await self.register(registering, progress) }
      }
      group.addTask { try await self.subscribe(progress) }
    }
  }

  /// Opens the stream again and again until shutdown.
  private func subscribe(_ progress: Progress) async throws {
    while !Task.isShuttingDownGracefully {
      do {
        // On shutdown the stream is closed gracefully, the withdrawal sent first.
        let moved = try await withGracefulShutdownHandler {
          try await self.stream(progress)
        } onGracefulShutdown: {
          progress.close()
        }
        // Opened again at once on the sidecar's new connection.
        if moved { continue }
      } catch {
        if Task.isShuttingDownGracefully || Task.isCancelled { return }
        logger.warning(
          "config stream lost; running version \(progress.running)",
          metadata: ["error": "\(error)", "attempt": "\(progress.failures + 1)"])
      }
      if Task.isShuttingDownGracefully { return }
      progress.failed()
      let failures = progress.failures
      // 0.5 s, 1 s, 2 s … up to 30 s, with jitter, so sidecars do not return in a herd.
      let wait =
        min(30, Double(sign: .plus, exponent: min(max(0, failures - 1), 6) - 1, significand: 1))
        * Double.random(in: 0.5...1.5)
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

  /// Keeps the registration in step with the app's health, renewed every third of its lease.
  private func register(_ registering: Registering, _ progress: Progress) async {
    var registration = Trellis_Mesh_V1_Registration()
    registration.address = progress.advertise
    registration.labels = registering.labels
    registration.leaseSeconds = Int64(registering.lease.components.seconds)
    var methods: [Trellis_Mesh_V1_MethodInfo]?
    var methodsTried: ContinuousClock.Instant?
    var sent: ContinuousClock.Instant?
    var unanswered = 0
    do {
      try await AppProbe.with(app: registering.app) { probe in
        while !Task.isShuttingDownGracefully {
          // An app that answers NOT_SERVING (draining) is withdrawn at once; one that does not
          // answer only after `Registering.unansweredProbes` probes in a row, so one probe lost
          // on a busy machine does not take a serving endpoint out of every caller's view.
          let serving: Bool
          switch await probe.health() {
          case .serving:
            serving = true
            unanswered = 0
          case .notServing:
            serving = false
            unanswered = 0
          case .unanswered(let reason):
            unanswered += 1
            serving = registration.serving && unanswered < Registering.unansweredProbes
            if registration.serving {
              logger.warning(
                "the app did not answer its health probe",
                metadata: [
                  "reason": "\(reason)", "in_a_row": "\(unanswered)",
                  "withdrawn_after": "\(Registering.unansweredProbes)",
                ])
            }
          }
          if serving, methods == nil, methodsTried.map({ .now - $0 > .seconds(30) }) ?? true {
            methodsTried = .now
            do {
              methods = try await probe.methods()
            } catch {
              logger.warning(
                "cannot read the app's methods by reflection; registering without them",
                metadata: ["error": "\(error)"])
            }
          }
          var next = registration
          next.serving = serving
          next.methods = methods ?? []
          let renew = sent.map { .now - $0 >= registering.lease / 3 } ?? true
          if next != registration || renew {
            if next.serving != registration.serving || sent == nil {
              logger.info(
                serving
                  ? "app is SERVING: endpoint registered" : "app is not serving: not registered",
                metadata: ["address": "\(progress.advertise)"])
            }
            registration = next
            progress.register(registration)
            sent = .now
          }
          try? await cancelWhenGracefulShutdown {
            try await Task.sleep(for: registering.probeInterval)
          }
        }
      }
    } catch {
      logger.error("cannot probe the app", metadata: ["error": "\(error)"])
    }
  }

  /// What the stream's tasks share: what runs, what is registered, and the open stream's
  /// outbox.
  private final class Progress: Sendable {
    struct State {
      var running: Int64
      var config: MeshConfig
      var trust: Int64
      var discovery: Trellis_Mesh_V1_Discovery?
      var failures = 0
      var registration: Trellis_Mesh_V1_Registration?
      var outbox: AsyncStream<Trellis_Mesh_V1_SubscribeRequest>.Continuation?
      var closing = false
    }

    let node: String
    let advertise: String
    private let state: Mutex<State>

    init(
      node: String, advertise: String, running: Int64, config: MeshConfig, trust: Int64,
      discovery: Trellis_Mesh_V1_Discovery?
    ) {
      self.node = node
      self.advertise = advertise
      state = Mutex(State(running: running, config: config, trust: trust, discovery: discovery))
    }

    func withLock<T>(_ body: (inout State) -> T) -> T { state.withLock { body(&$0) } }
    var running: Int64 { withLock { $0.running } }
    var failures: Int { withLock { $0.failures } }
    func failed() { withLock { $0.failures += 1 } }
    func established() { withLock { $0.failures = 0 } }

    /// A message saying what runs now (no nonce: a report), with the registration if any.
    func report(serial: String) -> Trellis_Mesh_V1_SubscribeRequest {
      withLock { state in
        var message = Trellis_Mesh_V1_SubscribeRequest()
        message.node = node
        message.version = state.running
        message.trustGeneration = state.trust
        message.discoveryGeneration = state.discovery?.generation ?? 0
        message.certificateSerial = serial
        if let registration = state.registration { message.registration = registration }
        return message
      }
    }

    /// Opens a stream's outbox; returns false when the sidecar is shutting down.
    func open(_ outbox: AsyncStream<Trellis_Mesh_V1_SubscribeRequest>.Continuation) -> Bool {
      withLock { state in
        guard !state.closing else { return false }
        state.outbox = outbox
        return true
      }
    }

    func send(_ message: Trellis_Mesh_V1_SubscribeRequest) {
      let outbox = withLock { $0.outbox }
      outbox?.yield(message)
    }

    /// A new registration (or a renewal of the lease), sent on the open stream if any.
    func register(_ registration: Trellis_Mesh_V1_Registration) {
      let outbox = withLock { state in
        state.registration = registration
        return state.outbox
      }
      var message = Trellis_Mesh_V1_SubscribeRequest()
      message.node = node
      message.registration = registration
      outbox?.yield(message)
    }

    /// Withdraws the registration and ends the open stream gracefully.
    func close() {
      let (outbox, registration) = withLock { state in
        state.closing = true
        defer { state.outbox = nil }
        state.registration?.serving = false
        return (state.outbox, state.registration)
      }
      if let registration, let outbox {
        var message = Trellis_Mesh_V1_SubscribeRequest()
        message.node = node
        message.registration = registration
        outbox.yield(message)
      }
      outbox?.finish()
    }
  }

  /// One subscription to the replica in use, until the stream ends (or, once shutdown began,
  /// two seconds after). A replica that fails it — gone, hung, or not answering in time — is
  /// left for the next; one that ends it by itself (aging its streams out) for one chosen at
  /// random, so sidecars spread again over the replicas. Returns true when the stream ended
  /// because the sidecar's connection to the replica was made anew (a renewal, a new trust
  /// bundle): it is opened again at once, on the new one.
  private func stream(_ progress: Progress) async throws -> Bool {
    let address = replicas.current
    let client = try connection.client()
    do {
      try await stream(progress, to: address, over: client)
    } catch is Moved {
      logger.debug("the config stream moves to the sidecar's new connection")
      return true
    } catch  where !Task.isShuttingDownGracefully && !Task.isCancelled {
      // The next stream gets a connection of its own, even to the same replica.
      connection.discard(client)
      let next = replicas.failed(address)
      if next != address {
        logger.warning(
          "moving to another control plane replica",
          metadata: ["from": "\(address)", "to": "\(next)", "error": "\(error)"])
      }
      throw error
    }
    if !Task.isShuttingDownGracefully {
      let next = replicas.spread()
      if next != address {
        logger.info(
          "the control plane replica ended the config stream; moving to another",
          metadata: ["from": "\(address)", "to": "\(next)"])
      }
    }
    return false
  }

  /// Ends a stream whose connection is no longer the one in use.
  private struct Moved: Error {}

  /// A replica that has not answered the subscription within this long is given up.
  static let answerTimeout = Duration.seconds(10)

  /// One subscription to `address`, over the sidecar's connection to it.
  private func stream(
    _ progress: Progress, to address: Address, over client: ControlPlaneConnection.Client
  ) async throws {
    let answered = Answered()
    let (requests, outbox) = AsyncStream.makeStream(of: Trellis_Mesh_V1_SubscribeRequest.self)
    guard progress.open(outbox) else { return }
    outbox.yield(progress.report(serial: certificateSerial()))
    events.onRenewed { progress.send(progress.report(serial: self.certificateSerial())) }
    defer { events.onRenewed(nil) }
    try await withThrowingTaskGroup(of: Void.self) { group in
      group.addTask {
        try await Trellis_Mesh_V1_Config.Client(wrapping: client).subscribe(
          requestProducer: { writer in
            for await request in requests { try await writer.write(request) }
          },
          onResponse: { response in
            answered.set()
            progress.established()
            self.logger.info(
              "subscribed to the control plane", metadata: ["replica": "\(address)"])
            for try await snapshot in response.messages {
              progress.send(self.handle(snapshot, progress))
            }
            outbox.finish()
          })
      }
      group.addTask {
        try await Task.sleep(for: Self.answerTimeout)
        if !answered.value {
          throw RPCError(
            code: .deadlineExceeded,
            message: "the control plane at \(address) did not answer within \(Self.answerTimeout)")
        }
        try await Task.sleep(for: .seconds(1_000_000_000))
      }
      group.addTask { [connection] in
        // The connection made anew (the certificate files changed): the stream moves to it.
        while connection.isCurrent(client) { try await Task.sleep(for: .seconds(1)) }
        throw Moved()
      }
      group.addTask {
        // A control plane that does not close the stream at shutdown gets two seconds.
        try await gracefulShutdown()
        try await Task.sleep(for: .seconds(2))
        throw CancellationError()
      }
      try await group.next()
      group.cancelAll()
    }
  }

  /// Applies what a snapshot changes; returns the ACK, or the NACK with every reason.
  private func handle(
    _ snapshot: Trellis_Mesh_V1_ConfigSnapshot, _ progress: Progress
  ) -> Trellis_Mesh_V1_SubscribeRequest {
    var errors: [String] = []
    // The trust first: it does not depend on the config being good.
    if snapshot.trustGeneration != 0, snapshot.trustGeneration != progress.withLock(\.trust) {
      do {
        try installBundle(snapshot)
        progress.withLock { $0.trust = snapshot.trustGeneration }
        logger.info(
          "trust bundle installed", metadata: ["trust_generation": "\(snapshot.trustGeneration)"])
      } catch {
        errors.append("trust generation \(snapshot.trustGeneration): \(error)")
      }
    }
    var changed = false
    if snapshot.version != 0, snapshot.version != progress.running {
      do {
        let config = try check(snapshot, advertise: progress.advertise)
        try persist(snapshot)
        progress.withLock {
          $0.config = config
          $0.running = snapshot.version
        }
        changed = true
        logger.info("config applied", metadata: ["version": "\(snapshot.version)"])
      } catch {
        errors.append("\(error)")
        logger.warning(
          "config refused; keeping version \(progress.running)",
          metadata: ["version": "\(snapshot.version)", "error": "\(error)"])
      }
    }
    var resyncDiscovery = false
    let running = progress.withLock { $0.discovery }
    if snapshot.hasDiscovery, snapshot.discovery.generation != running?.generation ?? -1 {
      if let discovery = Self.discovery(snapshot.discovery, on: running) {
        do {
          try write([(discoveryFile, try discovery.serializedBytes())])
        } catch {
          logger.warning(
            "cannot persist the registered endpoints", metadata: ["error": "\(error)"])
        }
        progress.withLock { $0.discovery = discovery }
        changed = true
      } else {
        // A delta from another generation than the one this sidecar runs.
        resyncDiscovery = true
        logger.info(
          "discovery delta does not apply; asking for every endpoint",
          metadata: [
            "base": "\(snapshot.discovery.baseGeneration)",
            "running": "\(running?.generation ?? 0)",
          ])
      }
    }
    if changed {
      let (config, discovery, version) = progress.withLock {
        ($0.config, $0.discovery, $0.running)
      }
      apply(Self.merge(config, discovery, own: identity.service, logger: logger), version)
    }
    if snapshot.renewCertificate { events.requestRenewal() }
    var answer = progress.report(serial: certificateSerial())
    answer.responseNonce = snapshot.nonce
    answer.errorDetail = errors.joined(separator: "; ")
    answer.resyncDiscovery = resyncDiscovery
    return answer
  }

  /// The registered endpoints a snapshot's discovery makes: the whole list, or a delta applied
  /// on the generation it was made from; nil when `running` is not that one.
  static func discovery(
    _ received: Trellis_Mesh_V1_Discovery, on running: Trellis_Mesh_V1_Discovery?
  ) -> Trellis_Mesh_V1_Discovery? {
    guard received.delta else { return received }
    guard let running, running.generation == received.baseGeneration else { return nil }
    var byNode = Dictionary(running.endpoints.map { ($0.node, $0) }) { _, last in last }
    for node in received.removed { byNode[node] = nil }
    for endpoint in received.endpoints { byNode[endpoint.node] = endpoint }
    var whole = Trellis_Mesh_V1_Discovery()
    whole.generation = received.generation
    whole.endpoints = byNode.values.sorted { $0.node < $1.node }
    return whole
  }

  /// The config with the registered endpoints added to each service's own (a service only
  /// registered is added with the default policies).
  static func merge(
    _ config: MeshConfig, _ discovery: Trellis_Mesh_V1_Discovery?, own: String, logger: Logger?
  ) -> MeshConfig {
    guard let discovery else { return config }
    var merged = config
    for registered in discovery.endpoints {
      guard let address = try? Address(parsing: registered.address) else {
        logger?.warning(
          "ignoring a registered endpoint that is not HOST:PORT",
          metadata: ["service": "\(registered.service)", "address": "\(registered.address)"])
        continue
      }
      var service = merged.services[registered.service] ?? MeshConfig.Service()
      // What the service's own descriptors say of its methods, unless the config says
      // otherwise: no side effects and idempotent methods may be retried.
      for method in registered.methods
      where config.services[registered.service]?
        .idempotency[method.name] == nil
      {
        service.idempotency[method.name] =
          method.idempotencyLevel == 1 || method.idempotencyLevel == 2
      }
      for method in registered.methods where method.serverStreaming {
        service.streaming.insert(method.name)
      }
      guard !service.endpoints.contains(where: { $0.address == address }) else {
        merged.services[registered.service] = service
        continue
      }
      service.endpoints.append(MeshConfig.Endpoint(address: address, labels: registered.labels))
      merged.services[registered.service] = service
    }
    return merged
  }

  /// Validates a snapshot as this sidecar must run it.
  private func check(
    _ snapshot: Trellis_Mesh_V1_ConfigSnapshot, advertise own: String
  ) throws -> MeshConfig {
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
      for endpoint in service.endpoints where "\(endpoint.address)" == own {
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
    try write([
      (configFile, Data(snapshot.yaml.utf8)), (versionFile, Data("\(snapshot.version)\n".utf8)),
    ])
  }

  /// Writes the bundle where the sidecar's certificate watcher reloads it, then its generation.
  private func installBundle(_ snapshot: Trellis_Mesh_V1_ConfigSnapshot) throws {
    let bundle = try TrustBundle(pem: snapshot.trustBundle)
    guard !bundle.roots.isEmpty else { throw IdentityError("the trust bundle is empty") }
    try write([
      (files.bundle, Data(snapshot.trustBundle.utf8)),
      (trustFile, Data("\(snapshot.trustGeneration)\n".utf8)),
    ])
  }

  /// Each file whole or not at all, in order.
  private func write(_ files: [(path: String, data: Data)]) throws {
    for (path, data) in files { try CertificateFiles.replace(path, with: Array(data)) }
  }
}

/// Whether a replica answered a subscription.
private final class Answered: Sendable {
  private let answered = Mutex(false)
  var value: Bool { answered.withLock { $0 } }
  func set() { answered.withLock { $0 = true } }
}
