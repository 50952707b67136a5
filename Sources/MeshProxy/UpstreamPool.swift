import NIOCore
import NIOPosix
import NIOSSL

/// HTTP/2 connections from one event loop to upstream endpoints: opened on first use, shared
/// by every call to that endpoint (multiplexed), with another opened when the peer's stream
/// limit is reached, and replaced after they close.
///
/// Confined to its event loop — the loop of the downstream connections that use it — so a call
/// and its upstream stream share a thread.
final class UpstreamPool {
  private let loop: LoopState
  private let tls: ProxyTLS?
  private let connectTimeout: TimeAmount
  private var connections: [Endpoint: [ForwardingConnection]] = [:]

  /// `tls` nil means h2c (the hop to the local app).
  init(loop: LoopState, tls: ProxyTLS?, connectTimeout: TimeAmount = .seconds(1)) {
    self.loop = loop
    self.tls = tls
    self.connectTimeout = connectTimeout
  }

  /// A connection to `endpoint` with room for another call, established or on its way.
  func connection(to endpoint: Endpoint) -> ForwardingConnection {
    loop.eventLoop.preconditionInEventLoop()
    // Most calls go where the previous one went: no hashing then.
    if let last, last.acceptsCalls, last.load < last.peerStreamLimit, lastEndpoint == endpoint {
      return last
    }
    let chosen = choose(endpoint)
    last = chosen
    lastEndpoint = endpoint
    return chosen
  }

  private var last: ForwardingConnection?
  private var lastEndpoint: Endpoint?

  private func choose(_ endpoint: Endpoint) -> ForwardingConnection {
    if let existing = connections[endpoint]?.first(where: {
      $0.acceptsCalls && $0.load < $0.peerStreamLimit
    }) {
      return existing
    }
    // Until its SETTINGS arrive, a new connection assumes the stream limit its peer gave the
    // others, or 100 (the least RFC 9113 recommends a server allow): starting more streams
    // than a peer allows costs the connection.
    let known = connections[endpoint]?.last?.peerStreamLimit
    let connection = ForwardingConnection(
      role: .upstream(endpoint), loop: loop, peerStreamLimit: known ?? 100)
    connections[endpoint, default: []].append(connection)
    connect(connection, to: endpoint)
    return connection
  }

  private func connect(_ connection: ForwardingConnection, to endpoint: Endpoint) {
    let tls = self.tls
    let handler = NIOLoopBound(connection, eventLoop: loop.eventLoop)
    ClientBootstrap(group: loop.eventLoop)
      .connectTimeout(connectTimeout)
      .channelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
      .channelInitializer { channel in
        channel.eventLoop.makeCompletedFuture {
          let pipeline = channel.pipeline.syncOperations
          if let tls {
            try pipeline.addHandler(try tls.clientHandler(expecting: endpoint.expectedIdentity))
          }
          try pipeline.addHandler(handler.value)
        }
      }
      .connect(host: endpoint.host, port: endpoint.port)
      .assumeIsolated()
      .whenComplete { [self] result in
        switch result {
        case .success(let channel):
          channel.closeFuture.assumeIsolated().whenComplete { _ in
            self.remove(connection, endpoint)
          }
        case .failure(let error):
          connection.connectFailed(error)
          remove(connection, endpoint)
        }
      }
  }

  private func remove(_ connection: ForwardingConnection, _ endpoint: Endpoint) {
    connections[endpoint]?.removeAll { $0 === connection }
    if connections[endpoint]?.isEmpty == true { connections[endpoint] = nil }
  }
}
