import NIOCore

/// Closes a connection from which nothing has been read for `limit`.
///
/// The control plane pings a connection that has been silent for its keepalive time, and a
/// live peer answers within the keepalive timeout; sidecars ping on their own every 10 s as
/// well. So a connection that stays silent past both is dead: its peer's host vanished (no FIN,
/// no RST ever comes) or its process hangs. gRPC's server answers a missed keepalive ping with
/// a graceful close, which waits for an acknowledgement such a peer never sends; this handler,
/// first in the pipeline (raw bytes, before TLS), ends the connection instead, and with it the
/// config stream it held.
final class SilentPeerHandler: ChannelInboundHandler {
  typealias InboundIn = ByteBuffer

  private let limit: TimeAmount
  private var lastRead = NIODeadline.now()
  private var check: Scheduled<Void>?

  init(limit: TimeAmount) {
    self.limit = limit
  }

  func handlerAdded(context: ChannelHandlerContext) {
    if context.channel.isActive { schedule(context) }
  }

  func handlerRemoved(context: ChannelHandlerContext) {
    check?.cancel()
    check = nil
  }

  func channelActive(context: ChannelHandlerContext) {
    lastRead = .now()
    schedule(context)
    context.fireChannelActive()
  }

  func channelInactive(context: ChannelHandlerContext) {
    check?.cancel()
    check = nil
    context.fireChannelInactive()
  }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    // Only the time is kept: a timer is moved when it fires, never on each read.
    lastRead = .now()
    context.fireChannelRead(data)
  }

  private func schedule(_ context: ChannelHandlerContext) {
    guard check == nil else { return }
    let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
    check = context.eventLoop.assumeIsolated().scheduleTask(deadline: lastRead + limit) {
      [self] in
      check = nil
      let context = loopBound.value
      guard context.channel.isActive else { return }
      if NIODeadline.now() >= lastRead + limit {
        context.close(promise: nil)
      } else {
        schedule(context)
      }
    }
  }
}

extension SilentPeerHandler {
  /// The callback that puts a handler first in every connection a gRPC server accepts.
  static func installer(
    limit: Duration
  ) -> @Sendable (_ channel: any Channel) -> EventLoopFuture<Void> {
    let limit = TimeAmount(limit)
    return { channel in
      channel.eventLoop.submit {
        try channel.pipeline.syncOperations.addHandler(
          SilentPeerHandler(limit: limit), position: .first)
      }
    }
  }
}
