import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import MeshConfig
import MeshIdentity
import MeshProtos
import Synchronization
import X509

/// The sidecars subscribed to config, and what each said last. Whenever the config, the trust
/// or a renewal request changes, every open stream gets a snapshot made for its sidecar.
public final class ConfigHub: Sendable {
  /// One open stream: woken when there is something new, it asks for its snapshot when it
  /// writes (`snapshot(for:)`), so a snapshot is made against what the stream sent last.
  private struct Subscriber {
    var node: String
    var wake: ConfigWaker
    /// The discovery generation this stream sent last; nil: none yet, a whole one next.
    var sentDiscovery: Int64?
  }

  /// What the hub knows of one sidecar beyond its public status.
  private struct Node {
    var status = Trellis_Mesh_V1_SidecarStatus()
    /// When this control plane issued the certificate the sidecar serves with, and from which
    /// issuer; nil when it did not issue it.
    var issued: IssuedCertificate?
    /// Its open streams (a new one may open before the old one closes), so that finding a
    /// node's streams never walks every stream: with thousands open, a walk for each of them
    /// closing or reporting is quadratic.
    var streams: Set<UUID> = []
  }

  /// The mesh's trust as snapshots carry it.
  struct Trust: Sendable {
    var generation: Int64
    var bundlePEM: String
    var issuerSerial: String
  }

  private struct State {
    var subscribers: [UUID: Subscriber] = [:]
    var nodes: [String: Node] = [:]
    var nonce = 0
    var config: (version: Int64, yaml: String)?
    var trust = Trust(generation: 0, bundlePEM: "", issuerSerial: "")
    var renewals: [String: Date] = [:]
    /// The serials of the issuers every control plane sharing the store signs with now.
    var issuersInForce: Set<String> = []
    /// Subjects of every issuer known, and of the root above it, by the issuer's serial.
    var issuers: [String: (issuer: String, root: String)] = [:]
    /// Registered endpoints by node, each alive until its lease runs out.
    var registrations: [String: Registered] = [:]
    var storeKeepsLeases = false
    /// Starts from the clock (ms), so a generation after a restart never repeats one a sidecar
    /// ran before it: config versions and trust generations are stored, this is not.
    var discoveryGeneration = Int64(Date().timeIntervalSince1970 * 1000)
    /// The nodes whose registration changed, with the generation that changed them, oldest
    /// first: what a delta is made of.
    var discoveryChanges: [(generation: Int64, node: String)] = []
    /// Deltas can be made from this generation on (the record of changes reaches back to it).
    var discoveryFloor: Int64 = 0
    /// The rotation steps `Rotate` calls wait on now.
    var rotations: [UUID: (name: String, started: Date, step: Step)] = [:]
  }

  /// How many changes the hub remembers for deltas; a stream further behind gets every
  /// endpoint.
  static let discoveryChangesKept = 10_000

  /// A new discovery generation, changing `nodes` (nil: anything, so no delta reaches back
  /// past it).
  private static func discoveryChanged(_ nodes: [String]?, _ state: inout State) {
    state.discoveryGeneration += 1
    guard let nodes else {
      state.discoveryChanges = []
      state.discoveryFloor = state.discoveryGeneration
      return
    }
    for node in nodes { state.discoveryChanges.append((state.discoveryGeneration, node)) }
    let excess = state.discoveryChanges.count - discoveryChangesKept
    if excess > 0 {
      state.discoveryFloor = state.discoveryChanges[excess - 1].generation
      state.discoveryChanges.removeFirst(excess)
    }
  }

  struct Registered {
    var endpoint: Trellis_Mesh_V1_RegisteredEndpoint
    var expires: ContinuousClock.Instant
  }

  private let state = Mutex(State())

  public init() {}

  // MARK: What every sidecar should run

  /// Sends a snapshot of the new config to every subscriber, unless a version as new runs
  /// already (one control plane stored it, and every one follows the store).
  func publish(version: Int64, yaml: String) {
    let newer = state.withLock { state in
      guard (state.config?.version ?? 0) < version else { return false }
      state.config = (version, yaml)
      return true
    }
    if newer { pushAll() }
  }

  /// The config version the hub pushes.
  var configVersion: Int64 { state.withLock { $0.config?.version ?? 0 } }

  /// Sends the new trust (bundle, issuer) to every subscriber.
  func publish(trust generation: MeshTrust.Generation) {
    state.withLock {
      guard $0.trust.generation < generation.number else { return }
      $0.trust = Trust(
        generation: generation.number, bundlePEM: generation.bundlePEM,
        issuerSerial: generation.issuerSerial)
      $0.issuers[generation.issuerSerial] = (
        "\(generation.issuer.certificate.subject)",
        generation.issuerRoot.map { "\($0.subject)" } ?? ""
      )
    }
    pushAll()
  }

  /// The issuers other control planes on the store sign with now (with the roots they chain
  /// to, to name them): a certificate from one of them needs no renewal. Pushes if that changed.
  func setIssuersInForce(_ issuers: [(issuer: Certificate, root: Certificate?)]) {
    let changed = state.withLock { state in
      for (issuer, root) in issuers {
        state.issuers[issuer.serialHex] = ("\(issuer.subject)", root.map { "\($0.subject)" } ?? "")
      }
      let serials = Set(issuers.map(\.issuer.serialHex))
      defer { state.issuersInForce = serials }
      return serials != state.issuersInForce
    }
    if changed { pushAll() }
  }

  /// Remembers an issuer that was in force earlier, to name it in statuses.
  func remember(issuer: Certificate, root: Certificate?) {
    state.withLock {
      $0.issuers[issuer.serialHex] = ("\(issuer.subject)", root.map { "\($0.subject)" } ?? "")
    }
  }

  /// Asks every sidecar of `identity` whose certificate was issued at or before `at` to renew.
  func requestRenewal(of identity: String, at: Date) {
    let newer = state.withLock { state in
      guard state.renewals[identity].map({ $0 < at }) ?? true else { return false }
      state.renewals[identity] = at
      return true
    }
    if newer { pushAll() }
  }

  func setRenewals(_ renewals: [String: Date]) {
    state.withLock { $0.renewals = renewals }
  }

  // MARK: Discovery

  /// What a registration changed, to be stored before it is pushed.
  enum RegistrationChange {
    case stored(Trellis_Mesh_V1_RegisteredEndpoint, lease: Duration)
    /// Unchanged: only its lease runs again.
    case renewed(Trellis_Mesh_V1_RegisteredEndpoint, lease: Duration)
    case removed
  }

  /// Whether the store withdraws a registration whose lease ran out (etcd, where every control
  /// plane follows the store), rather than this hub's own sweep.
  var storeKeepsLeases: Bool {
    get { state.withLock { $0.storeKeepsLeases } }
    set { state.withLock { $0.storeKeepsLeases = newValue } }
  }

  /// A registration another control plane stored (or withdrew, with nil), as the store tells;
  /// true if it changed what the hub pushes.
  @discardableResult
  func follow(node: String, endpoint: Trellis_Mesh_V1_RegisteredEndpoint?) -> Bool {
    state.withLock { state in
      guard let endpoint else {
        guard state.registrations.removeValue(forKey: node) != nil else { return false }
        Self.discoveryChanged([node], &state)
        return true
      }
      if state.registrations[node]?.endpoint == endpoint { return false }
      state.registrations[node] = Registered(endpoint: endpoint, expires: .now + .seconds(300))
      Self.discoveryChanged([node], &state)
      return true
    }
  }

  /// Every registration in the store, replacing what the hub had; true if that changed it.
  @discardableResult
  func follow(registrations endpoints: [Trellis_Mesh_V1_RegisteredEndpoint]) -> Bool {
    state.withLock { state in
      let byNode = Dictionary(endpoints.map { ($0.node, $0) }) { _, last in last }
      let before = state.registrations.mapValues(\.endpoint)
      guard before != byNode else { return false }
      state.registrations = byNode.mapValues {
        Registered(endpoint: $0, expires: .now + .seconds(300))
      }
      let changed = Set(before.keys).union(byNode.keys).filter { before[$0] != byNode[$0] }
      Self.discoveryChanged(changed.sorted(), &state)
      return true
    }
  }

  /// Registrations stored before a restart, each given a fresh lease to be renewed in.
  func restore(_ endpoints: [Trellis_Mesh_V1_RegisteredEndpoint], lease: Duration) {
    state.withLock { state in
      for endpoint in endpoints {
        state.registrations[endpoint.node] = Registered(
          endpoint: endpoint, expires: .now + lease)
      }
      if !endpoints.isEmpty { Self.discoveryChanged(nil, &state) }
    }
  }

  /// A registration (or a withdrawal) from `node` of `service`; nil when it only renewed the
  /// lease. The change is pushed by `pushAll` once stored.
  func register(
    node: String, service: String, _ registration: Trellis_Mesh_V1_Registration
  ) -> RegistrationChange? {
    state.withLock { state in
      guard registration.serving else {
        guard state.registrations.removeValue(forKey: node) != nil else { return nil }
        Self.discoveryChanged([node], &state)
        return .removed
      }
      var endpoint = Trellis_Mesh_V1_RegisteredEndpoint()
      endpoint.service = service
      endpoint.address = registration.address
      endpoint.labels = registration.labels
      endpoint.node = node
      endpoint.methods = registration.methods
      let lease = Duration.seconds(min(300, max(3, registration.leaseSeconds)))
      let unchanged = state.registrations[node]?.endpoint == endpoint
      state.registrations[node] = Registered(endpoint: endpoint, expires: .now + lease)
      if unchanged { return .renewed(endpoint, lease: lease) }
      Self.discoveryChanged([node], &state)
      return .stored(endpoint, lease: lease)
    }
  }

  /// The registered endpoints now.
  var discovery: Trellis_Mesh_V1_Discovery {
    state.withLock { state in
      var discovery = Trellis_Mesh_V1_Discovery()
      discovery.generation = state.discoveryGeneration
      discovery.endpoints = state.registrations.values.map(\.endpoint).sorted { $0.node < $1.node }
      return discovery
    }
  }

  /// Removes the registrations whose lease ran out; returns their nodes.
  func expireLeases(now: ContinuousClock.Instant = .now) -> [String] {
    state.withLock { state in
      guard !state.storeKeepsLeases else { return [] }
      let expired = state.registrations.filter { $0.value.expires <= now }.map(\.key).sorted()
      for node in expired { state.registrations[node] = nil }
      if !expired.isEmpty { Self.discoveryChanged(expired, &state) }
      return expired
    }
  }

  /// How many config streams are open.
  var streams: Int { state.withLock { $0.subscribers.count } }

  /// Wakes every stream: each then sends what its sidecar should run now.
  func pushAll() {
    let wakes = state.withLock { $0.subscribers.values.map(\.wake) }
    for wake in wakes { wake.yield() }
  }

  /// What the sidecar on stream `id` should run now, with a fresh nonce: the config's text
  /// and the bundle only if it does not run them yet, and the registered endpoints changed
  /// since the stream sent them last (all of them on a new stream). Nil once the stream is
  /// gone.
  func snapshot(for id: UUID) -> Trellis_Mesh_V1_ConfigSnapshot? {
    state.withLock { state in
      guard let subscriber = state.subscribers[id] else { return nil }
      let snapshot = Self.snapshot(
        for: subscriber.node, sentDiscovery: subscriber.sentDiscovery, &state)
      state.subscribers[id]?.sentDiscovery = state.discoveryGeneration
      return snapshot
    }
  }

  private static func snapshot(
    for node: String, sentDiscovery: Int64?, _ state: inout State
  ) -> Trellis_Mesh_V1_ConfigSnapshot {
    state.nonce += 1
    let status = state.nodes[node]?.status
    var snapshot = Trellis_Mesh_V1_ConfigSnapshot()
    snapshot.version = state.config?.version ?? 0
    if status?.version != snapshot.version { snapshot.yaml = state.config?.yaml ?? "" }
    snapshot.nonce = "\(snapshot.version)-\(state.trust.generation)-\(state.nonce)"
    snapshot.trustGeneration = state.trust.generation
    if status?.trustGeneration != state.trust.generation {
      snapshot.trustBundle = state.trust.bundlePEM
    }
    snapshot.renewCertificate = state.nodes[node].map { needsRenewal($0, state) } ?? false
    let generation = state.discoveryGeneration
    guard sentDiscovery != generation else { return snapshot }
    snapshot.discovery.generation = generation
    if let base = sentDiscovery, base >= state.discoveryFloor, base < generation {
      // What changed since: newest first, each node once.
      var nodes = Set<String>()
      for change in state.discoveryChanges.reversed() {
        guard change.generation > base else { break }
        nodes.insert(change.node)
      }
      snapshot.discovery.delta = true
      snapshot.discovery.baseGeneration = base
      for node in nodes.sorted() {
        if let registered = state.registrations[node] {
          snapshot.discovery.endpoints.append(registered.endpoint)
        } else {
          snapshot.discovery.removed.append(node)
        }
      }
      return snapshot
    }
    snapshot.discovery.endpoints = state.registrations.values.map(\.endpoint).sorted {
      $0.node < $1.node
    }
    return snapshot
  }

  /// Whether a sidecar's certificate must be issued again: another issuer signed it than the
  /// one in force, or the operator asked for a renewal since it was issued.
  private static func needsRenewal(_ node: Node, _ state: State) -> Bool {
    guard let issued = node.issued else { return false }
    if let serial = issued.issuerSerial, serial != state.trust.issuerSerial,
      !state.issuersInForce.contains(serial)
    {
      return true
    }
    if issued.issuerSerial == nil { return true }
    if let asked = state.renewals[issued.spiffeID], issued.issuedAt <= asked { return true }
    return false
  }

  // MARK: Subscriptions

  /// Registers a stream; the first snapshot is sent unless the sidecar runs everything already.
  /// The stream's task waits for each wake on the sequence returned.
  func subscribe(
    id: UUID, node: String, identity: String, hello: Trellis_Mesh_V1_SubscribeRequest,
    issued: IssuedCertificate?, certificateNotAfter: Date?
  ) -> AsyncStream<Void> {
    let (stream, wake) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    subscribe(
      id: id, node: node, identity: identity, hello: hello, issued: issued,
      certificateNotAfter: certificateNotAfter,
      wake: ConfigWaker(yield: { wake.yield() }, finish: { wake.finish() }))
    return stream
  }

  /// Registers a stream woken through `wake` (a stream served with no task of its own).
  func subscribe(
    id: UUID, node: String, identity: String, hello: Trellis_Mesh_V1_SubscribeRequest,
    issued: IssuedCertificate?, certificateNotAfter: Date?, wake: ConfigWaker
  ) {
    state.withLock { state in
      // A sidecar that runs the generation this hub is at needs no endpoint sent; any other
      // gets them all (generations of another control plane mean nothing here).
      let sentDiscovery =
        hello.discoveryGeneration == state.discoveryGeneration ? state.discoveryGeneration : nil
      state.subscribers[id] = Subscriber(node: node, wake: wake, sentDiscovery: sentDiscovery)
      var entry = state.nodes[node] ?? Node()
      entry.streams.insert(id)
      entry.status.node = node
      entry.status.spiffeID = identity
      entry.status.version = hello.version
      entry.status.trustGeneration = hello.trustGeneration
      entry.status.discoveryGeneration = hello.discoveryGeneration
      entry.status.connected = true
      entry.status.lastSeenUnix = Int64(Date().timeIntervalSince1970)
      state.nodes[node] = entry
      Self.record(node: node, serial: hello.certificateSerial, issued: issued, &state)
      if entry.status.certificateNotAfterUnix == 0 {
        state.nodes[node]?.status.certificateNotAfterUnix = Int64(
          certificateNotAfter?.timeIntervalSince1970 ?? 0)
      }
      let current = state.nodes[node]!
      let upToDate =
        hello.version == (state.config?.version ?? 0)
        && hello.trustGeneration == state.trust.generation
        && hello.discoveryGeneration == state.discoveryGeneration
        && !Self.needsRenewal(current, state)
      if !upToDate { wake.yield() }
    }
  }

  func unsubscribe(id: UUID) {
    state.withLock {
      guard let subscriber = $0.subscribers.removeValue(forKey: id) else { return }
      subscriber.wake.finish()
      $0.nodes[subscriber.node]?.streams.remove(id)
      // Another stream of the same node may have replaced this one.
      if $0.nodes[subscriber.node]?.streams.isEmpty ?? false {
        $0.nodes[subscriber.node]?.status.connected = false
      }
    }
  }

  /// An ACK (no error), a NACK, or a report of a new certificate from `node`. A new
  /// certificate that still needs renewing (a rotation went on meanwhile) is answered with a
  /// new snapshot at once.
  func answered(
    node: String, _ message: Trellis_Mesh_V1_SubscribeRequest, snapshotVersion: Int64?,
    issued: IssuedCertificate?
  ) {
    let again = state.withLock { state -> [ConfigWaker] in
      guard var entry = state.nodes[node] else { return [] }
      let newCertificate =
        !message.certificateSerial.isEmpty
        && message.certificateSerial != entry.status.certificateSerial
      entry.status.lastSeenUnix = Int64(Date().timeIntervalSince1970)
      if message.trustGeneration != 0 { entry.status.trustGeneration = message.trustGeneration }
      entry.status.discoveryGeneration = message.discoveryGeneration
      if message.errorDetail.isEmpty {
        if message.version != 0 { entry.status.version = message.version }
      } else {
        entry.status.lastNackVersion = snapshotVersion ?? 0
        entry.status.lastNackError = message.errorDetail
      }
      state.nodes[node] = entry
      Self.record(node: node, serial: message.certificateSerial, issued: issued, &state)
      if message.resyncDiscovery {
        // A delta did not apply: every endpoint goes next.
        for id in entry.streams { state.subscribers[id]?.sentDiscovery = nil }
        return entry.streams.compactMap { state.subscribers[$0]?.wake }
      }
      guard newCertificate, let current = state.nodes[node], Self.needsRenewal(current, state)
      else { return [] }
      return entry.streams.compactMap { state.subscribers[$0]?.wake }
    }
    for wake in again { wake.yield() }
  }

  private static func record(
    node: String, serial: String, issued: IssuedCertificate?, _ state: inout State
  ) {
    guard !serial.isEmpty, var entry = state.nodes[node] else { return }
    entry.status.certificateSerial = serial
    entry.issued = issued
    if let issued {
      entry.status.certificateNotAfterUnix = Int64(issued.notAfter.timeIntervalSince1970)
      let names = issued.issuerSerial.flatMap { state.issuers[$0] }
      entry.status.certificateIssuer = names?.issuer ?? issued.issuerSerial ?? ""
      entry.status.certificateRoot = names?.root ?? ""
    } else {
      entry.status.certificateIssuer = "(not issued by this control plane)"
      entry.status.certificateRoot = ""
    }
    state.nodes[node] = entry
  }

  public var statuses: [Trellis_Mesh_V1_SidecarStatus] {
    state.withLock { state in
      state.nodes.values.map { node in
        var status = node.status
        if let registered = state.registrations[status.node] {
          status.registered = true
          status.registeredAddress = registered.endpoint.address
        }
        return status
      }.sorted { $0.node < $1.node }
    }
  }

  // MARK: Waiting for the sidecars

  /// Which connected sidecars have done a step (`done` decides), which have not, and which
  /// are known but not connected.
  struct Progress {
    var done: [String] = []
    var waiting: [String] = []
    var disconnected: [String] = []
  }

  enum Step {
    /// Runs the bundle of this trust generation (or a later one).
    case trust(Int64)
    /// Serves with a certificate from this issuer (serial), or from the issuer another
    /// replica signs with now.
    case issuer(String)
    /// Has renewed as asked (every sidecar of this identity).
    case renewed(String)
  }

  /// `Rotate` waits on `step` (named as `RunningRotation.step`) until `finished(rotation:)`.
  func started(rotation step: Step, named name: String, at time: Date = Date()) -> UUID {
    let id = UUID()
    state.withLock { $0.rotations[id] = (name, time, step) }
    return id
  }

  func finished(rotation id: UUID) {
    _ = state.withLock { $0.rotations.removeValue(forKey: id) }
  }

  /// The rotation steps running now, oldest first, each with its progress.
  var rotations: [Trellis_Mesh_V1_RunningRotation] {
    let running = state.withLock { $0.rotations.values.sorted { $0.started < $1.started } }
    return running.map { rotation in
      var message = Trellis_Mesh_V1_RunningRotation()
      message.step = rotation.name
      message.startedUnix = Int64(rotation.started.timeIntervalSince1970)
      message.progress = progressMessage(rotation.step)
      return message
    }
  }

  /// `progress(step)` as `Rotate` streams it (without the bundle).
  func progressMessage(_ step: Step) -> Trellis_Mesh_V1_RotateProgress {
    let progress = progress(step)
    var message = Trellis_Mesh_V1_RotateProgress()
    message.trustGeneration = state.withLock { $0.trust.generation }
    message.doneCount = Int32(progress.done.count)
    message.total = Int32(progress.done.count + progress.waiting.count)
    message.waitingFor = progress.waiting
    message.disconnected = progress.disconnected
    message.done = progress.waiting.isEmpty
    return message
  }

  func progress(_ step: Step) -> Progress {
    state.withLock { state in
      var progress = Progress()
      for (name, node) in state.nodes.sorted(by: { $0.key < $1.key }) {
        if case .renewed(let identity) = step, node.status.spiffeID != identity { continue }
        guard node.status.connected else {
          progress.disconnected.append(name)
          continue
        }
        let done: Bool
        switch step {
        case .trust(let generation): done = node.status.trustGeneration >= generation
        case .issuer(let serial):
          // With replicas, a certificate from another replica's issuer in force is as good.
          let issuer = node.issued?.issuerSerial
          done = issuer == serial || issuer.map { state.issuersInForce.contains($0) } ?? false
        case .renewed: done = node.issued != nil && !Self.needsRenewal(node, state)
        }
        if done { progress.done.append(name) } else { progress.waiting.append(name) }
      }
      return progress
    }
  }
}

/// How a config stream is told that there is something new for it (`yield`, many times; each
/// may stand for several), and that it is over (`finish`).
struct ConfigWaker: Sendable {
  let yield: @Sendable () -> Void
  let finish: @Sendable () -> Void
}

/// `trellis.mesh.v1.Config`: the config stream, for workloads over mutual TLS.
public struct ConfigService: Trellis_Mesh_V1_Config.ServiceProtocol {
  let control: ControlContext

  public init(_ control: ControlContext) { self.control = control }

  public func subscribe(
    request: StreamingServerRequest<Trellis_Mesh_V1_SubscribeRequest>, context: ServerContext
  ) async throws -> StreamingServerResponse<Trellis_Mesh_V1_ConfigSnapshot> {
    guard let caller = ControlContext.caller(context) else {
      throw RPCError(code: .unauthenticated, message: "subscribing needs a workload certificate")
    }
    let peer = ControlContext.peerCertificate(context)
    let hub = control.hub
    let store = control.store
    guard hub.streams < control.maximumConfigStreams else {
      throw RPCError(
        code: .resourceExhausted,
        message: """
          this control plane serves its limit of \(control.maximumConfigStreams) config streams: \
          subscribe at another replica
          """)
    }
    // Each stream ends after its age (with jitter, so that streams do not end together); its
    // sidecar subscribes again at a replica of its choosing, so load spreads again over
    // replicas that came back.
    let age = control.configStreamAge * Double.random(in: 0.8...1.2)
    return StreamingServerResponse { writer in
      let id = UUID()
      // Nonces sent and the version each carried, to read NACKs by.
      let sent = SentNonces()
      try await endingAtShutdown {
        try await withThrowingTaskGroup(of: Void.self) { aging in
          aging.addTask { try await Task.sleep(for: age) }
          aging.addTask { try await serve() }
          // The stream aged out, or ended by itself: either way it is over.
          try await aging.next()
          aging.cancelAll()
        }
      }

      @Sendable func serve() async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
          var messages = request.messages.makeAsyncIterator()
          guard var hello = try await messages.next() else { return }
          let node = hello.node.isEmpty ? caller.description : hello.node
          if hello.certificateSerial.isEmpty, let peer {
            hello.certificateSerial = peer.serialHex  // a sidecar that does not report it
          }
          let issued = try await Self.issued(hello.certificateSerial, caller, store)
          let wakes = hub.subscribe(
            id: id, node: node, identity: caller.description, hello: hello,
            issued: issued,
            certificateNotAfter: peer?.notValidAfter)
          defer { hub.unsubscribe(id: id) }
          if hello.hasRegistration {
            try await Self.register(hello.registration, node: node, caller: caller, hub, store)
          }
          group.addTask {
            for await _ in wakes {
              guard let snapshot = hub.snapshot(for: id) else { break }
              sent.withLock { $0[snapshot.nonce] = snapshot.version }
              try await writer.write(snapshot)
            }
          }
          while let message = try await messages.next() {
            let version =
              message.responseNonce.isEmpty
              ? nil : sent.withLock { $0.removeValue(forKey: message.responseNonce) }
            let issued = try await Self.issued(message.certificateSerial, caller, store)
            hub.answered(node: node, message, snapshotVersion: version, issued: issued)
            if message.hasRegistration {
              try await Self.register(message.registration, node: node, caller: caller, hub, store)
            }
          }
          group.cancelAll()
        }
      }
      return [:]
    }
  }

  /// Registers (or withdraws) the caller's endpoint for its own service; a change is stored,
  /// then pushed to every sidecar.
  static func register(
    _ registration: Trellis_Mesh_V1_Registration, node: String, caller: SPIFFEID,
    _ hub: ConfigHub, _ store: any ControlStore
  ) async throws {
    guard let service = caller.serviceName else {
      throw RPCError(
        code: .permissionDenied, message: "\(caller) is not a workload: it registers no endpoint")
    }
    guard let address = try? Address(parsing: registration.address), address.port != 0 else {
      throw RPCError(
        code: .invalidArgument,
        message: "registration: '\(registration.address)' is not a HOST:PORT to dial")
    }
    switch hub.register(node: node, service: service, registration) {
    case nil: return
    case .renewed(let endpoint, let lease):
      try await store.renewRegistration(
        node: node, endpoint: try endpoint.serializedBytes(), lease: lease)
      return
    case .stored(let endpoint, let lease):
      try await store.setRegistration(
        node: node, endpoint: try endpoint.serializedBytes(), lease: lease)
    case .removed:
      try await store.setRegistration(node: node, endpoint: nil, lease: .zero)
    }
    hub.pushAll()
  }

  /// The record of a certificate this control plane issued to `caller`.
  static func issued(
    _ serial: String, _ caller: SPIFFEID, _ store: any ControlStore
  ) async throws -> IssuedCertificate? {
    guard !serial.isEmpty, let issued = try await store.issuedCertificate(serial: serial),
      issued.spiffeID == caller.description
    else { return nil }
    return issued
  }
}

/// The nonces sent on one stream and the version each carried.
private final class SentNonces: Sendable {
  private let nonces = Mutex<[String: Int64]>([:])
  func withLock<T>(_ body: (inout [String: Int64]) -> T) -> T { nonces.withLock { body(&$0) } }
}
