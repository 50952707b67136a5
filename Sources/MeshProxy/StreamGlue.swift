import NIOCore
import NIOHPACK
import NIOHTTP2

/// Joins two HTTP/2 streams — one from the caller, one to the callee — frame for frame.
///
/// One instance sits in each stream channel; the pair forwards HEADERS, DATA (the same
/// buffers, no copy) and trailers as they arrive, and a reset on either side resets the other.
/// Backpressure is SwiftNIO's glue pattern: a side reads only while its partner is writable, so
/// a slow reader stops the writer through HTTP/2 flow control and memory stays bounded. Both
/// streams live on one event loop (the pools are per loop), so forwarding never hops threads.
final class StreamGlue: ChannelDuplexHandler, RemovableChannelHandler {
  typealias InboundIn = HTTP2Frame.FramePayload
  typealias OutboundIn = HTTP2Frame.FramePayload
  typealias OutboundOut = HTTP2Frame.FramePayload

  /// Rewrites the request or response headers that cross this glue, if needed.
  typealias HeaderRewrite = (inout HPACKHeaders) -> Void

  private var partner: StreamGlue?
  private var context: ChannelHandlerContext?
  private var pendingRead = false
  private let rewriteFirstHeaders: HeaderRewrite?
  private var sawHeaders = false
  /// This stream's peer has ended its side (END_STREAM read).
  private var readEnd = false
  /// This stream's side has been ended towards its peer (END_STREAM written).
  private var wroteEnd = false

  private init(rewriteFirstHeaders: HeaderRewrite?) {
    self.rewriteFirstHeaders = rewriteFirstHeaders
  }

  /// Two joined halves; `rewrite` applies to the first HEADERS each side receives.
  static func pair(
    rewriteRequest: HeaderRewrite? = nil, rewriteResponse: HeaderRewrite? = nil
  ) -> (downstream: StreamGlue, upstream: StreamGlue) {
    let downstream = StreamGlue(rewriteFirstHeaders: rewriteRequest)
    let upstream = StreamGlue(rewriteFirstHeaders: rewriteResponse)
    downstream.partner = upstream
    upstream.partner = downstream
    return (downstream, upstream)
  }

  func handlerAdded(context: ChannelHandlerContext) {
    self.context = context
  }

  func handlerRemoved(context: ChannelHandlerContext) {
    self.context = nil
    self.partner = nil
  }

  // MARK: Inbound: what this stream's peer sent, to be written to the partner.

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    var frame = unwrapInboundIn(data)
    if frame.endsStream { readEnd = true }
    switch frame {
    case .headers(var headers) where !sawHeaders:
      sawHeaders = true
      if let rewriteFirstHeaders {
        rewriteFirstHeaders(&headers.headers)
        frame = .headers(headers)
      }
    case .rstStream(let code):
      partner?.partnerReset(code)
      return
    default:
      break
    }
    partner?.partnerWrite(frame)
  }

  func channelReadComplete(context: ChannelHandlerContext) {
    partner?.partnerFlush()
  }

  func channelInactive(context: ChannelHandlerContext) {
    // A stream that ended both ways leaves its partner to finish on its own; one that was cut
    // short (reset, connection lost) resets the partner (CANCEL), so the peer stops too.
    partner?.partnerClosed(cleanly: readEnd && wroteEnd)
    partner = nil
    context.fireChannelInactive()
  }

  func channelWritabilityChanged(context: ChannelHandlerContext) {
    if context.channel.isWritable { partner?.partnerBecameWritable() }
    context.fireChannelWritabilityChanged()
  }

  func errorCaught(context: ChannelHandlerContext, error: any Error) {
    // Stream errors are reported here and the stream channel closes itself when they are
    // fatal (channelInactive then resets the partner). Some are not: a WINDOW_UPDATE that
    // races the peer's END_STREAM is refused by the state machine yet harms nothing, so
    // closing on every error would cut healthy calls.
  }

  // MARK: Outbound: read only while the partner can take more.

  func read(context: ChannelHandlerContext) {
    if partner?.isWritable ?? true {
      context.read()
    } else {
      pendingRead = true
    }
  }

  // MARK: Calls from the partner.

  private var isWritable: Bool { context?.channel.isWritable ?? false }

  private func partnerWrite(_ frame: HTTP2Frame.FramePayload) {
    if frame.endsStream { wroteEnd = true }
    context?.write(wrapOutboundOut(frame), promise: nil)
  }

  private func partnerFlush() {
    context?.flush()
  }

  private func partnerBecameWritable() {
    if pendingRead, let context {
      pendingRead = false
      context.read()
    }
  }

  private func partnerReset(_ code: HTTP2ErrorCode) {
    guard let context else { return }
    context.writeAndFlush(wrapOutboundOut(.rstStream(code)), promise: nil)
  }

  private func partnerClosed(cleanly: Bool) {
    partner = nil
    guard let context else { return }
    context.flush()
    // Closing an open stream channel sends RST_STREAM(CANCEL).
    if !cleanly { context.close(promise: nil) }
  }
}

extension HTTP2Frame.FramePayload {
  /// Whether the frame carries END_STREAM.
  var endsStream: Bool {
    switch self {
    case .headers(let headers): return headers.endStream
    case .data(let data): return data.endStream
    default: return false
    }
  }
}
