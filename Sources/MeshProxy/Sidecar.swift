import Logging
import MeshIdentity
import NIOConcurrencyHelpers
import NIOCore
import NIOHPACK
import NIOHTTP2
import NIOPosix
import ServiceLifecycle

/// The sidecar: an outbound listener for the local app (h2c) that routes each call by
/// `:authority` to a peer sidecar over mutual TLS, and an inbound listener (mutual TLS) that
/// forwards verified calls to the local app (h2c).
public struct Sidecar: Service {
  public struct Configuration: Sendable {
    /// This workload's service name.
    public var service: String
    public var inboundListen: (host: String, port: Int)
    public var outboundListen: (host: String, port: Int)
    /// The local app's h2c address.
    public var app: Endpoint
    /// The endpoints (peer sidecars' inbound addresses) of each service this app may call.
    public var routes: [String: [Endpoint]]
    public var trustDomain = SPIFFEID.defaultTrustDomain

    public init(
      service: String, inboundListen: (host: String, port: Int),
      outboundListen: (host: String, port: Int), app: Endpoint, routes: [String: [Endpoint]]
    ) {
      self.service = service
      self.inboundListen = inboundListen
      self.outboundListen = outboundListen
      self.app = app
      self.routes = routes
    }
  }

  private let configuration: Configuration
  private let tls: ProxyTLS
  private let group: MultiThreadedEventLoopGroup
  private let logger: Logger

  public init(
    configuration: Configuration, tls: ProxyTLS, threads: Int = 1, logger: Logger
  ) {
    self.configuration = configuration
    self.tls = tls
    self.group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
    self.logger = logger
  }

  public func run() async throws {
    let pools = PoolSet(group: group, tls: tls)
    let outbound = try await bindOutbound(pools: pools)
    let inbound = try await bindInbound(pools: pools)
    logger.info(
      "listening",
      metadata: [
        "outbound": "\(outbound.localAddress.map(\.description) ?? "?")",
        "inbound": "\(inbound.localAddress.map(\.description) ?? "?")",
        "address": "\(Self.hostPort(outbound.localAddress))",
        "inbound_address": "\(Self.hostPort(inbound.localAddress))",
      ])
    try await withGracefulShutdownHandler {
      try await outbound.closeFuture.get()
      try await inbound.closeFuture.get()
    } onGracefulShutdown: {
      outbound.close(promise: nil)
      inbound.close(promise: nil)
    }
    try await group.shutdownGracefully()
  }

  private static func hostPort(_ address: SocketAddress?) -> String {
    guard let address, let ip = address.ipAddress, let port = address.port else { return "?" }
    return ip.contains(":") ? "[\(ip)]:\(port)" : "\(ip):\(port)"
  }

  // MARK: Outbound: the app's calls, routed by :authority to peer sidecars.

  private func bindOutbound(pools: PoolSet) async throws -> any Channel {
    let routes = configuration.routes
    let counter = RoundRobin()
    return try await listen(on: configuration.outboundListen) { channel in
      let pool = pools.pool(for: channel.eventLoop)
      return channel.eventLoop.makeCompletedFuture {
        try Self.serveCalls(on: channel, loop: pool.loop) { headers in
          Self.routeOutbound(headers, routes: routes, pool: pool, counter: counter)
        }
      }
    }
  }

  static func routeOutbound(
    _ headers: HPACKHeaders, routes: [String: [Endpoint]], pool: PoolSet.Pools,
    counter: RoundRobin
  ) -> Route {
    if let rejection = checkPath(headers) { return rejection }
    let authority = headers.first(name: ":authority") ?? ""
    let service = authority.split(separator: ":").first.map(String.init) ?? ""
    guard let endpoints = routes[service], !endpoints.isEmpty else {
      return .reject(.unavailable, "no route to '\(service)'")
    }
    let endpoint = endpoints[counter.next(endpoints.count)]
    return .forward(endpoint, pool.mesh, rewrite: stripHopByHop)
  }

  /// Both directions refuse a `:path` that is not exactly `/package.Service/Method`.
  static func checkPath(_ headers: HPACKHeaders) -> Route? {
    guard let path = headers.first(name: ":path"), isGRPCPath(path) else {
      return .reject(.unimplemented, "malformed :path; expected /package.Service/Method")
    }
    return nil
  }

  // MARK: Inbound: verified peers' calls, to the local app.

  private func bindInbound(pools: PoolSet) async throws -> any Channel {
    let app = configuration.app
    let tls = self.tls
    return try await listen(on: configuration.inboundListen) { channel in
      let pool = pools.pool(for: channel.eventLoop)
      let peer = PeerIdentity()
      return channel.eventLoop.makeCompletedFuture {
        try channel.pipeline.syncOperations.addHandler(
          tls.serverHandler { identity in peer.set(identity.description) })
        try Self.serveCalls(on: channel, loop: pool.loop) { headers in
          if let rejection = Self.checkPath(headers) { return rejection }
          let identity = peer.value
          return .forward(app, pool.app) { headers in
            stripHopByHop(&headers)
            // Only the sidecar may say who called: a client's copy is dropped.
            headers.remove(name: "x-trellis-peer-identity")
            headers.add(name: "x-trellis-peer-identity", value: identity)
          }
        }
      }
    }
  }

  /// Makes an accepted connection an HTTP/2 server whose calls are forwarded where `route`
  /// says.
  private static func serveCalls(
    on channel: any Channel, loop: LoopState, route: @escaping (HPACKHeaders) -> Route
  ) throws {
    let pipeline = channel.pipeline.syncOperations
    try pipeline.addHandler(NIOHTTP2Handler(mode: .server, connectionConfiguration: .meshDefaults))
    try pipeline.addHandler(ForwardingConnection(role: .downstream(route: route), loop: loop))
  }

  /// A listening socket whose accepted connections are set up by `initializer`; small calls
  /// go out at once (no Nagle delay).
  private func listen(
    on address: (host: String, port: Int),
    initializer: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>
  ) async throws -> any Channel {
    try await ServerBootstrap(group: group)
      .serverChannelOption(ChannelOptions.backlog, value: 256)
      .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
      .childChannelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
      .childChannelInitializer(initializer)
      .bind(host: address.host, port: address.port)
      .get()
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

/// Drops the connection-specific headers HTTP/2 forbids forwarding (RFC 9113 §8.2.2).
func stripHopByHop(_ headers: inout HPACKHeaders) {
  for name in ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"] {
    headers.remove(name: name)
  }
}

/// The verified identity of an inbound connection's peer, set during the handshake (before any
/// stream) and read by its streams.
final class PeerIdentity: @unchecked Sendable {
  private var identity = ""
  private let lock = NIOLock()
  func set(_ value: String) { lock.withLock { identity = value } }
  var value: String { lock.withLock { identity } }
}

/// Spreads calls over endpoints in turn.
final class RoundRobin: @unchecked Sendable {
  private var counter = 0
  private let lock = NIOLock()
  func next(_ count: Int) -> Int {
    lock.withLock {
      counter &+= 1
      return counter % count
    }
  }
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

  init(group: MultiThreadedEventLoopGroup, tls: ProxyTLS) {
    var pools: [ObjectIdentifier: Pools] = [:]
    for eventLoop in group.makeIterator() {
      pools[ObjectIdentifier(eventLoop)] = Pools(loop: LoopState(eventLoop: eventLoop), tls: tls)
    }
    self.pools = pools
  }

  func pool(for loop: any EventLoop) -> Pools {
    pools[ObjectIdentifier(loop)]!
  }
}
