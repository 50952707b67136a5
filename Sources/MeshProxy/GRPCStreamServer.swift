import NIOCore
import NIOHPACK

/// What a `GRPCStreamServer` serves: it is asked, on the connection's event loop, for each
/// call that comes.
package protocol GRPCStreamService: AnyObject {
  /// A call to `path`: its handler, or nil for UNIMPLEMENTED. The handler may finish the call
  /// at once (a refusal with its own status).
  func open(
    path: String, headers: HPACKHeaders, call: GRPCStreamCall
  ) -> (any GRPCStreamCallHandler)?
}

/// One call's side of the server, told on the event loop what the peer did.
package protocol GRPCStreamCallHandler: AnyObject {
  /// One whole message, without gRPC's 5-byte prefix.
  func received(_ message: ByteBuffer)
  /// The peer sent all its messages (END_STREAM).
  func receivedEnd()
  /// Every message sent has gone out (the peer's windows had held some back), or the socket
  /// takes writes again.
  func drained()
  /// The call is over: finished here, reset by the peer, timed out, or its connection gone.
  /// Nothing may be sent after.
  func ended()
}

/// A call as its handler drives it; its methods are for the connection's event loop.
package final class GRPCStreamCall {
  package let eventLoop: any EventLoop
  let id: UInt32
  unowned(unsafe) let server: GRPCStreamServer
  var handler: (any GRPCStreamCallHandler)?
  /// The peer's bytes of a message not whole yet.
  var inbound: ByteBuffer?
  /// Framed messages waiting for a window, and the trailers to send after them.
  var outbound: ByteBuffer?
  var trailers: HPACKHeaders?
  var sentHeaders = false
  var isOver = false
  var deadline: Scheduled<Void>?

  init(id: UInt32, server: GRPCStreamServer, eventLoop: any EventLoop) {
    self.id = id
    self.server = server
    self.eventLoop = eventLoop
  }

  /// Whether messages sent wait — for the peer's windows, or for the socket, which a peer that
  /// does not read fills: a sender of snapshots waits for `drained` rather than queue more.
  package var isBlocked: Bool { outbound != nil || !server.isWritable }

  /// Sends one message (its bytes, unprefixed).
  package func send(_ message: ByteBuffer) {
    guard !isOver, trailers == nil else { return }
    server.send(message, on: self)
  }

  /// Ends the call with a status (gRPC's code and message) after the messages sent.
  package func finish(code: Int, message: String = "") {
    guard !isOver, trailers == nil else { return }
    server.finish(self, code: code, message: message)
  }
}

/// A gRPC server on the sidecar's HTTP/2 core, for calls that stay open on thousands of
/// connections at once (the control plane's config streams): it keeps no child channel, no
/// task and no buffer per call beyond what is on its way, and a connection's own state is the
/// core's (`HTTP2Connection`). Plaintext below (TLS under it), calls above through
/// `GRPCStreamService`.
///
/// Each connection gets its SETTINGS (unless the layer that chose this server sent them
/// already: `settingsSent`), and is checked for liveness: silent for `pingAfter`, it is
/// PINGed; silent `closeAfter` longer, it is closed. Messages over `maximumMessage` bytes end
/// their call with RESOURCE_EXHAUSTED; compressed ones with UNIMPLEMENTED (none is asked for).
/// A call with `grpc-timeout` ends with DEADLINE_EXCEEDED when it runs out.
package final class GRPCStreamServer: ChannelDuplexHandler {
  package typealias InboundIn = ByteBuffer
  package typealias OutboundIn = ByteBuffer
  package typealias OutboundOut = ByteBuffer

  private let service: any GRPCStreamService
  private let maximumMessage: Int
  private let pingAfter: TimeAmount
  private let closeAfter: TimeAmount
  private var settingsSent: Bool
  private var state: HTTP2Connection<Void>
  private var reader = HTTP2FrameReader(expectsPreface: true)
  private var received = ByteBuffer()
  private var calls: [UInt32: GRPCStreamCall] = [:]
  private var output: ByteBuffer?
  private var context: ChannelHandlerContext?
  private var closing = false
  private var lastRead = NIODeadline.now()
  private var pingSentAt: NIODeadline?
  private var liveness: RepeatedTask?

  /// The settings this server sends: what a layer that sends them first must send.
  package static func settings(maxConcurrentStreams: Int) -> [(UInt16, UInt32)] {
    HTTP2Connection<Void>(
      isServer: true, maxConcurrentStreams: maxConcurrentStreams, peerStreamLimit: 0,
      now: .now()
    ).initialSettings
  }

  package init(
    service: any GRPCStreamService, maxConcurrentStreams: Int = 16,
    maximumMessage: Int = MessageFramer.defaultLimit, pingAfter: TimeAmount = .seconds(30),
    closeAfter: TimeAmount = .seconds(20), settingsSent: Bool = false
  ) {
    self.service = service
    self.maximumMessage = maximumMessage
    self.pingAfter = pingAfter
    self.closeAfter = closeAfter
    self.settingsSent = settingsSent
    state = HTTP2Connection(
      isServer: true, maxConcurrentStreams: maxConcurrentStreams, peerStreamLimit: 0, now: .now())
  }

  /// Open calls (for tests and metrics).
  package var openCalls: Int { calls.count }

  package func handlerAdded(context: ChannelHandlerContext) {
    self.context = context
    if context.channel.isActive { start(context) }
  }

  package func handlerRemoved(context: ChannelHandlerContext) {
    liveness?.cancel()
    endAll()
    self.context = nil
  }

  package func channelActive(context: ChannelHandlerContext) {
    start(context)
    context.fireChannelActive()
  }

  package func channelInactive(context: ChannelHandlerContext) {
    closing = true
    liveness?.cancel()
    endAll()
    context.fireChannelInactive()
  }

  private var started = false

  private func start(_ context: ChannelHandlerContext) {
    guard !started else { return }
    started = true
    lastRead = context.eventLoop.now
    if !settingsSent {
      let settings = state.initialSettings
      var out = buffer(context)
      out.writeFrameHeader(
        length: settings.count * 6, type: FrameType.settings, flags: 0, stream: 0)
      for (id, value) in settings {
        out.writeInteger(id)
        out.writeInteger(value)
      }
      output = out
      settingsSent = true
    }
    writeWindowUpdate(HTTP2Windows.connection - HTTP2Windows.protocolDefault, on: 0)
    flush()
    let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
    let every = min(pingAfter, closeAfter)
    liveness = context.eventLoop.scheduleRepeatedTask(initialDelay: every, delay: every) { _ in
      bound.value.checkLiveness()
    }
  }

  // MARK: Reading

  package func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    var bytes = unwrapInboundIn(data)
    guard !closing else { return }
    lastRead = context.eventLoop.now
    pingSentAt = nil
    if received.readableBytes == 0 {
      received = bytes
    } else {
      received.writeBuffer(&bytes)
    }
    do {
      while !closing, let frame = try reader.next(from: &received) {
        let event = try state.receive(frame, now: lastRead)
        handle(event)
        writeOutbox()
      }
    } catch let error as HTTP2ConnectionError {
      fail(error)
    } catch {
      fail(HTTP2ConnectionError(.protocolError, "\(error)"))
    }
    if received.readableBytes == 0 { received = ByteBuffer() } else { received.discardReadBytes() }
  }

  package func channelReadComplete(context: ChannelHandlerContext) {
    flush()
  }

  /// Whether the channel takes more writes now.
  var isWritable: Bool { context?.channel.isWritable ?? false }

  package func channelWritabilityChanged(context: ChannelHandlerContext) {
    if context.channel.isWritable {
      for call in Array(calls.values) where call.outbound == nil && !call.isOver {
        call.handler?.drained()
      }
    }
    context.fireChannelWritabilityChanged()
  }

  package func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
    if event is ChannelShouldQuiesceEvent {
      shutDown(code: ProxyStatus.unavailable.rawValue, message: "the server is shutting down")
    } else {
      context.fireUserInboundEventTriggered(event)
    }
  }

  package func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?)
  {
    promise?.fail(ChannelError.operationUnsupported)  // the calls write, not the pipeline
  }

  private func handle(_ event: HTTP2Connection<Void>.Event) {
    switch event {
    case .none, .goAway, .credit:
      if case .credit(_, let flow) = event { state.returnCredit(flow) }
    case .request(let id, let request, let endStream, let declaredLength):
      state.open(id, (), endStream: endStream, declaredLength: declaredLength)
      accept(id, request, endStream: endStream)
    case .headers(_, let id, _, let endStream):
      if endStream, let call = calls[id] { call.handler?.receivedEnd() }
    case .data(_, let id, let payload, let endStream, let flow):
      state.returnCredit(flow)
      guard let call = calls[id] else { return }
      take(payload, on: call)
      if !call.isOver {
        state.returnStreamCredit(flow, on: id) { _ in false }
        if endStream { call.handler?.receivedEnd() }
      }
    case .peerReset(_, let id, _), .streamError(_, let id, _):
      if let call = calls.removeValue(forKey: id) { over(call) }
    case .windowsOpened:
      for call in calls.values where call.outbound != nil { drain(call) }
    case .streamWindowOpened(let id):
      if let call = calls[id] { drain(call) }
    }
  }

  private func accept(_ id: UInt32, _ request: HTTP2Request, endStream: Bool) {
    guard let context else { return }
    guard isGRPCContentType(request.contentType) else {
      respondAndClose(id, trailersOnly(.unimplemented, "not a gRPC request", httpStatus: 415))
      return
    }
    let call = GRPCStreamCall(id: id, server: self, eventLoop: context.eventLoop)
    calls[id] = call
    if let timeout = request.headers.checkedValue("grpc-timeout").flatMap(GRPCTimeout.parse) {
      let bound = NIOLoopBound(call, eventLoop: context.eventLoop)
      call.deadline = context.eventLoop.scheduleTask(in: timeout) {
        bound.value.finish(
          code: ProxyStatus.deadlineExceeded.rawValue, message: "deadline exceeded")
      }
    }
    guard let handler = service.open(path: request.path, headers: request.headers, call: call)
    else {
      finish(
        call, code: ProxyStatus.unimplemented.rawValue,
        message: "\(request.path) is not served here")
      return
    }
    if !call.isOver { call.handler = handler }
    if endStream, !call.isOver { handler.receivedEnd() }
  }

  /// Cuts the call's bytes into messages and hands them on.
  private func take(_ payload: ByteBuffer, on call: GRPCStreamCall) {
    var bytes = payload
    if call.inbound != nil {
      call.inbound!.writeBuffer(&bytes)
      bytes = call.inbound!
    }
    call.inbound = nil
    while !call.isOver, bytes.readableBytes >= 5 {
      let flag = bytes.getInteger(at: bytes.readerIndex, as: UInt8.self)!
      let length = Int(bytes.getInteger(at: bytes.readerIndex + 1, as: UInt32.self)!)
      guard flag == 0 else {
        finish(
          call, code: ProxyStatus.unimplemented.rawValue,
          message: "compressed messages are not accepted")
        return
      }
      guard length <= maximumMessage else {
        finish(
          call, code: ProxyStatus.resourceExhausted.rawValue,
          message: "a message of \(length) bytes is over the limit of \(maximumMessage)")
        return
      }
      guard bytes.readableBytes >= 5 + length else { break }
      bytes.moveReaderIndex(forwardBy: 5)
      let message = bytes.readSlice(length: length)!
      call.handler?.received(message)
    }
    if !call.isOver, bytes.readableBytes > 0 {
      // What stays is a part of one message: copied out of the frames' buffer it shares.
      var rest = ByteBufferAllocator().buffer(capacity: bytes.readableBytes)
      rest.writeBuffer(&bytes)
      call.inbound = rest
    }
  }

  // MARK: Writing

  private var responseHeaders: HPACKHeaders {
    [":status": "200", "content-type": "application/grpc"]
  }

  fileprivate func send(_ message: ByteBuffer, on call: GRPCStreamCall) {
    var framed = call.outbound ?? ByteBufferAllocator().buffer(capacity: 5 + message.readableBytes)
    call.outbound = nil
    framed.writeInteger(UInt8(0))
    framed.writeInteger(UInt32(message.readableBytes))
    var bytes = message
    framed.writeBuffer(&bytes)
    call.outbound = framed
    drain(call)
    flush()
  }

  fileprivate func finish(_ call: GRPCStreamCall, code: Int, message: String) {
    var trailers: HPACKHeaders = ["grpc-status": "\(code)"]
    if !message.isEmpty {
      trailers.add(name: "grpc-message", value: percentEncodeGRPCMessage(message))
    }
    call.trailers = trailers
    drain(call)
    flush()
  }

  /// Sends what the windows allow of the call's messages, then its trailers once none wait.
  private func drain(_ call: GRPCStreamCall) {
    guard !closing, !call.isOver else { return }
    let wasBlocked = call.outbound != nil && call.trailers == nil
    defer { if wasBlocked, call.outbound == nil, !call.isOver { call.handler?.drained() } }
    if var pending = call.outbound {
      call.outbound = nil
      if !call.sentHeaders { sendResponseHeaders(call) }
      while pending.readableBytes > 0 {
        let allowed = min(
          state.sendable(on: call.id), state.peerMaxFrameSize, pending.readableBytes)
        guard allowed > 0, state.consumeSendWindow(allowed, on: call.id) else { break }
        var out = buffer()
        out.writeFrameHeader(length: allowed, type: FrameType.data, flags: 0, stream: call.id)
        var chunk = pending.readSlice(length: allowed)!
        out.writeBuffer(&chunk)
        output = out
      }
      if pending.readableBytes > 0 {
        call.outbound = pending
        return
      }
    }
    guard let trailers = call.trailers else { return }
    if !call.sentHeaders, call.outbound == nil {
      // Trailers-only: one HEADERS with the status.
      var only = responseHeaders
      only.add(contentsOf: trailers)
      writeHeaders(only, endStream: true, on: call.id)
    } else {
      writeHeaders(trailers, endStream: true, on: call.id)
    }
    call.sentHeaders = true
    calls.removeValue(forKey: call.id)
    // The peer may still be sending: its stream is reset (NO_ERROR, RFC 9113 §8.1) rather
    // than left half open.
    if state.endedHere(call.id) == nil { _ = state.reset(call.id, .noError) }
    writeOutbox()
    over(call)
  }

  private func sendResponseHeaders(_ call: GRPCStreamCall) {
    writeHeaders(responseHeaders, endStream: false, on: call.id)
    call.sentHeaders = true
  }

  private func over(_ call: GRPCStreamCall) {
    guard !call.isOver else { return }
    call.isOver = true
    call.deadline?.cancel()
    call.deadline = nil
    call.outbound = nil
    call.inbound = nil
    let handler = call.handler
    call.handler = nil
    handler?.ended()
  }

  private func endAll() {
    let all = calls.values
    calls = [:]
    for call in all { over(call) }
  }

  private func respondAndClose(_ id: UInt32, _ headers: HPACKHeaders) {
    writeHeaders(headers, endStream: true, on: id)
    if state.endedHere(id) == nil { _ = state.reset(id, .noError) }
    writeOutbox()
  }

  private func writeHeaders(_ headers: HPACKHeaders, endStream: Bool, on id: UInt32) {
    var out = buffer()
    out.writeHeadersFrame(
      headers, endStream: endStream, stream: id, encoder: &state.encoder,
      maxFrameSize: state.peerMaxFrameSize)
    output = out
  }

  private func writeOutbox() {
    guard !state.outbox.isEmpty else { return }
    var out = buffer()
    for frame in state.outbox {
      switch frame {
      case .settingsAck:
        out.writeFrameHeader(length: 0, type: FrameType.settings, flags: FrameFlag.ack, stream: 0)
      case .pingAck(let payload):
        out.writeFrameHeader(length: 8, type: FrameType.ping, flags: FrameFlag.ack, stream: 0)
        out.writeInteger(payload)
      case .reset(let id, let code):
        out.writeFrameHeader(length: 4, type: FrameType.rstStream, flags: 0, stream: id)
        out.writeInteger(code.code)
      case .windowUpdate(let id, let increment):
        out.writeFrameHeader(length: 4, type: FrameType.windowUpdate, flags: 0, stream: id)
        out.writeInteger(UInt32(increment))
      }
    }
    state.outbox.removeAll()
    output = out
  }

  private func writeWindowUpdate(_ increment: Int, on id: UInt32) {
    var out = buffer()
    out.writeFrameHeader(length: 4, type: FrameType.windowUpdate, flags: 0, stream: id)
    out.writeInteger(UInt32(increment))
    output = out
  }

  /// The output buffer, taken to be written to: made when there is something to write, and
  /// dropped once written, so that an idle connection holds none.
  private func buffer(_ context: ChannelHandlerContext? = nil) -> ByteBuffer {
    if let output {
      self.output = nil
      return output
    }
    return (context ?? self.context)?.channel.allocator.buffer(capacity: 256) ?? ByteBuffer()
  }

  private func flush() {
    guard let context, let out = output else { return }
    output = nil
    context.writeAndFlush(wrapOutboundOut(out), promise: nil)
  }

  // MARK: Ending

  private func fail(_ error: HTTP2ConnectionError) {
    guard !closing else { return }
    goAway(error.code)
    closing = true
    context?.close(promise: nil)
  }

  private func goAway(_ code: H2Error) {
    var out = buffer()
    out.writeFrameHeader(length: 8, type: FrameType.goAway, flags: 0, stream: 0)
    out.writeInteger(state.lastStreamSeen)
    out.writeInteger(code.code)
    output = out
    flush()
  }

  /// Ends every call with `code` and the connection with GOAWAY (a server going away).
  package func shutDown(code: Int, message: String) {
    guard !closing else { return }
    for call in Array(calls.values) { finish(call, code: code, message: message) }
    goAway(.noError)
    closing = true
    context?.close(promise: nil)
  }

  private func checkLiveness() {
    guard !closing else { return }
    guard let now = context?.eventLoop.now else { return }
    if let sent = pingSentAt {
      if now - sent >= closeAfter {
        closing = true
        endAll()
        context?.close(promise: nil)
      }
      return
    }
    guard now - lastRead >= pingAfter else { return }
    var out = buffer()
    out.writeFrameHeader(length: 8, type: FrameType.ping, flags: 0, stream: 0)
    out.writeInteger(UInt64(0x7472_656C_6C69_7321))  // "trellis!"
    output = out
    state.sentPing()
    pingSentAt = now
    flush()
  }
}
