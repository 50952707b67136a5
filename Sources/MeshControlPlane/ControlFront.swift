import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import MeshIdentity
import MeshProxy
import MeshTLS
import NIOCore
import NIOPosix
import Synchronization
import X509

#if canImport(Glibc)
  import Glibc
#endif

/// The control plane's mutual-TLS listener, in front of its gRPC server.
///
/// Every connection is TLS 1.3 on OpenSSL (`MeshTLS`), the client's chain checked as an SVID
/// of the mesh before a byte is read. Then the first request picks the stack:
///
/// - a config stream (`trellis.mesh.v1.Config/Subscribe`, what every sidecar holds open,
///   alone on its connection) is served by the HTTP/2 core of the sidecar
///   (`GRPCStreamServer`) and `NativeConfigStream`: no task, child channel or buffer of its
///   own while idle, where grpc-swift's stack kept about 200 KB per sidecar;
/// - anything else goes to the gRPC server (grpc-swift), which this front hands the
///   connection to (`HTTP2ServerTransport.Custom`), its caller known by `FrontPeers`.
///
/// The front sends the server's SETTINGS before the first request (gRPC clients wait for
/// them): the config stream's, which that stack then keeps; on a connection handed to gRPC,
/// whose own SETTINGS follow, the client's acknowledgement of the first is taken out.
struct ControlFront: HTTP2ServerTransport.ListenerFactory {
  static let streamsPerConnection = 16

  let eventLoopGroup: any EventLoopGroup
  let host: String
  let port: Int
  let trust: MeshTrust
  let calls: NativeCalls
  /// A connection silent this long is PINGed, and closed when silent `closeAfter` more.
  let pingAfter: TimeAmount
  let closeAfter: TimeAmount
  private let contexts = TLSContexts()
  private let address = BoundAddress()

  init(
    host: String, port: Int, trust: MeshTrust, calls: NativeCalls, pingAfter: TimeAmount,
    closeAfter: TimeAmount,
    eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
  ) {
    self.host = host
    self.port = port
    self.trust = trust
    self.calls = calls
    self.pingAfter = pingAfter
    self.closeAfter = closeAfter
    self.eventLoopGroup = eventLoopGroup
  }

  /// Why the front cannot run here (the system's OpenSSL 3 cannot be loaded), or nil.
  static func unavailable() -> TLSError? {
    do {
      try TLSServerContext.loadLibrary()
      return nil
    } catch {
      return error
    }
  }

  func makeListeningChannel(
    listenerConfigurator: HTTP2ServerTransport.ListenerConfigurator,
    connectionConfigurator: HTTP2ServerTransport.ConnectionConfigurator
  ) async throws -> NIOAsyncChannel<
    HTTP2ServerTransport.ConnectionConfigurator.ConnectionChannel, Never
  > {
    let outlet = ConnectionOutlet()
    let front = self
    // The first context is made now: what OpenSSL sets up once is the process's, not the
    // first connection's.
    _ = try contexts.current(trust.own)
    let server = try await ServerBootstrap(group: eventLoopGroup)
      .serverChannelOption(.backlog, value: 4096)
      .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
      .serverChannelInitializer { channel in listenerConfigurator.configure(channel: channel) }
      .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
      .childChannelInitializer { channel in
        channel.eventLoop.makeCompletedFuture {
          let tls = try front.contexts.current(front.trust.own)
          try channel.pipeline.syncOperations.addHandlers(
            TLSServerHandler(context: tls, check: front.trust.checkClient),
            FrontDispatcher(front: front, outlet: outlet, configurator: connectionConfigurator))
        }
      }
      .bind(host: host, port: port).get()
    address.set(server.localAddress)
    // gRPC takes its connections from a channel of their own: a pipe nothing is written to,
    // closed with the listener. (The listener's own pipeline carries the accepted sockets,
    // which its tail registers.)
    var pipe: [Int32] = [0, 0]
    guard Glibc.pipe(&pipe) == 0 else { throw IOError(errnoCode: errno, reason: "pipe") }
    let carrier = try await NIOPipeBootstrap(group: server.eventLoop)
      .takingOwnershipOfDescriptors(input: pipe[0], output: pipe[1]).get()
    server.closeFuture.whenComplete { _ in carrier.close(promise: nil) }
    return try await carrier.eventLoop.submit {
      try carrier.pipeline.syncOperations.addHandler(outlet)
      return try NIOAsyncChannel<
        HTTP2ServerTransport.ConnectionConfigurator.ConnectionChannel, Never
      >(wrappingChannelSynchronously: carrier)
    }.get()
  }

  /// The address the listener is bound to, once it is.
  var listeningAddress: NIOCore.SocketAddress? { address.get() }
}

private final class BoundAddress: Sendable {
  private let address = Mutex<NIOCore.SocketAddress?>(nil)
  func set(_ value: NIOCore.SocketAddress?) { address.withLock { $0 = value } }
  func get() -> NIOCore.SocketAddress? { address.withLock { $0 } }
}

/// The TLS context for the certificate in force, made again when it changes (a renewal or a
/// rotation); connections keep the one they began with.
private final class TLSContexts: Sendable {
  private let current = Mutex<(key: [String], context: TLSServerContext)?>(nil)

  func current(_ own: MeshTrust.OwnCertificate) throws -> TLSServerContext {
    let key = own.chainPEM + [own.keyPEM]
    if let made = current.withLock({ $0 }), made.key == key { return made.context }
    let context = try TLSServerContext(certificateChainPEM: own.chainPEM, privateKeyPEM: own.keyPEM)
    current.withLock { $0 = (key, context) }
    return context
  }
}

/// The callers of the connections handed to gRPC: each one's verified leaf, by the addresses
/// gRPC names the connection with (`ServerContext.localPeer` and `remotePeer`), so that the
/// services know who calls (`ControlContext.caller`).
final class FrontPeers: Sendable {
  static let shared = FrontPeers()
  private let peers = Mutex<[String: Certificate]>([:])

  func leaf(local: String, remote: String) -> Certificate? {
    peers.withLock { $0["\(local) \(remote)"] }
  }

  fileprivate func set(_ leaf: Certificate?, local: String, remote: String) {
    peers.withLock { $0["\(local) \(remote)"] = leaf }
  }

  /// An address as gRPC's transport writes it (`ipv4:HOST:PORT`, `ipv6:[HOST]:PORT`).
  fileprivate static func name(_ address: NIOCore.SocketAddress?) -> String {
    switch address {
    case .v4(let ipv4)?: "ipv4:\(ipv4.host):\(address!.port!)"
    case .v6(let ipv6)?: "ipv6:[\(ipv6.host)]:\(address!.port!)"
    case .unixDomainSocket?: "unix:\(address!.pathname ?? "")"
    case nil: "<unknown>"
    }
  }
}

/// Where the front hands gRPC its connections: the handler of the carrier channel before the
/// gRPC server's own reader of it.
private final class ConnectionOutlet: ChannelInboundHandler, @unchecked Sendable {
  typealias InboundIn = ByteBuffer
  typealias InboundOut = HTTP2ServerTransport.ConnectionConfigurator.ConnectionChannel
  /// Touched on the carrier's event loop only.
  private var context: ChannelHandlerContext?
  /// The carrier's event loop, read from the connections' loops.
  private let loop = Mutex<(any EventLoop)?>(nil)

  func handlerAdded(context: ChannelHandlerContext) {
    self.context = context
    loop.withLock { $0 = context.eventLoop }
  }
  func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

  /// Nothing is written to the carrier's pipe.
  func channelRead(context: ChannelHandlerContext, data: NIOAny) {}

  func deliver(_ connection: InboundOut, closing channel: any Channel) {
    guard let loop = loop.withLock({ $0 }) else {
      channel.close(promise: nil)
      return
    }
    loop.execute {
      guard let context = self.context else {
        channel.close(promise: nil)
        return
      }
      context.fireChannelRead(self.wrapInboundOut(connection))
      context.fireChannelReadComplete()
    }
  }
}

/// Reads a connection's first request after the handshake, and hands the connection to the
/// stack that serves it.
private final class FrontDispatcher: ChannelInboundHandler, RemovableChannelHandler {
  typealias InboundIn = ByteBuffer
  typealias InboundOut = ByteBuffer
  typealias OutboundOut = ByteBuffer

  private enum State {
    case handshaking
    case reading(HTTP2FirstRequest, ByteBuffer)
    case filtering(SettingsAckFilter)
    case handedOn
  }

  private let front: ControlFront
  private let outlet: ConnectionOutlet
  private let configurator: HTTP2ServerTransport.ConnectionConfigurator
  private var state = State.handshaking
  private var leaf: Certificate?
  private var timer: Scheduled<Void>?

  init(
    front: ControlFront, outlet: ConnectionOutlet,
    configurator: HTTP2ServerTransport.ConnectionConfigurator
  ) {
    self.front = front
    self.outlet = outlet
    self.configurator = configurator
  }

  func handlerRemoved(context: ChannelHandlerContext) {
    timer?.cancel()
  }

  func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
    guard let established = event as? TLSServerHandler.Established else {
      switch state {
      case .handshaking, .reading:
        // The server is going away before the connection was handed on: nothing to keep.
        if event is ChannelShouldQuiesceEvent {
          context.close(promise: nil)
          return
        }
      case .filtering, .handedOn:
        break
      }
      context.fireUserInboundEventTriggered(event)
      return
    }
    leaf = established.peerCertificates.first.flatMap { try? Certificate(derEncoded: $0) }
    state = .reading(HTTP2FirstRequest(), ByteBuffer())
    // The server's SETTINGS (gRPC clients wait for them before their first request): the
    // config stream's stack's own.
    let settings = GRPCStreamServer.settings(
      maxConcurrentStreams: ControlFront.streamsPerConnection)
    var frame = context.channel.allocator.buffer(capacity: 9 + settings.count * 6)
    frame.writeInteger(UInt32(settings.count * 6) << 8 | 0x4)  // length, type SETTINGS
    frame.writeInteger(UInt8(0))  // flags
    frame.writeInteger(UInt32(0))  // stream 0
    for (id, value) in settings {
      frame.writeInteger(id)
      frame.writeInteger(value)
    }
    context.writeAndFlush(wrapOutboundOut(frame), promise: nil)
    let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
    timer = context.eventLoop.scheduleTask(in: .seconds(10)) {
      // No request in time: nothing to keep the connection for.
      bound.value.close(promise: nil)
    }
  }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    switch state {
    case .handshaking, .handedOn:
      context.fireChannelRead(data)
    case .filtering(var filter):
      let bytes = filter.filter(unwrapInboundIn(data))
      state = .filtering(filter)
      context.fireChannelRead(wrapInboundOut(bytes))
      if filter.done { handOn(context) }
    case .reading(var reader, var received):
      var bytes = unwrapInboundIn(data)
      let path: String?
      do {
        path = try reader.read(bytes)
      } catch {
        context.close(promise: nil)
        return
      }
      received.writeBuffer(&bytes)
      guard let path else {
        state = .reading(reader, received)
        return
      }
      timer?.cancel()
      if NativeCalls.paths.contains(path) {
        serveNatively(context, received)
      } else {
        handToGRPC(context, received)
      }
    }
  }

  func channelReadComplete(context: ChannelHandlerContext) {
    if case .reading = state { return }
    context.fireChannelReadComplete()
  }

  private func serveNatively(_ context: ChannelHandlerContext, _ received: ByteBuffer) {
    let service = NativeConnection(calls: front.calls, leaf: leaf)
    let server = GRPCStreamServer(
      service: service, maxConcurrentStreams: ControlFront.streamsPerConnection,
      pingAfter: front.pingAfter, closeAfter: front.closeAfter, settingsSent: true)
    do {
      try context.pipeline.syncOperations.addHandler(server, position: .after(self))
    } catch {
      context.close(promise: nil)
      return
    }
    state = .handedOn
    context.fireChannelRead(wrapInboundOut(received))
    context.fireChannelReadComplete()
    handOn(context)
  }

  private func handToGRPC(_ context: ChannelHandlerContext, _ received: ByteBuffer) {
    let channel = context.channel
    let local = FrontPeers.name(channel.localAddress)
    let remote = FrontPeers.name(channel.remoteAddress)
    FrontPeers.shared.set(leaf, local: local, remote: remote)
    channel.closeFuture.whenComplete { _ in FrontPeers.shared.set(nil, local: local, remote: remote)
    }
    // gRPC's handlers go after this one (configuring is synchronous on the channel's loop).
    let configured = configurator.configure(channel: channel, tls: .configured(requireALPN: false))
    var filter = SettingsAckFilter()
    let bytes = filter.filter(received)
    state = .filtering(filter)
    context.fireChannelRead(wrapInboundOut(bytes))
    context.fireChannelReadComplete()
    if filter.done { handOn(context) }
    let outlet = self.outlet
    configured.whenComplete { result in
      switch result {
      case .success(let connection): outlet.deliver(connection, closing: channel)
      case .failure: channel.close(promise: nil)
      }
    }
  }

  /// Leaves the pipeline: every byte after goes straight to the stack chosen.
  private func handOn(_ context: ChannelHandlerContext) {
    state = .handedOn
    context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
  }
}
