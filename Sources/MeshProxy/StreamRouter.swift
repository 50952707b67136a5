import NIOCore
import NIOHPACK
import NIOHTTP2
import NIOPosix

/// The first handler of every accepted stream: reads the request HEADERS, asks `route` where
/// the stream goes, opens the upstream stream, then hands over to a `StreamGlue` pair and
/// leaves the pipeline. Frames that arrive meanwhile are held and replayed in order; no more
/// are read until the upstream stream exists.
final class StreamRouter: ChannelDuplexHandler, RemovableChannelHandler {
  typealias InboundIn = HTTP2Frame.FramePayload
  typealias OutboundIn = HTTP2Frame.FramePayload
  typealias OutboundOut = HTTP2Frame.FramePayload

  /// A routing decision for a request.
  enum Decision {
    /// Forward to `endpoint` through `pool`, rewriting the request headers on the way.
    case forward(Endpoint, UpstreamPool, StreamGlue.HeaderRewrite?)
    /// Answer at once with a gRPC status.
    case reject(ProxyStatus, String)
  }

  private let route: (HPACKHeaders) -> Decision
  private var buffered: [HTTP2Frame.FramePayload] = []
  private var state = State.awaitingHeaders

  private enum State {
    case awaitingHeaders
    case connecting
    case rejected
  }

  init(route: @escaping (HPACKHeaders) -> Decision) {
    self.route = route
  }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    let frame = unwrapInboundIn(data)
    switch state {
    case .awaitingHeaders:
      guard case .headers(let headers) = frame else {
        // A stream must start with HEADERS (RFC 9113 §8.1).
        context.close(promise: nil)
        return
      }
      buffered.append(frame)
      state = .connecting
      switch route(headers.headers) {
      case .reject(let status, let message):
        state = .rejected
        buffered = []
        context.writeAndFlush(wrapOutboundOut(trailersOnly(status, message)), promise: nil)
      case .forward(let endpoint, let pool, let rewrite):
        connect(context: context, endpoint: endpoint, pool: pool, rewrite: rewrite)
      }
    case .connecting:
      buffered.append(frame)
    case .rejected:
      break  // The answer is sent; the rest of the request is dropped.
    }
  }

  func read(context: ChannelHandlerContext) {
    // Nothing more is read until the stream is joined to its upstream.
    if case .awaitingHeaders = state { context.read() }
  }

  private func connect(
    context: ChannelHandlerContext, endpoint: Endpoint, pool: UpstreamPool,
    rewrite: StreamGlue.HeaderRewrite?
  ) {
    let glue = StreamGlue.pair(rewriteRequest: rewrite)
    let channel = context.channel
    // The upstream stream is on this stream's event loop (pools are per loop).
    let upstreamGlue = NIOLoopBound(glue.upstream, eventLoop: context.eventLoop)
    pool.openStream(to: endpoint) { upstream in
      upstream.eventLoop.makeCompletedFuture {
        try upstream.pipeline.syncOperations.addHandler(upstreamGlue.value)
      }
    }.whenComplete { [self] result in
      switch result {
      case .success:
        do {
          try channel.pipeline.syncOperations.addHandler(glue.downstream, position: .after(self))
        } catch {
          channel.close(promise: nil)
          return
        }
        let frames = buffered
        buffered = []
        for frame in frames { context.fireChannelRead(NIOAny(frame)) }
        context.fireChannelReadComplete()
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        // Resume reading through the glue, which reads while its partner is writable.
        channel.read()
      case .failure(let error):
        state = .rejected
        buffered = []
        context.writeAndFlush(
          wrapOutboundOut(
            trailersOnly(.unavailable, "cannot reach \(endpoint): \(describe(error))")),
          promise: nil)
      }
    }
  }
}

/// A connection or TLS failure in words an operator can act on.
func describe(_ error: any Error) -> String {
  switch error {
  case let error as ChannelError:
    if case .connectTimeout(let timeout) = error {
      return "no answer within \(timeout.nanoseconds / 1_000_000) ms"
    }
    return "\(error)"
  case let error as NIOConnectionError:
    return error.connectionErrors.first.map { "\($0.error)" } ?? "connection failed"
  default:
    let text = "\(error)"
    if text.contains("Connection refused") { return "connection refused" }
    return text
  }
}
