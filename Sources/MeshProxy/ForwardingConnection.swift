import NIOCore
import NIOHPACK
import NIOHTTP2
import NIOPosix

/// Where a new call goes, decided from its request headers.
enum Route {
  /// Forward to `endpoint` through `pool`, rewriting the request headers on the way.
  case forward(Endpoint, UpstreamPool, rewrite: ((inout HPACKHeaders) -> Void)?)
  /// Answer at once with a gRPC status; the call goes nowhere.
  case reject(ProxyStatus, String)
}

/// One HTTP/2 connection of the proxy, at the level of frames: every call is a stream on the
/// connection it came in on (downstream) joined to a stream on a pooled connection to where it
/// goes (upstream), and this handler moves frames between the two by stream ID.
///
/// There are no per-stream channels, futures or tasks: a request costs one `ForwardedCall` and
/// the frames themselves, forwarded with the buffers the parser produced. Both connections of a
/// call live on one event loop (pools are per loop), so forwarding is a method call.
///
/// Flow control is end to end. This handler owns the windows it advertises (the HTTP/2 handler
/// sends no WINDOW_UPDATE of its own in frame mode) and gives a DATA frame's bytes back to the
/// sender only once the frame has been written to the socket on the other side. A slow reader
/// therefore stops its writer through the windows, and the proxy holds at most one window of
/// data per stream and one connection window per connection.
final class ForwardingConnection: ChannelDuplexHandler {
  typealias InboundIn = HTTP2Frame
  typealias OutboundIn = HTTP2Frame
  typealias OutboundOut = HTTP2Frame

  enum Role {
    /// Accepted: calls start here, each asking `route` where it goes. `service` names the
    /// service for metrics (nil: the target named by `:authority`).
    case downstream(direction: String, service: String?, route: (HPACKHeaders) -> Route)
    /// Opened by a pool: calls are forwarded to it.
    case upstream(Endpoint)
  }

  let role: Role
  private let loop: LoopState
  private var context: ChannelHandlerContext?
  private var calls: [HTTP2StreamID: ForwardedCall] = [:]
  private(set) var needsFlush = false

  /// Bytes read but not yet returned to the peer with a connection-level WINDOW_UPDATE.
  private var connectionCredit = 0

  // Upstream connections only.
  private var nextStreamID = HTTP2StreamID(1)
  /// Calls waiting for the connection to be established.
  private var waiting: [(call: ForwardedCall, headers: HPACKHeaders, endStream: Bool)] = []
  /// The peer's SETTINGS_MAX_CONCURRENT_STREAMS (assumed to be the mesh's own until it says).
  private(set) var peerStreamLimit = Int(HTTP2Windows.maxConcurrentStreams)
  /// False once the connection is closing or has been told to go away.
  private(set) var acceptsCalls = true
  /// Why the connection failed, in words, once it has.
  private var failure: String?

  init(role: Role, loop: LoopState) {
    self.role = role
    self.loop = loop
  }

  /// Calls using or waiting for this connection.
  var load: Int { calls.count + waiting.count }

  // MARK: Channel events

  func handlerAdded(context: ChannelHandlerContext) {
    self.context = context
    if case .downstream = role { loop.register(self) }
    if context.channel.isActive { becameActive(context: context) }
  }

  func channelActive(context: ChannelHandlerContext) {
    becameActive(context: context)
    context.fireChannelActive()
  }

  // MARK: Idleness

  private var idleCheck: RepeatedTask?
  private var lastActive = NIODeadline.now()

  /// Checks now and then (a quarter of the timeout) whether the connection has carried no call
  /// for the idle timeout; such a connection is drained (accepted) or closed (pooled).
  private func startIdleCheck(context: ChannelHandlerContext) {
    let timeout = loop.idleTimeout
    let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
    idleCheck = context.eventLoop.scheduleRepeatedTask(
      initialDelay: .nanoseconds(timeout.nanoseconds / 4),
      delay: .nanoseconds(timeout.nanoseconds / 4)
    ) { _ in
      let connection = bound.value
      guard connection.calls.isEmpty, connection.waiting.isEmpty,
        NIODeadline.now() - connection.lastActive >= timeout
      else { return }
      connection.closeIdle()
    }
  }

  private func closeIdle() {
    idleCheck?.cancel()
    switch role {
    case .downstream: drain()
    case .upstream:
      acceptsCalls = false
      context?.close(promise: nil)
    }
  }

  private func becameActive(context: ChannelHandlerContext) {
    startIdleCheck(context: context)
    // Open the connection window to its target; stream windows are set by SETTINGS.
    let increment = HTTP2Windows.connection - HTTP2Windows.protocolDefault
    context.write(
      wrapOutboundOut(
        HTTP2Frame(streamID: .rootStream, payload: .windowUpdate(windowSizeIncrement: increment))),
      promise: nil)
    if case .upstream = role {
      // Streams start now: their frames wait in the TLS handler until the handshake is done.
      let pending = waiting
      waiting = []
      for entry in pending { start(entry.call, headers: entry.headers, endStream: entry.endStream) }
    }
    context.flush()
  }

  func channelInactive(context: ChannelHandlerContext) {
    acceptsCalls = false
    idleCheck?.cancel()
    loop.unregister(self)
    connectionLost(reason: failure ?? "connection closed")
    context.fireChannelInactive()
  }

  func errorCaught(context: ChannelHandlerContext, error: any Error) {
    // A stream error has been answered with RST_STREAM and ends only that stream.
    if error is NIOHTTP2Errors.StreamError { return }
    // Anything else ends the connection: the HTTP/2 handler has sent GOAWAY for a protocol
    // error (a flood, a broken header block, too many streams) but leaves closing to us.
    // Remember the first error so calls that die with the connection can say why.
    if failure == nil { failure = describe(error) }
    context.close(promise: nil)
  }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    let frame = unwrapInboundIn(data)
    switch frame.payload {
    case .headers(let headers):
      receiveHeaders(headers, on: frame.streamID)
    case .data(let data):
      receiveData(data, on: frame.streamID)
    case .rstStream(let code):
      receiveReset(code, on: frame.streamID)
    case .settings(.settings(let settings)):
      for setting in settings where setting.parameter == .maxConcurrentStreams {
        peerStreamLimit = setting.value
      }
    case .goAway:
      acceptsCalls = false
    default:
      break  // PING, WINDOW_UPDATE and PRIORITY are the HTTP/2 handler's business.
    }
  }

  func channelReadComplete(context: ChannelHandlerContext) {
    loop.flushAll()
    context.fireChannelReadComplete()
  }

  func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
    if let closed = event as? StreamClosedEvent {
      // Fired while a frame is read or written; that read's completion or that write's
      // caller flushes what this writes.
      streamClosed(closed.streamID, reason: closed.reason)
    }
    context.fireUserInboundEventTriggered(event)
  }

  // MARK: Frames in

  private func receiveHeaders(_ headers: HTTP2Frame.FramePayload.Headers, on stream: HTTP2StreamID)
  {
    if let call = calls[stream] {
      if call.downstream === self, headers.endStream { call.requestEnded = true }
      call.forward(.headers(headers), from: self)
      return
    }
    // No server push: a stream opened by an upstream peer is ignored.
    guard case .downstream(let direction, let service, let route) = role else { return }
    lastStreamSeen = stream
    let call = ForwardedCall(downstream: self, stream: stream)
    call.metrics = loop.metrics
    call.direction = direction
    call.method = headers.headers.first(name: ":path") ?? ""
    call.service =
      service
      ?? String(headers.headers.first(name: ":authority")?.split(separator: ":").first ?? "")
    calls[stream] = call
    call.requestEnded = headers.endStream
    switch route(headers.headers) {
    case .reject(let status, let message):
      call.answer(status, message)
    case .forward(let endpoint, let pool, let rewrite):
      var requestHeaders = headers.headers
      rewrite?(&requestHeaders)
      pool.connection(to: endpoint).open(
        call, headers: requestHeaders, endStream: headers.endStream)
    }
  }

  private func receiveData(_ data: HTTP2Frame.FramePayload.Data, on stream: HTTP2StreamID) {
    let length = data.data.readableBytes + (data.paddingBytes.map { $0 + 1 } ?? 0)
    guard let call = calls[stream] else {
      returnCredit(length)
      return
    }
    if call.downstream === self, data.endStream { call.requestEnded = true }
    call.forward(data, length: length, from: self)
  }

  private func receiveReset(_ code: HTTP2ErrorCode, on stream: HTTP2StreamID) {
    calls[stream]?.reset(code, from: self)
  }

  private func streamClosed(_ stream: HTTP2StreamID, reason: HTTP2ErrorCode?) {
    guard let call = calls.removeValue(forKey: stream) else { return }
    if calls.isEmpty { lastActive = .now() }
    call.closed(on: self, reason: reason)
    if draining, calls.isEmpty { closeAfterFlush() }
  }

  // MARK: Draining

  private var draining = false
  private var lastStreamSeen = HTTP2StreamID.rootStream

  /// Graceful shutdown of an accepted connection: GOAWAY naming the last stream taken (later
  /// ones are refused and clients retry them elsewhere), the calls in flight finish, then the
  /// connection closes.
  func drain() {
    guard case .downstream = role, !draining, let context else { return }
    draining = true
    acceptsCalls = false
    context.writeAndFlush(
      wrapOutboundOut(
        HTTP2Frame(
          streamID: .rootStream,
          payload: .goAway(lastStreamID: lastStreamSeen, errorCode: .noError, opaqueData: nil))),
      promise: nil)
    if calls.isEmpty { closeAfterFlush() }
  }

  /// Closes once what has been written so far is out. Stream-closed events arrive in the
  /// middle of a write, so the close waits for the event loop's next turn.
  private func closeAfterFlush() {
    guard let context else { return }
    let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
    context.eventLoop.execute {
      bound.value.flush()
      bound.value.close(promise: nil)
    }
  }

  // MARK: Frames out

  func write(
    _ payload: HTTP2Frame.FramePayload, on stream: HTTP2StreamID,
    promise: EventLoopPromise<Void>? = nil
  ) {
    guard let context else {
      promise?.fail(ChannelError.ioOnClosedChannel)
      return
    }
    context.write(wrapOutboundOut(HTTP2Frame(streamID: stream, payload: payload)), promise: promise)
    if !needsFlush {
      needsFlush = true
      loop.needsFlush(self)
    }
  }

  func flushIfNeeded() {
    guard needsFlush else { return }
    needsFlush = false
    context?.flush()
  }

  /// Gives `length` bytes of window back to the peer's connection window.
  func returnCredit(_ length: Int) {
    connectionCredit += length
    if connectionCredit >= HTTP2Windows.connection / 2 {
      write(.windowUpdate(windowSizeIncrement: connectionCredit), on: .rootStream)
      connectionCredit = 0
    }
  }

  /// Gives `length` bytes back to the connection and to `stream`, whose owed bytes are
  /// gathered in `credit` until half a window is worth a WINDOW_UPDATE.
  func returnCredit(_ length: Int, stream: HTTP2StreamID, credit: inout Int) {
    returnCredit(length)
    credit += length
    if credit >= HTTP2Windows.stream / 2 {
      write(.windowUpdate(windowSizeIncrement: credit), on: stream)
      credit = 0
    }
  }

  // MARK: Upstream: opening streams

  /// Starts `call` on this connection now, or once it is established.
  func open(_ call: ForwardedCall, headers: HPACKHeaders, endStream: Bool) {
    call.upstream = self
    if let context, context.channel.isActive {
      start(call, headers: headers, endStream: endStream)
    } else if let failure {
      call.upstreamFailed("cannot reach \(endpointDescription): \(failure)")
    } else {
      waiting.append((call, headers, endStream))
    }
  }

  private func start(_ call: ForwardedCall, headers: HPACKHeaders, endStream: Bool) {
    let stream = nextStreamID
    guard stream < HTTP2StreamID.maxID.advanced(by: -2) else {
      acceptsCalls = false
      call.upstreamFailed("connection to \(endpointDescription) ran out of stream IDs")
      return
    }
    nextStreamID = stream.advanced(by: 2)
    calls[stream] = call
    call.upstreamStream = stream
    write(.headers(.init(headers: headers, endStream: endStream)), on: stream)
    call.releaseHeld()
  }

  /// The connection could not be made: every waiting call is answered.
  func connectFailed(_ error: any Error) {
    acceptsCalls = false
    if failure == nil { failure = describe(error) }
    connectionLost(reason: failure!)
  }

  private var endpointDescription: String {
    if case .upstream(let endpoint) = role {
      return endpoint.expectedIdentity.map { "\($0) at \(endpoint)" } ?? "\(endpoint)"
    }
    return "caller"
  }

  private func connectionLost(reason: String) {
    let pending = waiting
    waiting = []
    for entry in pending {
      entry.call.upstreamFailed("cannot reach \(endpointDescription): \(reason)")
    }
    let open = calls
    calls = [:]
    for call in open.values {
      call.connectionLost(self, reason: "connection to \(endpointDescription) lost: \(reason)")
    }
    loop.flushAll()
  }
}

/// One call crossing the proxy: the caller's stream joined to the stream towards its
/// destination. Everything here runs on the event loop both connections share.
final class ForwardedCall {
  let downstream: ForwardingConnection
  let downstreamStream: HTTP2StreamID
  let start = NIODeadline.now()
  var metrics: SidecarMetrics?
  var direction = ""
  var service = ""
  var method = ""
  /// The call's gRPC status, once seen.
  private var code: Substring?
  var upstream: ForwardingConnection?
  var upstreamStream: HTTP2StreamID?

  private var requestMessages = MessageFramer()
  private var responseMessages = MessageFramer()

  /// A message over the limit ends the call: RESOURCE_EXHAUSTED to the caller, a reset
  /// upstream, and none of the message forwarded.
  private func refuseOversized(_ size: Int, direction: String) {
    if let upstream, let upstreamStream, !upstreamClosed {
      upstreamClosed = true
      upstream.write(.rstStream(.cancel), on: upstreamStream)
    }
    upstreamClosed = true
    held = []
    answer(
      .resourceExhausted,
      "\(direction) message of \(size) bytes exceeds the limit of \(MessageFramer.defaultLimit) bytes"
    )
  }

  /// Request frames that arrived before the upstream stream was open, in order.
  private var held: [(HTTP2Frame.FramePayload, Int)] = []
  /// Window owed to the caller's stream and to the upstream stream.
  private var downstreamCredit = 0
  private var upstreamCredit = 0
  var requestEnded = false
  /// Response headers have been forwarded to the caller: the call can no longer be answered
  /// by the proxy with a Trailers-Only status, only ended.
  private var responseStarted = false
  private var responseEnded = false
  private var downstreamClosed = false
  private var upstreamClosed = false

  init(downstream: ForwardingConnection, stream: HTTP2StreamID) {
    self.downstream = downstream
    self.downstreamStream = stream
  }

  /// HEADERS from one side go to the other: response headers, trailers, or request trailers.
  func forward(_ headers: HTTP2Frame.FramePayload, from side: ForwardingConnection) {
    if side === downstream {
      forwardUp(headers, length: 0)
    } else if !downstreamClosed {
      if case .headers(let frame) = headers, frame.endStream {
        responseEnded = true
        code = frame.headers.first(name: "grpc-status").map { Substring($0) }
      }
      responseStarted = true
      downstream.write(headers, on: downstreamStream)
    }
  }

  /// DATA from one side goes to the other; its window returns to the sender once written.
  func forward(_ data: HTTP2Frame.FramePayload.Data, length: Int, from side: ForwardingConnection) {
    if side === downstream {
      if !upstreamClosed, case .byteBuffer(let buffer) = data.data,
        let size = requestMessages.scan(buffer, limit: MessageFramer.defaultLimit)
      {
        downstream.returnCredit(length)
        refuseOversized(size, direction: "request")
        return
      }
      forwardUp(.data(data), length: length)
    } else {
      if !responseEnded, case .byteBuffer(let buffer) = data.data,
        let size = responseMessages.scan(buffer, limit: MessageFramer.defaultLimit)
      {
        side.returnCredit(length)
        refuseOversized(size, direction: "response")
        return
      }
      responseStarted = true
      if data.endStream { responseEnded = true }
      sendCounted(.data(data), length: length, to: downstream, on: downstreamStream, from: side)
    }
  }

  private func forwardUp(_ payload: HTTP2Frame.FramePayload, length: Int) {
    guard !upstreamClosed else {
      if length > 0 { downstream.returnCredit(length) }
      return
    }
    guard let upstream, let upstreamStream else {
      held.append((payload, length))
      return
    }
    if length > 0 {
      sendCounted(payload, length: length, to: upstream, on: upstreamStream, from: downstream)
    } else {
      upstream.write(payload, on: upstreamStream)
    }
  }

  private func sendCounted(
    _ payload: HTTP2Frame.FramePayload, length: Int, to target: ForwardingConnection,
    on stream: HTTP2StreamID, from source: ForwardingConnection
  ) {
    guard let eventLoop = target.eventLoopIfOpen else {
      source.returnCredit(length)
      return
    }
    let promise = eventLoop.makePromise(of: Void.self)
    target.write(payload, on: stream, promise: promise)
    promise.futureResult.assumeIsolated().whenComplete { _ in self.written(length, from: source) }
  }

  /// A forwarded DATA frame has left: its bytes go back to the side it came from.
  private func written(_ length: Int, from source: ForwardingConnection) {
    if source === downstream {
      if requestEnded || downstreamClosed {
        source.returnCredit(length)
      } else {
        source.returnCredit(length, stream: downstreamStream, credit: &downstreamCredit)
      }
    } else if let upstreamStream, !upstreamClosed, !responseEnded {
      source.returnCredit(length, stream: upstreamStream, credit: &upstreamCredit)
    } else {
      source.returnCredit(length)
    }
    source.loopFlush()
  }

  /// The upstream stream now exists: frames held meanwhile follow the HEADERS.
  func releaseHeld() {
    let frames = held
    held = []
    for (payload, length) in frames { forwardUp(payload, length: length) }
  }

  /// Answers the caller with a gRPC status of the proxy's own (Trailers-Only), and asks it to
  /// stop sending if it has not finished.
  func answer(_ status: ProxyStatus, _ message: String) {
    guard !downstreamClosed else { return }
    code = Substring(String(status.rawValue))
    if responseStarted {
      // Headers are out: end the response with trailers carrying the status.
      downstream.write(trailers(status, message), on: downstreamStream)
    } else {
      downstream.write(trailersOnly(status, message), on: downstreamStream)
    }
    responseStarted = true
    responseEnded = true
    if !requestEnded { downstream.write(.rstStream(.noError), on: downstreamStream) }
  }

  /// A reset from one side resets the other with the same code.
  func reset(_ code: HTTP2ErrorCode, from side: ForwardingConnection) {
    if side === downstream {
      downstreamClosed = true
      held = []
      if let upstream, let upstreamStream, !upstreamClosed {
        upstream.write(.rstStream(code), on: upstreamStream)
      }
    } else {
      upstreamClosed = true
      if !downstreamClosed { downstream.write(.rstStream(code), on: downstreamStream) }
    }
  }

  /// A stream of this call has closed on `side`. A stream that ended in error without a reset
  /// from its peer (the HTTP/2 handler refused it, or the peer went away before processing it)
  /// ends the other half too.
  func closed(on side: ForwardingConnection, reason: HTTP2ErrorCode?) {
    if side === downstream {
      let wasClosed = downstreamClosed
      downstreamClosed = true
      held = []
      record(reset: reason != nil)
      if reason != nil, !wasClosed, let upstream, let upstreamStream, !upstreamClosed {
        upstream.write(.rstStream(.cancel), on: upstreamStream)
      }
    } else {
      let wasClosed = upstreamClosed
      upstreamClosed = true
      if let reason, !wasClosed, !responseEnded {
        answer(.unavailable, "stream to \(side.endpointName) closed (\(reason))")
      }
    }
  }

  /// Counts the call once, when the caller's stream ends.
  private func record(reset: Bool) {
    guard let metrics else { return }
    self.metrics = nil
    let name = code.map(grpcCodeName) ?? (reset ? "CANCELLED" : "UNKNOWN")
    let seconds = Double((NIODeadline.now() - start).nanoseconds) / 1e9
    metrics.recordCall(
      direction: direction, service: service, method: method, code: name, seconds: seconds)
  }

  /// The upstream connection could not carry this call.
  func upstreamFailed(_ message: String) {
    upstreamClosed = true
    held = []
    answer(.unavailable, message)
  }

  func connectionLost(_ side: ForwardingConnection, reason: String) {
    if side === downstream {
      if !downstreamClosed { record(reset: true) }
      downstreamClosed = true
      held = []
      if let upstream, let upstreamStream, !upstreamClosed {
        upstreamClosed = true
        upstream.write(.rstStream(.cancel), on: upstreamStream)
      }
    } else if !upstreamClosed {
      upstreamClosed = true
      if responseEnded {
        if !downstreamClosed { downstream.write(.rstStream(.cancel), on: downstreamStream) }
      } else {
        answer(.unavailable, reason)
      }
    }
  }
}

extension ForwardingConnection {
  var eventLoopIfOpen: (any EventLoop)? { context?.eventLoop }

  fileprivate var endpointName: String {
    if case .upstream(let endpoint) = role { return "\(endpoint)" }
    return "caller"
  }

  fileprivate func loopFlush() { loop.flushAll() }
}

/// State shared by the connections of one event loop: the upstream pools, and the
/// connections written to during the current read, flushed together when it completes.
final class LoopState {
  let eventLoop: any EventLoop
  let metrics: SidecarMetrics?
  let idleTimeout: TimeAmount
  private var toFlush: [ForwardingConnection] = []

  init(eventLoop: any EventLoop, metrics: SidecarMetrics?, idleTimeout: TimeAmount) {
    self.eventLoop = eventLoop
    self.metrics = metrics
    self.idleTimeout = idleTimeout
  }

  /// Accepted connections, for draining.
  private var accepted: [ObjectIdentifier: ForwardingConnection] = [:]
  private var drained: EventLoopPromise<Void>?

  func register(_ connection: ForwardingConnection) {
    accepted[ObjectIdentifier(connection)] = connection
  }

  func unregister(_ connection: ForwardingConnection) {
    guard accepted.removeValue(forKey: ObjectIdentifier(connection)) != nil else { return }
    if accepted.isEmpty { drained?.succeed() }
  }

  /// Drains every accepted connection; succeeds once all have closed.
  func drain() -> EventLoopFuture<Void> {
    let promise = eventLoop.makePromise(of: Void.self)
    drained = promise
    if accepted.isEmpty { promise.succeed() }
    for connection in accepted.values { connection.drain() }
    return promise.futureResult
  }

  func needsFlush(_ connection: ForwardingConnection) {
    toFlush.append(connection)
  }

  func flushAll() {
    while !toFlush.isEmpty {
      let connections = toFlush
      toFlush.removeAll(keepingCapacity: true)
      for connection in connections { connection.flushIfNeeded() }
    }
  }
}

/// A Trailers frame (after response headers) carrying a status of the proxy's own.
func trailers(_ status: ProxyStatus, _ message: String) -> HTTP2Frame.FramePayload {
  let headers: HPACKHeaders = [
    "grpc-status": "\(status.rawValue)", "grpc-message": percentEncodeGRPCMessage(message),
  ]
  return .headers(.init(headers: headers, endStream: true))
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
    return error.connectionErrors.first.map { describe($0.error) } ?? "connection failed"
  default:
    let text = "\(error)"
    if text.contains("Connection refused") { return "connection refused" }
    return text
  }
}
