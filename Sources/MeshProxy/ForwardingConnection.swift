import MeshTracing
import NIOCore
import NIOHPACK
import NIOPosix
import NIOSSL

/// Where a new call goes, decided from its request headers.
enum CallRoute {
  /// Forward to `endpoint` through `pool`, rewriting the request headers on the way; `peer`
  /// is the verified caller the rewrite names to the app.
  case forward(Endpoint, UpstreamPool, peer: String?, rewrite: ((inout HPACKHeaders) -> Void)?)
  /// An outbound call under its route's policies, through `pool`; `limit` (a place the call
  /// holds in its service's circuit breaker) is released when it ends.
  case outbound(OutboundPlan, UpstreamPool, limit: ConcurrencyLimit)
  /// Answer at once with a gRPC status; the call goes nowhere. `fault` names the kind of an
  /// injected fault.
  case reject(ProxyStatus, String, fault: String? = nil)
}

/// One HTTP/2 connection of the proxy, speaking the protocol itself on the bytes of the socket
/// (or of the TLS handler): every call is a stream on the connection it came in on
/// (downstream) joined to a stream on a pooled connection to where it goes (upstream), and
/// this handler moves frames between the two by stream ID.
///
/// The protocol's rules — settings, windows, stream states, the limits a peer is held to —
/// are `HTTP2Connection`, a value this handler feeds with the frames `HTTP2FrameReader` cuts
/// from the bytes read; the handler carries out what each frame means (a call started, data
/// forwarded, a stream ended) and writes the frames the connection owes.
///
/// Why its own framing rather than a general HTTP/2 stack: a proxy needs only to parse a
/// frame, look its stream up and re-frame it on the other side. Doing just that — frames
/// parsed in place from the read buffer, every frame written in a read appended to one output
/// buffer, one table lookup per frame, no per-frame promise or pipeline hop — is what makes the
/// forwarding path cheap. HPACK is NIOHPACK's.
///
/// Flow control is end to end, and bounded by the sockets. A stream's window is returned to
/// the sender only once a DATA frame's bytes have been written towards the other connection's
/// socket, so a slow reader stops its writer, and the proxy holds at most one stream window
/// (`HTTP2Windows.stream`) per stream. What the peer's windows or its socket do not yet allow
/// waits, in order, on its stream — and the sender's *connection* window is returned as soon as
/// a frame waits there, so one stalled stream never holds back the other streams of the
/// connection it came from. No DATA is written to a socket the peer does not read (the channel
/// is not writable; `output` is handed to the channel once it holds `outputFlushSize`, so that
/// the channel knows in time); HEADERS and control frames are, and once `maximumPendingAnswers`
/// of answers to the peer's own frames (PING and SETTINGS acknowledgements, resets of its
/// streams) have been written meanwhile, the peer is not read either until it reads: a peer
/// that floods PINGs or SETTINGS without reading the acknowledgements costs a bounded buffer.
final class ForwardingConnection: ChannelDuplexHandler {
  typealias InboundIn = ByteBuffer
  typealias OutboundIn = ByteBuffer
  typealias OutboundOut = ByteBuffer

  enum Role {
    /// Accepted: calls start here, each asking `route` where it goes. `service` names the
    /// service for metrics (nil: the target named by `:authority`).
    case downstream(direction: String, service: String?, route: (HTTP2Request) -> CallRoute)
    /// Opened by a pool: calls are forwarded to it.
    case upstream(Endpoint)
  }

  /// What the handler keeps with each stream: its call, and the frames waiting for the peer's
  /// windows or its socket, in order.
  struct StreamCall {
    let call: ForwardedCall
    var queue: [Queued] = []
  }

  enum Queued {
    /// `flow` bytes of the source stream's window go back to `source` once the frame is out
    /// (its connection's window went back when the frame was queued).
    case data(ByteBuffer, endStream: Bool, flow: Int, source: ForwardingConnection?)
    case headers(HPACKHeaders, endStream: Bool)
  }

  typealias Stream = HTTP2Connection<StreamCall>.Stream

  let role: Role
  private let isServer: Bool
  private let loop: LoopState
  private var context: ChannelHandlerContext?
  private var state: HTTP2Connection<StreamCall>
  private var reader: HTTP2FrameReader

  // Reading.
  private var unread: ByteBuffer?

  // Writing: every frame goes into `output`, written out by `flushIfNeeded`. DATA only while
  // the channel is writable (its socket takes what is written).
  private var output = ByteBuffer()
  /// The outbox's frames while they are written (its storage is kept for the next ones).
  private var spentOutbox: [HTTP2Connection<StreamCall>.ControlFrame] = []
  private(set) var needsFlush = false
  private var writable = true
  /// Bytes of answers to the peer's own frames written since the channel stopped being
  /// writable.
  private var answersWhileUnwritable = 0
  /// A read the channel asked for while reading was paused.
  private var readWanted = false
  /// Streams with frames waiting for a window.
  private var blocked: [UInt32] = []

  // Upstream connections only.
  /// Calls waiting for the connection to be established.
  private var waiting: [(call: ForwardedCall, headers: HPACKHeaders, endStream: Bool)] = []
  /// False once the connection is closing or has been told to go away.
  private(set) var acceptsCalls = true
  /// Why the connection failed, in words, once it has.
  private var failure: String?
  private var closing = false

  /// Bytes of answers to the peer's own frames (acknowledgements, resets) that may be written
  /// to a socket the peer does not read before the peer is not read either. HEADERS are not
  /// counted (calls bound them) nor WINDOW_UPDATE (DATA, which flow control bounds, causes
  /// them), so two sidecars busy with each other never both stop reading.
  static let maximumPendingAnswers = 64 * 1024
  /// What `output` holds at most before it is written out at once, rather than at the end of
  /// the read: the channel's writability (its high-water mark is 32 KiB) then stops the DATA
  /// of a read's many streams before it piles up here. (`scripts/abuse`: 100 connections that
  /// never read, 8 streams each, held 14 MB in output buffers without it.)
  static let outputFlushSize = 32 << 10
  /// The payload of the PING that asks the peer to show it has read this side's resets.
  static let resetsReadPing: UInt64 = 0x7472_656C_6C69_7321

  init(role: Role, loop: LoopState, peerStreamLimit: Int = HTTP2Windows.maxConcurrentStreams) {
    self.role = role
    self.loop = loop
    if case .downstream = role { isServer = true } else { isServer = false }
    state = HTTP2Connection(
      isServer: isServer, maxConcurrentStreams: loop.maxConcurrentStreams,
      peerStreamLimit: peerStreamLimit, now: .now())
    reader = HTTP2FrameReader(expectsPreface: isServer)
  }

  /// Calls using or waiting for this connection.
  var load: Int { state.streams.count + waiting.count }

  /// The peer's SETTINGS_MAX_CONCURRENT_STREAMS (until it says, what its other connections
  /// said, or the mesh's default).
  var peerStreamLimit: Int { state.peerStreamLimit }

  var eventLoop: any EventLoop { loop.eventLoop }

  /// Flushes every connection of the loop written to since the last flush — for writes made
  /// outside a read (a timer's).
  func flushWrites() { loop.flushAll() }

  // MARK: Channel events

  func handlerAdded(context: ChannelHandlerContext) {
    self.context = context
    output = context.channel.allocator.buffer(capacity: 1024)
    if case .downstream = role { loop.register(self) }
    if context.channel.isActive { becameActive(context: context) }
  }

  func channelActive(context: ChannelHandlerContext) {
    becameActive(context: context)
    context.fireChannelActive()
  }

  /// The connection's kind in metrics.
  private var kind: String {
    switch role {
    case .downstream(let direction, _, _): direction
    case .upstream(let endpoint): endpoint.expectedIdentity == nil ? "app" : "mesh"
    }
  }
  private var counted = false

  private func becameActive(context: ChannelHandlerContext) {
    guard !counted else { return }
    counted = true
    loop.metrics?.connectionOpened(kind: kind)
    startIdleCheck(context: context)
    // The peer has `handshakeTimeout` (from the TCP connection, before TLS, which the channel
    // is active before) to send its SETTINGS — a caller its preface first — bytes trickled
    // meanwhile buying nothing; and `settingsTimeout` to acknowledge this side's.
    let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
    setupCheck = context.eventLoop.scheduleTask(in: loop.handshakeTimeout) {
      bound.value.checkSetup()
    }
    settingsCheck = context.eventLoop.scheduleTask(in: Self.settingsTimeout) {
      bound.value.checkSettingsAcknowledged()
    }
    switch role {
    case .upstream(let endpoint) where endpoint.expectedIdentity != nil:
      startLivenessCheck(context: context, silences: Self.pingAfterSilence)
    case .downstream(direction: "inbound", _, _):
      startLivenessCheck(context: context, silences: Self.callerPingAfterSilence)
    default:
      break
    }
    if !isServer { output.writeBytes(HTTP2Wire.preface) }
    // This side's SETTINGS, and the connection window opened to its target (stream windows
    // are set by SETTINGS).
    let settings = state.initialSettings
    output.writeFrameHeader(
      length: settings.count * 6, type: FrameType.settings, flags: 0, stream: 0)
    for (id, value) in settings {
      output.writeInteger(id)
      output.writeInteger(value)
    }
    writeWindowUpdate(HTTP2Windows.connection - HTTP2Windows.protocolDefault, on: 0)
    if !isServer {
      // Streams start now: their frames wait in the TLS handler until the handshake is done.
      let pending = waiting
      waiting = []
      for entry in pending { start(entry.call, headers: entry.headers, endStream: entry.endStream) }
    }
    markNeedsFlush()
    loop.flushAll()
  }

  /// How long a peer may take to acknowledge this side's SETTINGS (RFC 9113 §6.5.3).
  static let settingsTimeout = TimeAmount.seconds(10)

  /// The handshake timeout has passed: a peer that has not sent its SETTINGS is gone.
  private func checkSetup() {
    guard !closing, state.awaitingSettings else { return }
    failure = "no HTTP/2 preface and SETTINGS within the handshake timeout"
    closing = true
    acceptsCalls = false
    context?.close(promise: nil)
  }

  private func checkSettingsAcknowledged() {
    guard !closing, !state.settingsAcknowledged else { return }
    fail(
      HTTP2ConnectionError(
        .settingsTimeout,
        "SETTINGS not acknowledged within \(Self.settingsTimeout.nanoseconds / 1_000_000_000) s"))
  }

  func channelInactive(context: ChannelHandlerContext) {
    setupCheck?.cancel()
    settingsCheck?.cancel()
    if counted { loop.metrics?.connectionClosed(kind: kind) }
    acceptsCalls = false
    closing = true
    idleCheck?.cancel()
    liveness?.check?.cancel()
    liveness = nil
    loop.unregister(self)
    connectionLost(reason: failure ?? "connection closed")
    context.fireChannelInactive()
  }

  func errorCaught(context: ChannelHandlerContext, error: any Error) {
    // Remember the first error so calls that die with the connection can say why.
    if failure == nil { failure = describe(error) }
    context.close(promise: nil)
  }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    var buffer = unwrapInboundIn(data)
    if liveness != nil { heardFromPeer() }
    if var pending = unread {
      unread = nil
      pending.writeBuffer(&buffer)
      buffer = pending
    }
    guard !closing else { return }
    do {
      let now = NIODeadline.now()
      while !closing, let frame = try reader.next(from: &buffer) {
        carryOut(try state.receive(frame, now: now))
        if !state.outbox.isEmpty { writeOutbox() }
      }
    } catch let error as HTTP2ConnectionError {
      fail(error)
      return
    } catch {
      fail(HTTP2ConnectionError(.internalError, "\(error)"))
      return
    }
    if buffer.readableBytes > 0 {
      buffer.discardReadBytes()
      unread = buffer
    }
  }

  func channelReadComplete(context: ChannelHandlerContext) {
    loop.flushAll()
    context.fireChannelReadComplete()
  }

  /// The socket took what was waiting (writable), or stopped taking it: while it does not, no
  /// DATA is written to it and no stream credit goes back for what waits here.
  func channelWritabilityChanged(context: ChannelHandlerContext) {
    writable = context.channel.isWritable
    if writable {
      answersWhileUnwritable = 0
      markNeedsFlush()
      unblockAll()
      loop.flushAll()
      if readWanted, !readPaused {
        readWanted = false
        context.read()
      }
    }
    context.fireChannelWritabilityChanged()
  }

  /// Whether the peer is not read: it does not read what it is sent, and control frames for it
  /// are piling up.
  private var readPaused: Bool {
    !writable && answersWhileUnwritable >= Self.maximumPendingAnswers
  }

  func read(context: ChannelHandlerContext) {
    guard !stopsReading else { return }
    guard !readPaused else {
      readWanted = true
      return
    }
    context.read()
  }

  /// Ends the connection for a protocol error: GOAWAY naming the last stream taken, then close.
  private func fail(_ error: HTTP2ConnectionError) {
    guard !closing, let context else { return }
    closing = true
    acceptsCalls = false
    if failure == nil { failure = "HTTP/2 \(error)" }
    writeGoAway(error.code)
    markNeedsFlush()
    flushIfNeeded()
    // Over TLS, the socket itself is closed, past the TLS handler: its orderly shutdown would
    // go on reading (and decrypting) what the peer sends for seconds, waiting for its
    // close_notify. The peer is no longer read, and has `closeGrace` to read the GOAWAY before
    // the socket closes (closing with its unread bytes in the socket sends a TCP reset, which
    // can overtake the GOAWAY).
    let sync = context.pipeline.syncOperations
    guard
      let tls = (try? sync.context(handlerType: NIOSSLServerHandler.self))
        ?? (try? sync.context(handlerType: NIOSSLClientHandler.self))
    else {
      context.close(promise: nil)
      return
    }
    stopsReading = true
    let bound = NIOLoopBound(tls, eventLoop: context.eventLoop)
    context.eventLoop.scheduleTask(in: Self.closeGrace) { bound.value.close(promise: nil) }
  }

  /// How long a peer sent away over TLS has to read the GOAWAY before its socket is closed.
  static let closeGrace = TimeAmount.milliseconds(100)
  /// Set once the connection has failed: the peer is not read again.
  private var stopsReading = false

  // MARK: Frames in

  /// Carries out what a frame of the peer's means for the calls.
  private func carryOut(_ event: HTTP2Connection<StreamCall>.Event) {
    switch event {
    case .none:
      break
    case .data(let stream, let id, let payload, let endStream, let flow):
      stream.call.forwardData(payload, endStream: endStream, flow: flow, from: self, stream: id)
      if endStream, let closed = state.closeIfEnded(id) { completed(id, closed) }
    case .headers(let stream, let id, let headers, let endStream):
      stream.call.forwardHeaders(headers, endStream: endStream, from: self, stream: id)
      if endStream, let closed = state.closeIfEnded(id) { completed(id, closed) }
    case .request(let id, let request, let endStream, let declaredLength):
      startCall(id, request, endStream: endStream, declaredLength: declaredLength)
    case .credit(let id, let flow):
      returnCredit(flow, stream: id)
    case .peerReset(let stream, let id, let code):
      released(stream)
      stream.attachment.call.reset(code, from: self, stream: id)
      stream.attachment.call.closed(on: self, reason: code, stream: id)
      streamRemoved()
    case .streamError(let stream, let id, let code):
      released(stream)
      stream.attachment.call.closed(on: self, reason: code, stream: id)
      streamRemoved()
    case .goAway(let lastStream, let code):
      wentAway(lastStream: lastStream, code: code)
    case .windowsOpened:
      unblockAll()
    case .streamWindowOpened(let id):
      if state.framesWait(on: id) == true { sendQueued(id) }
    }
  }

  /// A new request on an accepted connection: its call is made and routed.
  private func startCall(
    _ id: UInt32, _ request: HTTP2Request, endStream: Bool, declaredLength: Int?
  ) {
    guard case .downstream(let direction, let service, let route) = role else { return }
    lastActive = .now()
    let call = ForwardedCall(downstream: self, stream: id)
    call.metrics = loop.metrics
    call.tracing = loop.tracing
    call.telemetry = loop.telemetry
    // The trace headers are this hop's to rewrite; the route is chosen by what the caller sent.
    var forwarded = request.headers
    call.trace = loop.beginTrace(&forwarded, inbound: direction == "inbound")
    call.direction = direction
    call.method = request.path
    call.service = service ?? Self.host(request.authority)
    call.requestEnded = endStream
    state.open(id, StreamCall(call: call), endStream: endStream, declaredLength: declaredLength)
    // gRPC over HTTP/2: a request that is not gRPC is answered 415, so that an HTTP client is
    // not told 200.
    guard isGRPCContentType(request.contentType) else {
      return Self.answerNotGRPC(call, contentType: request.contentType)
    }
    switch route(request) {
    case .reject(let status, let message, let fault):
      Self.reject(call, status, message, fault: fault)
    case .forward(let endpoint, let pool, let peer, let rewrite):
      rewrite?(&forwarded)
      call.peer = peer
      call.forward(to: endpoint, pool: pool, headers: forwarded, endStream: endStream)
    case .outbound(let plan, let pool, let limit):
      call.limit = limit
      call.forward(plan, pool: pool, headers: forwarded, endStream: endStream)
    }
  }

  /// The host of an `:authority`, without its port.
  private static func host(_ authority: String?) -> String {
    String(authority?.split(separator: ":").first ?? "")
  }

  // The rare answers of `startCall`, kept out of its code.

  @inline(never)
  private static func answerNotGRPC(_ call: ForwardedCall, contentType: String?) {
    call.answer(
      .internalError, "expected content-type application/grpc, got '\(contentType ?? "")'",
      httpStatus: 415)
  }

  @inline(never)
  private static func reject(
    _ call: ForwardedCall, _ status: ProxyStatus, _ message: String, fault: String?
  ) {
    if let fault {
      call.trace?.event(
        "fault_injected", [.string("kind", fault), .int("grpc_status", status.rawValue)])
    }
    call.answer(status, message)
  }

  /// The peer said GOAWAY.
  private func wentAway(lastStream: UInt32, code: H2Error) {
    acceptsCalls = false
    guard !isServer else { return }
    let reason = "\(endpointDescription) went away (\(code))"
    guard code == .noError else {
      // An error ends the connection, whatever streams it names: a peer that has failed
      // might never answer them.
      failure = reason
      closing = true
      context?.close(promise: nil)
      return
    }
    // Streams the peer never processed are answered; those it took finish.
    for (_, stream) in state.removeStreams(above: lastStream) {
      released(stream)
      stream.attachment.call.upstreamFailed(reason)
    }
    streamRemoved()
  }

  // MARK: Streams

  /// A stream is gone: what its window grew by goes back to the loop's budget, and the window
  /// of the data still queued on it to where that came from.
  private func released(_ stream: Stream) {
    loop.returnWindowBudget(stream.window - HTTP2Windows.stream)
    for entry in stream.attachment.queue {
      if case .data(_, _, let flow, let source) = entry, let source {
        stream.attachment.call.handedOn(flow, from: source, connectionCredited: true)
      }
    }
  }

  /// A stream both sides ended is gone.
  private func completed(_ id: UInt32, _ stream: Stream) {
    released(stream)
    stream.attachment.call.closed(on: self, reason: nil, stream: id)
    streamRemoved()
  }

  /// After streams are removed: idle bookkeeping, and a draining connection closes once empty.
  private func streamRemoved() {
    if state.streams.isEmpty {
      lastActive = .now()
      if draining || (!isServer && !acceptsCalls) { closeAfterFlush() }
    }
  }

  /// Ends one stream with RST_STREAM: the call's own reset.
  func resetStream(_ id: UInt32, _ code: H2Error) {
    guard let stream = state.reset(id, code) else { return }
    writeOutbox()
    released(stream)
    stream.attachment.call.closed(on: self, reason: code, stream: id)
    streamRemoved()
  }

  /// Drops a stream whose call has moved on to another attempt: reset if either side may
  /// still send on it, forgotten quietly if both have ended it. The call is not told.
  func abandon(_ id: UInt32) {
    guard let stream = state.abandon(id) else { return }
    writeOutbox()
    released(stream)
    streamRemoved()
  }

  /// A call waiting for this connection to be established has gone elsewhere.
  func cancelWaiting(_ call: ForwardedCall) {
    waiting.removeAll { $0.call === call }
  }

  // MARK: Frames out

  /// Sends HEADERS on a stream (after whatever is already waiting on it).
  func sendHeaders(_ headers: HPACKHeaders, endStream: Bool, on id: UInt32) {
    guard !closing, let waits = state.framesWait(on: id) else { return }
    guard !waits else {
      _ = state.withAttachment(of: id) {
        $0.queue.append(.headers(headers, endStream: endStream))
      }
      return
    }
    writeHeaders(headers, endStream: endStream, on: id)
    if endStream, let closed = state.endedHere(id) { completed(id, closed) }
  }

  /// Sends DATA on a stream as its windows allow; `flow` bytes go back to `source` once it
  /// is out (or dropped).
  func sendData(
    _ data: ByteBuffer, endStream: Bool, on id: UInt32, flow: Int,
    source: ForwardingConnection?, call: ForwardedCall
  ) {
    guard !closing, let waits = state.framesWait(on: id) else {
      if let source { call.handedOn(flow, from: source) }
      return
    }
    let length = data.readableBytes
    guard !waits, writable, state.consumeSendWindow(length, on: id)
    else {
      // It waits here, bounded by the stream window its source was given (no stream credit
      // goes back until it is out), in a buffer of its own rather than a slice that would keep
      // a whole read alive. The source's connection window goes back now: the other streams
      // of the source's connection keep flowing.
      var own = context?.channel.allocator.buffer(capacity: length) ?? ByteBuffer()
      own.writeImmutableBuffer(data)
      _ = state.withAttachment(of: id) {
        $0.queue.append(.data(own, endStream: endStream, flow: flow, source: source))
      }
      if let source { call.queued(flow, from: source) }
      sendQueued(id)
      return
    }
    // The common case: nothing waiting and the windows allow it.
    writeData(data, endStream: endStream, on: id)
    if endStream, let closed = state.endedHere(id) { completed(id, closed) }
    if let source { call.handedOn(flow, from: source) }
  }

  /// Writes what the windows and the socket allow of a stream's queue.
  private func sendQueued(_ id: UInt32) {
    while let stream = state.streams[id], let first = stream.attachment.queue.first {
      guard writable else {
        if !blocked.contains(id) { blocked.append(id) }
        return
      }
      switch first {
      case .headers(let headers, let endStream):
        _ = state.withAttachment(of: id) { $0.queue.removeFirst() }
        writeHeaders(headers, endStream: endStream, on: id)
        if endStream, let closed = state.endedHere(id) {
          completed(id, closed)
          return
        }
      case .data(var data, let endStream, let flow, let source):
        let length = data.readableBytes
        let allowed = state.sendable(on: id)
        if length > allowed || (length > 0 && allowed <= 0) {
          // Send what fits; the rest waits for WINDOW_UPDATE.
          if allowed > 0, state.consumeSendWindow(allowed, on: id) {
            let part = data.readSlice(length: allowed)!
            writeData(part, endStream: false, on: id)
            _ = state.withAttachment(of: id) {
              $0.queue[0] = .data(data, endStream: endStream, flow: flow, source: source)
            }
          }
          if !blocked.contains(id) { blocked.append(id) }
          return
        }
        _ = state.consumeSendWindow(length, on: id)
        _ = state.withAttachment(of: id) { $0.queue.removeFirst() }
        writeData(data, endStream: endStream, on: id)
        if let source {
          stream.attachment.call.handedOn(flow, from: source, connectionCredited: true)
        }
        if endStream, let closed = state.endedHere(id) {
          completed(id, closed)
          return
        }
      }
    }
  }

  private func unblockAll() {
    guard !blocked.isEmpty else { return }
    let waiting = blocked
    blocked = []
    for id in waiting where state.sendWindow > 0 && writable { sendQueued(id) }
    for id in waiting
    where (state.sendWindow <= 0 || !writable) && state.streams[id] != nil
      && !blocked.contains(id)
    {
      blocked.append(id)
    }
  }

  private func writeHeaders(_ headers: HPACKHeaders, endStream: Bool, on id: UInt32) {
    output.writeHeadersFrame(
      headers, endStream: endStream, stream: id, encoder: &state.encoder,
      maxFrameSize: state.peerMaxFrameSize)
    markNeedsFlush()
  }

  private func writeData(_ data: ByteBuffer, endStream: Bool, on id: UInt32) {
    output.writeFrameHeader(
      length: data.readableBytes, type: FrameType.data,
      flags: endStream ? FrameFlag.endStream : 0, stream: id)
    output.writeImmutableBuffer(data)
    markNeedsFlush()
    if output.readableBytes >= Self.outputFlushSize { flushIfNeeded() }
  }

  /// Writes the frames the connection owes the peer.
  private func writeOutbox() {
    guard !state.outbox.isEmpty else { return }
    // The outbox is swapped with an empty one rather than copied, so that neither array's
    // storage is allocated again.
    swap(&spentOutbox, &state.outbox)
    defer { spentOutbox.removeAll(keepingCapacity: true) }
    guard !closing else { return }
    for frame in spentOutbox {
      switch frame {
      case .settingsAck:
        output.writeFrameHeader(
          length: 0, type: FrameType.settings, flags: FrameFlag.ack, stream: 0)
        answered(9)
      case .pingAck(let payload):
        output.writeFrameHeader(length: 8, type: FrameType.ping, flags: FrameFlag.ack, stream: 0)
        output.writeInteger(payload)
        answered(17)
      case .reset(let id, let code):
        writeReset(id, code)
      case .windowUpdate(let id, let increment):
        writeWindowUpdate(increment, on: id)
      }
    }
    markNeedsFlush()
  }

  /// An answer to the peer's own frame was written.
  private func answered(_ bytes: Int) {
    if !writable { answersWhileUnwritable += bytes }
  }

  private func writeReset(_ id: UInt32, _ code: H2Error) {
    guard !closing else { return }
    output.writeFrameHeader(length: 4, type: FrameType.rstStream, flags: 0, stream: id)
    output.writeInteger(code.code)
    answered(13)
    markNeedsFlush()
  }

  private func writeWindowUpdate(_ increment: Int, on id: UInt32) {
    output.writeFrameHeader(length: 4, type: FrameType.windowUpdate, flags: 0, stream: id)
    output.writeInteger(UInt32(increment))
    markNeedsFlush()
  }

  private func writeGoAway(_ code: H2Error) {
    output.writeFrameHeader(length: 8, type: FrameType.goAway, flags: 0, stream: 0)
    output.writeInteger(state.lastStreamSeen)
    output.writeInteger(code.code)
  }

  /// Writes a PING, whose acknowledgement also shows that the peer has read every reset
  /// written before it.
  private func writePing(_ payload: UInt64) {
    output.writeFrameHeader(length: 8, type: FrameType.ping, flags: 0, stream: 0)
    output.writeInteger(payload)
    state.sentPing()
  }

  private func markNeedsFlush() {
    if !needsFlush {
      needsFlush = true
      loop.needsFlush(self)
    }
  }

  /// Writes what waits in `output` — after a PING, if this side has reset streams of the
  /// peer's since its last, whose acknowledgement will show that the peer has read the resets.
  func flushIfNeeded() {
    guard needsFlush else { return }
    needsFlush = false
    guard let context else { return }
    if state.needsPing, !closing { writePing(Self.resetsReadPing) }
    guard output.readableBytes > 0 else { return }
    let chunk = output
    output = context.channel.allocator.buffer(capacity: 1024)
    context.writeAndFlush(wrapOutboundOut(chunk), promise: nil)
  }

  /// Gives `length` bytes of window back to the peer's connection window, once half a window
  /// is owed.
  func returnCredit(_ length: Int) {
    state.returnCredit(length)
    if !state.outbox.isEmpty { writeOutbox() }
  }

  /// Gives `length` bytes back to the connection and, while the peer may still send on it,
  /// to stream `id`.
  func returnCredit(_ length: Int, stream id: UInt32) {
    returnCredit(length)
    returnStreamCredit(length, stream: id)
  }

  /// Gives `length` bytes back to stream `id` only, while the peer may still send on it (see
  /// `HTTP2Connection.returnStreamCredit`: its window grows within the event loop's budget).
  func returnStreamCredit(_ length: Int, stream id: UInt32) {
    let loop = loop
    state.returnStreamCredit(length, on: id) { loop.takeWindowBudget($0) }
    if !state.outbox.isEmpty { writeOutbox() }
  }

  // MARK: Liveness

  /// A peer sidecar behind a cut link sends nothing, and TCP says nothing for minutes: a
  /// pooled mesh connection that has heard nothing for a while sends a PING, and one whose
  /// PING goes unanswered is closed, its calls failing over (or retried) at once. An accepted
  /// one (a caller's sidecar on another host) does the same while it carries calls: a caller
  /// lost with its host would otherwise hold its calls here — a subscription's stream, and
  /// what the app sends into it — for as long as the app keeps them open.
  struct Liveness {
    /// How long the connection may be silent before it is PINGed, with calls and without
    /// (nil: never, when it carries none).
    let silences: (busy: TimeAmount, idle: TimeAmount?)
    var lastHeard = NIODeadline.now()
    var pingSent: NIODeadline?
    /// The PING's time ran out once; the verdict waits for one more pass over the socket.
    var overdue = false
    var check: Scheduled<Void>?
  }
  private var liveness: Liveness?

  /// How long a connection carrying calls may be silent before it is PINGed, and how long an
  /// idle one may.
  static let pingAfterSilence: (busy: TimeAmount, idle: TimeAmount?) = (
    busy: .milliseconds(500), idle: .seconds(10)
  )
  /// The same for an accepted mesh connection: a caller's silence is looked into less
  /// eagerly (its calls' own deadlines and the caller's PINGs watch the rest), and an idle
  /// one is left to the idle timeout.
  static let callerPingAfterSilence: (busy: TimeAmount, idle: TimeAmount?) = (
    busy: .seconds(5), idle: nil
  )
  /// How long a PING may go unanswered.
  static let pingTimeout = TimeAmount.seconds(1)
  /// After that, one more pass of the event loop over its sockets before the connection is
  /// given up: an answer read in it counts.
  static let lastLook = TimeAmount.milliseconds(5)

  private func heardFromPeer() {
    liveness!.lastHeard = .now()
    liveness!.pingSent = nil
    liveness!.overdue = false
  }

  private func startLivenessCheck(
    context: ChannelHandlerContext, silences: (busy: TimeAmount, idle: TimeAmount?)
  ) {
    liveness = Liveness(silences: silences)
    scheduleLivenessCheck(context: context)
  }

  private func scheduleLivenessCheck(context: ChannelHandlerContext) {
    guard let silences = liveness?.silences else { return }
    let halfBusy = TimeAmount.nanoseconds(silences.busy.nanoseconds / 2)
    let wait = state.streams.isEmpty ? silences.idle ?? halfBusy : halfBusy
    liveness?.check = context.eventLoop.assumeIsolated().scheduleTask(in: wait) { [self] in
      checkLiveness(context: context)
    }
  }

  private func checkLiveness(context: ChannelHandlerContext) {
    guard var state = liveness, !closing else { return }
    let now = NIODeadline.now()
    if let sent = state.pingSent {
      if now - sent >= Self.pingTimeout, !state.overdue {
        // This loop may itself have been too busy to read an answer that is already waiting
        // (timers run after the I/O of a long pass): look at the socket once more first.
        state.overdue = true
        liveness = state
        liveness?.check = context.eventLoop.assumeIsolated().scheduleTask(
          in: Self.lastLook
        ) { [self] in checkLiveness(context: context) }
        return
      }
      if state.overdue {
        failure = "no answer to a PING within \(milliseconds(Self.pingTimeout)) ms"
        closing = true
        acceptsCalls = false
        context.close(promise: nil)
        return
      }
    } else {
      let silence = self.state.streams.isEmpty ? state.silences.idle : state.silences.busy
      if let silence, now - state.lastHeard >= silence {
        state.pingSent = now
        writePing(UInt64(now.uptimeNanoseconds))
        markNeedsFlush()
        loop.flushAll()
      }
    }
    liveness = state
    // A PING in flight is checked again when its time is up.
    if let sent = state.pingSent {
      liveness?.check = context.eventLoop.assumeIsolated().scheduleTask(
        deadline: sent + Self.pingTimeout
      ) { [self] in checkLiveness(context: context) }
    } else {
      scheduleLivenessCheck(context: context)
    }
  }

  // MARK: Idleness and draining

  private var idleCheck: RepeatedTask?
  /// Closes an accepted connection that has not sent its preface and SETTINGS in time.
  private var setupCheck: Scheduled<Void>?
  /// Closes a connection whose peer has not acknowledged this side's SETTINGS in time.
  private var settingsCheck: Scheduled<Void>?
  private var lastActive = NIODeadline.now()
  private var draining = false

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
      guard connection.state.streams.isEmpty, connection.waiting.isEmpty,
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

  /// Graceful shutdown of an accepted connection: GOAWAY naming the last stream taken (later
  /// ones are refused and clients retry them elsewhere), the calls in flight finish, then the
  /// connection closes.
  func drain() {
    guard case .downstream = role, !draining, !closing else { return }
    draining = true
    state.refusesStreams = true
    acceptsCalls = false
    writeGoAway(.noError)
    markNeedsFlush()
    flushIfNeeded()
    if state.streams.isEmpty { closeAfterFlush() }
  }

  /// Closes once what has been written so far is out, on the event loop's next turn (this
  /// may be called in the middle of handling a frame).
  private func closeAfterFlush() {
    guard let context else { return }
    let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
    context.eventLoop.execute {
      let connection = bound.value
      connection.flushIfNeeded()
      connection.closing = true
      connection.context?.close(promise: nil)
    }
  }

  // MARK: Upstream: opening streams

  /// Whether a call opened now starts at once (rather than waiting for the connection).
  var isEstablished: Bool { context?.channel.isActive == true }

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
    guard !closing, let id = state.openStream(StreamCall(call: call), endStream: endStream) else {
      acceptsCalls = false
      call.upstreamFailed("connection to \(endpointDescription) is closing")
      return
    }
    call.upstreamStream = id
    lastActive = .now()
    writeHeaders(headers, endStream: endStream, on: id)
    call.releaseHeld()
    // The first call on an idle connection: its liveness is watched closely from now on.
    if state.streams.count == 1, liveness?.pingSent == nil, let context {
      liveness?.check?.cancel()
      scheduleLivenessCheck(context: context)
    }
  }

  /// The connection could not be made: every waiting call is answered.
  func connectFailed(_ error: any Error) {
    acceptsCalls = false
    if failure == nil { failure = describe(error) }
    connectionLost(reason: failure!)
  }

  var endpointDescription: String {
    if case .upstream(let endpoint) = role {
      return endpoint.expectedIdentity.map { "\($0) at \(endpoint)" } ?? "\(endpoint)"
    }
    return "caller"
  }

  var endpointName: String {
    if case .upstream(let endpoint) = role { return "\(endpoint)" }
    return "caller"
  }

  private func connectionLost(reason: String) {
    let pending = waiting
    waiting = []
    for entry in pending {
      entry.call.upstreamFailed("cannot reach \(endpointDescription): \(reason)")
    }
    let open = state.removeAllStreams()
    blocked = []
    for (id, stream) in open {
      released(stream)
      stream.attachment.call.connectionLost(
        self, reason: "connection to \(endpointDescription) lost: \(reason)", stream: id)
    }
    loop.flushAll()
  }
}

/// State shared by the connections of one event loop: the upstream pools, and the
/// connections written to during the current read, flushed together when it completes.
final class LoopState {
  let eventLoop: any EventLoop
  let metrics: SidecarMetrics?
  let tracing: CallTracing?
  let telemetry: LiveTelemetry?
  /// Span and trace ids for this loop's calls.
  var ids = IDGenerator()
  let idleTimeout: TimeAmount
  /// How long an accepted connection may take from TCP to the caller's first SETTINGS: the
  /// TLS handshake, the preface and the SETTINGS frame.
  let handshakeTimeout: TimeAmount
  /// SETTINGS_MAX_CONCURRENT_STREAMS advertised to callers.
  let maxConcurrentStreams: Int
  private var toFlush: [ForwardingConnection] = []
  private var flushing: [ForwardingConnection] = []
  /// What the windows of this loop's streams may grow by in all (`HTTP2Windows.growthBudget`).
  private var windowBudget = HTTP2Windows.growthBudget

  /// Takes `bytes` of the budget for a stream's window to grow by, if there are that many.
  func takeWindowBudget(_ bytes: Int) -> Bool {
    guard windowBudget >= bytes else { return false }
    windowBudget -= bytes
    return true
  }

  func returnWindowBudget(_ bytes: Int) {
    windowBudget += bytes
  }

  init(
    eventLoop: any EventLoop, metrics: SidecarMetrics?, idleTimeout: TimeAmount,
    handshakeTimeout: TimeAmount = .seconds(10),
    maxConcurrentStreams: Int = HTTP2Windows.maxConcurrentStreams, tracing: CallTracing? = nil,
    telemetry: LiveTelemetry? = nil
  ) {
    self.eventLoop = eventLoop
    self.metrics = metrics
    self.tracing = tracing
    self.telemetry = telemetry
    self.idleTimeout = idleTimeout
    self.handshakeTimeout = handshakeTimeout
    self.maxConcurrentStreams = maxConcurrentStreams
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
    // Swapped with a spare rather than copied, so that neither array is allocated again.
    while !toFlush.isEmpty {
      swap(&flushing, &toFlush)
      for connection in flushing { connection.flushIfNeeded() }
      flushing.removeAll(keepingCapacity: true)
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
    return error.connectionErrors.first.map { describe($0.error) } ?? "connection failed"
  default:
    let text = "\(error)"
    if text.contains("Connection refused") { return "connection refused" }
    return text
  }
}

extension HTTP2Connection where Attachment == ForwardingConnection.StreamCall {
  /// Whether frames wait in stream `id`'s queue (nil: there is no such stream), without a copy
  /// of the stream.
  @inline(__always)
  mutating func framesWait(on id: UInt32) -> Bool? {
    guard let index = streams.index(forKey: id) else { return nil }
    return inPlace(index) { !$0.attachment.queue.isEmpty }
  }
}
