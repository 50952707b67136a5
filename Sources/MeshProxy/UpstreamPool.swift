import NIOCore
import NIOHTTP2
import NIOPosix
import NIOSSL

/// HTTP/2 connections from one event loop to upstream endpoints: opened on first use, shared
/// by every stream to that endpoint (multiplexed), reopened after they close.
///
/// Confined to its event loop — the loop of the downstream connections that use it — so a
/// forwarded stream and its upstream stream share a thread.
final class UpstreamPool {
  let eventLoop: any EventLoop
  private let tls: ProxyTLS?
  private let connectTimeout: TimeAmount
  private var connections: [Endpoint: Connection] = [:]

  private enum Connection {
    case connecting(EventLoopFuture<Established>)
    case ready(Established)
  }

  /// An open HTTP/2 connection and the multiplexer that opens streams on it.
  struct Established {
    let multiplexer: NIOHTTP2Handler.StreamMultiplexer
    let channel: any Channel
  }

  /// `tls` nil means h2c (the hop to the local app).
  init(eventLoop: any EventLoop, tls: ProxyTLS?, connectTimeout: TimeAmount = .seconds(1)) {
    self.eventLoop = eventLoop
    self.tls = tls
    self.connectTimeout = connectTimeout
  }

  /// A new stream to `endpoint`, set up by `initializer` before any frame flows.
  func openStream(
    to endpoint: Endpoint, initializer: @escaping NIOChannelInitializer
  ) -> EventLoopFuture<any Channel> {
    eventLoop.preconditionInEventLoop()
    return connection(to: endpoint).flatMap { connection in
      connection.multiplexer.createStreamChannel(initializer)
    }
  }

  private func connection(to endpoint: Endpoint) -> EventLoopFuture<Established> {
    switch connections[endpoint] {
    case .ready(let connection) where connection.channel.isActive:
      return eventLoop.makeSucceededFuture(connection)
    case .connecting(let future):
      return future
    default:
      let future = connect(endpoint)
      connections[endpoint] = .connecting(future)
      future.whenComplete { [weak self] result in
        guard let self else { return }
        switch result {
        case .success(let connection):
          self.connections[endpoint] = .ready(connection)
          connection.channel.closeFuture.whenComplete { _ in
            if case .ready(let current)? = self.connections[endpoint],
              current.channel === connection.channel
            {
              self.connections[endpoint] = nil
            }
          }
        case .failure:
          self.connections[endpoint] = nil
        }
      }
      return future
    }
  }

  private func connect(_ endpoint: Endpoint) -> EventLoopFuture<Established> {
    let tls = self.tls
    let box = MultiplexerBox()
    return ClientBootstrap(group: eventLoop)
      .connectTimeout(connectTimeout)
      .channelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
      .channelInitializer { channel in
        channel.eventLoop.makeCompletedFuture {
          if let tls {
            try channel.pipeline.syncOperations.addHandler(
              try tls.clientHandler(expecting: endpoint.expectedIdentity))
          }
          box.multiplexer = try channel.pipeline.syncOperations.configureHTTP2Pipeline(
            mode: .client, connectionConfiguration: .meshDefaults,
            streamConfiguration: .meshDefaults
          ) { stream in
            // Peers do not open streams towards a client (no server push); refuse any.
            stream.close()
          }
        }
      }
      .connect(host: endpoint.host, port: endpoint.port)
      .flatMapThrowing { channel in
        guard let multiplexer = box.multiplexer else {
          throw ChannelError.inappropriateOperationForState
        }
        return Established(multiplexer: multiplexer, channel: channel)
      }
  }
}

/// Carries the multiplexer out of the channel initializer; used on one event loop only.
private final class MultiplexerBox: @unchecked Sendable {
  var multiplexer: NIOHTTP2Handler.StreamMultiplexer?
}
