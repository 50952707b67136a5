import Logging
import MeshConfig
import MeshIdentity
import MeshTracing
import NIOConcurrencyHelpers
import NIOCore
import NIOHPACK
import NIOPosix
import ServiceLifecycle
import Synchronization

#if canImport(FoundationEssentials)
  import FoundationEssentials
#else
  import Foundation
#endif

/// The sidecar: an outbound listener for the local app (h2c) that routes each call by
/// `:authority` to a peer sidecar over mutual TLS, and an inbound listener (mutual TLS) that
/// forwards verified calls to the local app (h2c).
public struct Sidecar: Service {
  public struct Configuration: Sendable {
    public var bootstrap: SidecarBootstrap
    /// The mesh config: other services' endpoints and who may call this one.
    public var mesh: MeshConfig
    /// Where the spans of sampled calls go; nil: none are recorded (sampling decisions are
    /// still passed on).
    public var spans: (any SpanSink)?
    /// Takes the app's spans posted to the admin port's `/v1/traces` (OTLP/HTTP, protobuf):
    /// true if accepted, false if dropped; throws when the body is not a valid request.
    public var appSpans: (@Sendable ([UInt8]) throws -> Bool)?
    /// Where live figures (`meshctl top`, `meshctl tap`) are gathered; nil: nowhere.
    public var telemetry: LiveTelemetry?
    /// More of the admin port's `/metrics`, owned by the executable (the span exporter's).
    public var extraMetrics: @Sendable () -> String = { "" }

    public init(bootstrap: SidecarBootstrap, mesh: MeshConfig, spans: (any SpanSink)? = nil) {
      self.bootstrap = bootstrap
      self.mesh = mesh
      self.spans = spans
    }

  }

  private let configuration: Configuration
  /// What calls are routed and authorized by; replaced whole when a new mesh config arrives.
  public let routing: MeshRouting
  /// Sampling and access logs, as the mesh config sets them.
  public let tracing: CallTracing
  /// The version of the mesh config in force (0: the bootstrap's).
  private let configVersion = NIOLockedValueBox<Int64>(0)
  /// The inbound address other sidecars dial, known once the listener is bound: the
  /// advertised address, with the bound port when the configured one is 0.
  public let advertised = Eventually<String>()
  private let tls: ProxyTLS
  private let group: MultiThreadedEventLoopGroup
  private let logger: Logger

  public init(configuration: Configuration, tls: ProxyTLS, logger: Logger) {
    self.configuration = configuration
    self.tls = tls
    self.group = MultiThreadedEventLoopGroup(numberOfThreads: configuration.bootstrap.threads)
    self.logger = logger
    self.routing = MeshRouting(configuration.mesh, service: configuration.bootstrap.service)
    self.tracing = CallTracing(configuration.mesh.tracing, sink: configuration.spans)
  }

  /// Routes, authorizes and traces by `mesh` from now on; calls in flight are not affected.
  public func apply(_ mesh: MeshConfig, version: Int64) {
    routing.apply(mesh)
    tracing.apply(mesh.tracing)
    configVersion.withLockedValue { $0 = version }
  }

  public func run() async throws {
    let metrics = SidecarMetrics()
    let limits = configuration.bootstrap.limits
    let pools = PoolSet(
      group: group, tls: tls, metrics: metrics, idleTimeout: TimeAmount(limits.idleTimeout),
      handshakeTimeout: TimeAmount(limits.handshakeTimeout),
      maxConcurrentStreams: limits.maxConcurrentStreams, tracing: tracing,
      telemetry: configuration.telemetry)
    let state = NIOLockedValueBox(RunState.starting)
    let outbound = try await bindOutbound(pools: pools, metrics: metrics)
    let inbound = try await bindInbound(pools: pools, metrics: metrics)
    var admin: (any Channel)?
    if let address = configuration.bootstrap.admin {
      admin = try await ListenError.naming("admin", address) {
        try await AdminServer.bind(
          host: address.host, port: address.port, group: group,
          reports: reports(state: state, metrics: metrics))
      }
    }
    state.withLockedValue { $0 = .serving }
    var advertise = configuration.bootstrap.advertise
    if advertise.port == 0, let port = inbound.localAddress?.port { advertise.port = port }
    advertised.set("\(advertise)")
    let watcher = Task { await watchCertificateFiles() }
    defer { watcher.cancel() }
    logger.info(
      "listening",
      metadata: [
        "service": "\(configuration.bootstrap.service)",
        "address": "\(Self.hostPort(outbound.localAddress))",
        "inbound_address": "\(Self.hostPort(inbound.localAddress))",
        "admin_address": "\(admin.map { Self.hostPort($0.localAddress) } ?? "none")",
      ])
    try await withGracefulShutdownHandler {
      try await outbound.closeFuture.get()
      try await inbound.closeFuture.get()
    } onGracefulShutdown: {
      state.withLockedValue { $0 = .draining }
      outbound.close(promise: nil)
      inbound.close(promise: nil)
    }
    // Listeners are closed: every accepted connection gets GOAWAY and its calls finish.
    logger.info("draining")
    // The timeout is kept on the event loop: a task waiting on the drain's future could not be
    // cancelled, so a stream that never ends (a subscription) would hold the sidecar forever.
    if try await !pools.drain(within: TimeAmount(drainTimeout)).get() {
      logger.warning(
        "drain timed out; closing the calls still open",
        metadata: ["drain_timeout": "\(drainTimeout)"])
    }
    try await admin?.close()
    logger.info("stopped")
    try await group.shutdownGracefully()
  }

  /// Reloads certificate, key and bundle when their files change (polled each second; a file
  /// caught half-written fails to load and is tried again on the next tick). Open connections
  /// and calls are untouched; new handshakes present the new certificate.
  private func watchCertificateFiles() async {
    let bootstrap = configuration.bootstrap
    let paths = [bootstrap.certificate, bootstrap.privateKey, bootstrap.bundle]
    func signature() -> [String] { paths.map(CertificateFiles.stamp) }
    var loaded = signature()
    var failed: [String] = []
    while !Task.isCancelled {
      try? await Task.sleep(for: .seconds(1))
      let current = signature()
      guard current != loaded, current != failed else { continue }
      do {
        let serial = try tls.reload(
          certificate: bootstrap.certificate, privateKey: bootstrap.privateKey,
          bundle: bootstrap.bundle)
        loaded = current
        logger.info("certificate reloaded", metadata: ["serial": "\(serial)"])
      } catch {
        failed = current
        logger.warning(
          "certificate reload failed; keeping the current one", metadata: ["error": "\(error)"])
      }
    }
  }

  /// How long calls in flight may take to finish after SIGTERM.
  private var drainTimeout: Duration { configuration.bootstrap.limits.drainTimeout }

  private enum RunState {
    case starting, serving, draining
  }

  private func reports(
    state: NIOLockedValueBox<RunState>, metrics: SidecarMetrics
  ) -> AdminServer.Reports {
    let tls = self.tls
    let configuration = self.configuration
    let configVersion = self.configVersion
    return AdminServer.Reports(
      notReady: {
        switch state.withLockedValue({ $0 }) {
        case .starting: return "starting"
        case .draining: return "draining"
        case .serving:
          let certificate = tls.certificateStatus
          if certificate.secondsLeft <= 0 {
            return "certificate expired at \(certificate.notAfter)"
          }
          return nil
        }
      },
      metrics: {
        let certificate = tls.certificateStatus
        return metrics.render(
          extra: """
            # HELP trellis_certificate_expiry_timestamp_seconds When this sidecar's certificate expires.
            # TYPE trellis_certificate_expiry_timestamp_seconds gauge
            trellis_certificate_expiry_timestamp_seconds \(certificate.notAfterEpoch)
            # HELP trellis_config_version The version of the mesh config in force (0: the bootstrap's own).
            # TYPE trellis_config_version gauge
            trellis_config_version \(configVersion.withLockedValue { $0 })

            """) + configuration.extraMetrics()
      },
      certificates: { tls.certificateStatus.json },
      endpoints: { [routing] in EndpointState.json(routing.endpointReports()) },
      traces: traceIntake(configuration.appSpans))
  }

  private func traceIntake(
    _ take: (@Sendable ([UInt8]) throws -> Bool)?
  ) -> (
    @Sendable (ByteBuffer) -> AdminServer.TraceIntake
  )? {
    guard let take else { return nil }
    return { body in
      do {
        return try take(Array(buffer: body)) ? .accepted : .full
      } catch {
        return .invalid("not an OTLP ExportTraceServiceRequest: \(error)")
      }
    }
  }

  private static func hostPort(_ address: SocketAddress?) -> String {
    guard let address, let ip = address.ipAddress, let port = address.port else { return "?" }
    return ip.contains(":") ? "[\(ip)]:\(port)" : "\(ip):\(port)"
  }

  // MARK: Outbound: the app's calls, routed by :authority to peer sidecars.

  private func bindOutbound(pools: PoolSet, metrics: SidecarMetrics) async throws -> any Channel {
    let routing = self.routing
    return try await listen("outbound", on: configuration.bootstrap.outbound) { channel in
      let pool = pools.pool(for: channel.eventLoop)
      return channel.eventLoop.makeCompletedFuture {
        try Self.serveCalls(on: channel, loop: pool.loop, direction: "outbound", service: nil) {
          request in
          Self.routeOutbound(request, table: routing.outbound, pool: pool, metrics: metrics)
        }
      }
    }
  }

  /// Both directions refuse a `:path` that is not exactly `/package.Service/Method`.
  static func checkPath(_ path: String) -> CallRoute? {
    guard isGRPCPath(path) else {
      return .reject(.unimplemented, "malformed :path; expected /package.Service/Method")
    }
    return nil
  }

  // MARK: Inbound: verified peers' calls, to the local app.

  private func bindInbound(pools: PoolSet, metrics: SidecarMetrics) async throws -> any Channel {
    let app = Endpoint(
      host: configuration.bootstrap.app.host, port: configuration.bootstrap.app.port)
    let routing = self.routing
    let service = configuration.bootstrap.service
    let handshakeTimeout = TimeAmount(configuration.bootstrap.limits.handshakeTimeout)
    let trustDomain = configuration.mesh.trustDomain
    let tls = self.tls
    return try await listen("inbound", on: configuration.bootstrap.inbound) { channel in
      let pool = pools.pool(for: channel.eventLoop)
      let peer = PeerIdentity()
      return channel.eventLoop.makeCompletedFuture {
        try channel.pipeline.syncOperations.addHandler(
          tls.serverHandler(
            identified: { identity in peer.set(identity.description) },
            rejected: { reason in metrics.recordTLSFailure(reason: reason) }))
        try channel.pipeline.syncOperations.addHandler(
          HandshakeGuard(
            metrics: metrics, peer: peer, trustDomain: trustDomain, timeout: handshakeTimeout))
        try Self.serveCalls(on: channel, loop: pool.loop, direction: "inbound", service: service) {
          request in
          Self.routeInbound(
            request, caller: peer.value, service: service, policy: routing.policy, app: app,
            pool: pool)
        }
      }
    }
  }

  static func routeInbound(
    _ request: HTTP2Request, caller: String, service: String, policy: Authorization,
    app: Endpoint, pool: PoolSet.Pools
  ) -> CallRoute {
    let path = request.path
    if let rejection = checkPath(path) { return rejection }
    guard policy.allows(caller: caller, path: path) else {
      return .reject(.permissionDenied, "\(caller) is not allowed to call \(path) on \(service)")
    }
    // Connection-specific headers never get this far: the request was refused as malformed.
    return .forward(app, pool.app, peer: caller) { headers in
      // Only the sidecar may say who called: a client's copy is dropped.
      if request.carriesPeerIdentity { headers.remove(name: "x-trellis-peer-identity") }
      headers.add(name: "x-trellis-peer-identity", value: caller)
      // `:authority` is optional in HTTP/2, and some servers refuse a request without it: the
      // app is named by the service it serves.
      if request.authority == nil {
        headers = withAuthority(headers, service)
      }
    }
  }

  /// `headers` with `:authority` among the pseudo-headers, which come first.
  static func withAuthority(_ headers: HPACKHeaders, _ authority: String) -> HPACKHeaders {
    var result = HPACKHeaders()
    var added = false
    for header in headers {
      if !added, !header.name.hasPrefix(":") {
        result.add(name: ":authority", value: authority)
        added = true
      }
      result.add(name: header.name, value: header.value, indexing: header.indexable)
    }
    if !added { result.add(name: ":authority", value: authority) }
    return result
  }

  /// Makes an accepted connection an HTTP/2 server whose calls are forwarded where `route`
  /// says.
  private static func serveCalls(
    on channel: any Channel, loop: LoopState, direction: String, service: String?,
    route: @escaping (HTTP2Request) -> CallRoute
  ) throws {
    let pipeline = channel.pipeline.syncOperations
    try pipeline.addHandler(
      ForwardingConnection(
        role: .downstream(direction: direction, service: service, route: route), loop: loop))
  }

  /// A listening socket whose accepted connections are set up by `initializer`; small calls
  /// go out at once (no Nagle delay).
  private func listen(
    _ listener: String, on address: Address,
    initializer: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>
  ) async throws -> any Channel {
    try await ListenError.naming(listener, address) {
      try await ServerBootstrap(group: group)
        .serverChannelOption(ChannelOptions.backlog, value: 256)
        .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
        .childChannelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
        // A caller that does not read stops being written to after 32 KiB wait in the
        // channel (besides its socket's buffer), not NIO's default 64 KiB.
        .childChannelOption(
          ChannelOptions.writeBufferWaterMark, value: .init(low: 16 << 10, high: 32 << 10)
        )
        .childChannelInitializer(initializer)
        .bind(host: address.host, port: address.port)
        .get()
    }
  }
}

/// A listener that could not be opened, in words an operator can act on:
/// `cannot listen on 127.0.0.1:15101 (inbound): address already in use`.
public struct ListenError: Error, CustomStringConvertible {
  public let listener: String
  public let address: String
  public let reason: String

  public var description: String { "cannot listen on \(address) (\(listener)): \(reason)" }

  static func naming<Result>(
    _ listener: String, _ address: Address, _ bind: () async throws -> Result
  ) async throws -> Result {
    do {
      return try await bind()
    } catch let error as IOError {
      throw ListenError(
        listener: listener, address: "\(address)",
        reason: String(cString: strerror(error.errnoCode)).lowercased())
    } catch {
      throw ListenError(listener: listener, address: "\(address)", reason: "\(error)")
    }
  }
}

/// Whether `path` is exactly `/package.Service/Method`: one leading slash, one separator, and
/// only the characters protobuf names use — so no spelling of a path can slip past a rule.
func isGRPCPath(_ path: String) -> Bool {
  let bytes = Array(path.utf8)
  guard bytes.count > 3, bytes[0] == UInt8(ascii: "/") else { return false }
  var slashes = 0
  var previous: UInt8 = UInt8(ascii: "/")
  for byte in bytes.dropFirst() {
    switch byte {
    case UInt8(ascii: "/"):
      slashes += 1
      if previous == UInt8(ascii: "/") || previous == UInt8(ascii: ".") { return false }
    case UInt8(ascii: "."):
      if previous == UInt8(ascii: "/") || previous == UInt8(ascii: ".") { return false }
    case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
      UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "_"):
      break
    default:
      return false
    }
    previous = byte
  }
  return slashes == 1 && previous != UInt8(ascii: "/") && previous != UInt8(ascii: ".")
}

/// The verified identity of an inbound connection's peer, set during the handshake (before any
/// stream) and read by its streams.
final class PeerIdentity: @unchecked Sendable {
  private var identity = ""
  private let lock = NIOLock()
  func set(_ value: String) { lock.withLock { identity = value } }
  var value: String { lock.withLock { identity } }
  var isSet: Bool { !value.isEmpty }
}

/// Per event loop: its shared state and two upstream pools, to mesh peers (mTLS) and to the
/// local app (h2c).
final class PoolSet: Sendable {
  private let pools: [ObjectIdentifier: Pools]

  final class Pools: @unchecked Sendable {
    let loop: LoopState
    let mesh: UpstreamPool
    let app: UpstreamPool
    init(loop: LoopState, tls: ProxyTLS) {
      self.loop = loop
      self.mesh = UpstreamPool(loop: loop, tls: tls)
      self.app = UpstreamPool(loop: loop, tls: nil)
    }
  }

  init(
    group: MultiThreadedEventLoopGroup, tls: ProxyTLS, metrics: SidecarMetrics,
    idleTimeout: TimeAmount, handshakeTimeout: TimeAmount, maxConcurrentStreams: Int,
    tracing: CallTracing, telemetry: LiveTelemetry?
  ) {
    var pools: [ObjectIdentifier: Pools] = [:]
    for eventLoop in group.makeIterator() {
      pools[ObjectIdentifier(eventLoop)] = Pools(
        loop: LoopState(
          eventLoop: eventLoop, metrics: metrics, idleTimeout: idleTimeout,
          handshakeTimeout: handshakeTimeout, maxConcurrentStreams: maxConcurrentStreams,
          tracing: tracing, telemetry: telemetry),
        tls: tls)
    }
    self.pools = pools
  }

  /// Drains every loop's accepted connections: true once all have closed, false if `timeout`
  /// passes first (the event loop group's shutdown then closes what is left).
  func drain(within timeout: TimeAmount) -> EventLoopFuture<Bool> {
    let futures = pools.values.map { pools in
      pools.loop.eventLoop.flatSubmit { pools.loop.drain() }
    }
    let loop = futures[0].eventLoop
    let outcome = loop.makePromise(of: Bool.self)
    // Whichever comes first settles it.
    let settled = NIOLockedValueBox(false)
    @Sendable func settle(_ drained: Bool) {
      if settled.withLockedValue({ was in
        defer { was = true }; return !was
      }) {
        outcome.succeed(drained)
      }
    }
    let timer = loop.scheduleTask(in: timeout) { settle(false) }
    EventLoopFuture.andAllComplete(futures, on: loop).whenComplete { _ in
      timer.cancel()
      settle(true)
    }
    return outcome.futureResult
  }

  func pool(for loop: any EventLoop) -> Pools {
    pools[ObjectIdentifier(loop)]!
  }
}

/// A value that becomes known once, for tasks that wait for it.
public final class Eventually<Value: Sendable>: Sendable {
  private struct State {
    var value: Value?
    var waiters: [UUID: CheckedContinuation<Value?, Never>] = [:]
  }

  private let state = NIOLockedValueBox(State())

  public init() {}

  func set(_ value: Value) {
    let waiters = state.withLockedValue { state in
      state.value = value
      defer { state.waiters = [:] }
      return Array(state.waiters.values)
    }
    for waiter in waiters { waiter.resume(returning: value) }
  }

  /// The value, once set; nil if the task is cancelled first.
  public func value() async -> Value? {
    let id = UUID()
    return await withTaskCancellationHandler {
      await withCheckedContinuation { continuation in
        let now = state.withLockedValue { state -> Value?? in
          if let value = state.value { return .some(value) }
          if Task.isCancelled { return .some(nil) }
          state.waiters[id] = continuation
          return .none
        }
        if let now { continuation.resume(returning: now) }
      }
    } onCancel: {
      let waiter = state.withLockedValue { $0.waiters.removeValue(forKey: id) }
      waiter?.resume(returning: nil)
    }
  }
}
