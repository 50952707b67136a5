import MeshTracing
import NIOCore
import NIOHPACK
import NIOPosix

/// Where a new call goes, decided from its request headers.
enum CallRoute {
  /// Forward to `endpoint` through `pool`, rewriting the request headers on the way.
  case forward(Endpoint, UpstreamPool, rewrite: ((inout HPACKHeaders) -> Void)?)
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
/// is not writable); HEADERS and control frames are, and once `maximumPendingAnswers` of
/// answers to the peer's own frames (PING and SETTINGS acknowledgements, resets of its streams)
/// have been written meanwhile, the peer is not read either until it reads: a peer that floods
/// PINGs or SETTINGS without reading the acknowledgements costs a bounded buffer.
final class ForwardingConnection: ChannelDuplexHandler {
  typealias InboundIn = ByteBuffer
  typealias OutboundIn = ByteBuffer
  typealias OutboundOut = ByteBuffer

  enum Role {
    /// Accepted: calls start here, each asking `route` where it goes. `service` names the
    /// service for metrics (nil: the target named by `:authority`).
    case downstream(direction: String, service: String?, route: (HPACKHeaders) -> CallRoute)
    /// Opened by a pool: calls are forwarded to it.
    case upstream(Endpoint)
  }

  /// One stream of this connection.
  struct Stream {
    let call: ForwardedCall
    /// What this side may still send, by the peer's stream window.
    var sendWindow: Int
    /// What the peer may still send on it.
    var receiveWindow: Int
    /// The window this side keeps open for the peer on it: `HTTP2Windows.stream` at first,
    /// grown while its bytes keep leaving (see `returnStreamCredit`).
    var window = HTTP2Windows.stream
    /// Bytes handed on but not yet given back with a stream WINDOW_UPDATE.
    var credit = 0
    var localEnded = false
    var remoteEnded = false
    /// Frames waiting for the peer's windows, in order.
    var queue: [Queued] = []
    /// Whether the peer's first header block (a request's or a response's) has come; the
    /// next one is trailers.
    var headersReceived = false
    /// The `content-length` the peer declared, and the DATA bytes it has sent.
    var declaredLength: Int?
    var receivedLength = 0
  }

  enum Queued {
    /// `flow` bytes of the source stream's window go back to `source` once the frame is out
    /// (its connection's window went back when the frame was queued).
    case data(ByteBuffer, endStream: Bool, flow: Int, source: ForwardingConnection?)
    case headers(HPACKHeaders, endStream: Bool)
  }

  /// A header block being gathered from HEADERS and CONTINUATION frames.
  private struct PartialHeaders {
    let stream: UInt32
    let endStream: Bool
    var block: ByteBuffer
    var selfDependent = false
    var continuations = 0
  }

  let role: Role
  private let isServer: Bool
  private let loop: LoopState
  private var context: ChannelHandlerContext?
  private var streams: [UInt32: Stream] = [:]

  // Reading.
  private var unread: ByteBuffer?
  private var awaitingPreface: Bool
  private var awaitingSettings = true
  private var partial: PartialHeaders?
  private var decoder: HPACKDecoder
  private var encoder: HPACKEncoder

  // Writing: every frame goes into `output`, written out by `flushIfNeeded`. DATA only while
  // the channel is writable (its socket takes what is written).
  private var output = ByteBuffer()
  private(set) var needsFlush = false
  private var writable = true
  /// Bytes of answers to the peer's own frames written since the channel stopped being
  /// writable.
  private var answersWhileUnwritable = 0
  /// A read the channel asked for while reading was paused.
  private var readWanted = false

  // The peer's settings and windows.
  private var peerInitialWindow = 65_535
  private var peerMaxFrameSize = HTTP2Wire.defaultMaxFrameSize
  /// The peer's SETTINGS_MAX_CONCURRENT_STREAMS (until it says, what its other connections
  /// said, or the mesh's default).
  private(set) var peerStreamLimit: Int
  private var sendWindow = 65_535
  /// Streams with frames waiting for a window.
  private var blocked: [UInt32] = []

  // This side's connection window.
  private var receiveWindow = HTTP2Windows.connection
  /// Whether the peer has acknowledged this side's SETTINGS. Until it has, it may send up to
  /// the protocol's default window on a stream (RFC 9113 §6.9.2), more than
  /// `HTTP2Windows.stream`.
  private var settingsAcknowledged = false
  private var initialReceiveWindow: Int {
    settingsAcknowledged ? HTTP2Windows.stream : HTTP2Windows.protocolDefault
  }
  /// Bytes handed on but not yet given back with a connection WINDOW_UPDATE.
  private var connectionCredit = 0

  /// The highest stream the peer opened (accepted connections).
  private var lastStreamSeen: UInt32 = 0
  // Upstream connections only.
  private var nextStreamID: UInt32 = 1
  /// Calls waiting for the connection to be established.
  private var waiting: [(call: ForwardedCall, headers: HPACKHeaders, endStream: Bool)] = []
  /// False once the connection is closing or has been told to go away.
  private(set) var acceptsCalls = true
  /// Why the connection failed, in words, once it has.
  private var failure: String?
  private var closing = false

  // Rapid-reset defence (accepted connections): the streams that ended early in the current
  // window — reset by the peer, or by this side for the peer's error or over the stream
  // limit — and those that completed.
  private var endedEarly = 0
  private var completedStreams = 0
  private var resetWindowStart = NIODeadline.now()
  /// Streams that may end early in `resetWindow` — beyond which, if they are also more than
  /// twice the streams that completed, the connection is a reset loop (CVE-2023-44487, and
  /// CVE-2025-8671's resets provoked from this side) and is sent away with ENHANCE_YOUR_CALM.
  /// An app that cancels many calls (by deadline, say) while a third of them complete is never
  /// cut.
  static let maximumResets = 200
  static let resetWindow = TimeAmount.seconds(30)
  static let maximumContinuations = 5
  static let maximumHeaderListSize = 16 * 1024
  /// Control frames (PING, SETTINGS, PRIORITY) a peer may send in `controlFrameWindow`; past
  /// that, GOAWAY ENHANCE_YOUR_CALM. Ten times what a gRPC client's keepalive and BDP pings
  /// and a peer sidecar's liveness PINGs add up to.
  static let maximumControlFrames = 1_000
  static let controlFrameWindow = TimeAmount.seconds(10)
  /// Empty DATA frames (no payload, or only padding, and no END_STREAM) a peer may send in a
  /// row — none of which is forwarded; past that, GOAWAY ENHANCE_YOUR_CALM. HEADERS, a DATA
  /// frame with data, and END_STREAM start the count again.
  static let maximumEmptyDataFrames = 16
  /// Bytes of answers to the peer's own frames (acknowledgements, resets) that may be written
  /// to a socket the peer does not read before the peer is not read either. HEADERS are not
  /// counted (calls bound them) nor WINDOW_UPDATE (DATA, which flow control bounds, causes
  /// them), so two sidecars busy with each other never both stop reading.
  static let maximumPendingAnswers = 64 * 1024
  private var controlFrames = 0
  private var controlWindowStart = NIODeadline.now()
  private var emptyDataFrames = 0

  init(role: Role, loop: LoopState, peerStreamLimit: Int = HTTP2Windows.maxConcurrentStreams) {
    self.role = role
    self.loop = loop
    self.peerStreamLimit = peerStreamLimit
    if case .downstream = role { isServer = true } else { isServer = false }
    awaitingPreface = isServer
    let allocator = ByteBufferAllocator()
    decoder = HPACKDecoder(
      allocator: allocator, maxDynamicTableSize: HPACKDecoder.maxDynamicTableSize,
      maxHeaderListSize: Self.maximumHeaderListSize)
    encoder = HPACKEncoder(allocator: allocator, useHuffmanEncoding: false)
  }

  /// Calls using or waiting for this connection.
  var load: Int { streams.count + waiting.count }

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
    if isServer {
      // The caller has `handshakeTimeout` from the TCP connection (before TLS, which the
      // channel is active before) to its first SETTINGS; bytes trickled meanwhile buy nothing.
      let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
      setupCheck = context.eventLoop.scheduleTask(in: loop.handshakeTimeout) {
        let connection = bound.value
        guard connection.awaitingSettings, !connection.closing else { return }
        connection.failure = "no HTTP/2 preface and SETTINGS within the handshake timeout"
        connection.closing = true
        connection.acceptsCalls = false
        connection.context?.close(promise: nil)
      }
    }
    if case .upstream(let endpoint) = role, endpoint.expectedIdentity != nil {
      startLivenessCheck(context: context)
    }
    if !isServer { output.writeBytes(HTTP2Wire.preface) }
    // This side's SETTINGS, and the connection window opened to its target (stream windows
    // are set by SETTINGS).
    var settings: [(UInt16, UInt32)] = [
      (SettingID.maxConcurrentStreams, UInt32(loop.maxConcurrentStreams)),
      (SettingID.initialWindowSize, UInt32(HTTP2Windows.stream)),
      (SettingID.maxHeaderListSize, UInt32(Self.maximumHeaderListSize)),
    ]
    if !isServer { settings.append((SettingID.enablePush, 0)) }
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

  func channelInactive(context: ChannelHandlerContext) {
    setupCheck?.cancel()
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
      try parse(&buffer)
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
    context.close(promise: nil)
  }

  // MARK: Frames in

  private func parse(_ buffer: inout ByteBuffer) throws {
    if awaitingPreface {
      let count = min(buffer.readableBytes, HTTP2Wire.preface.count)
      guard
        buffer.getBytes(at: buffer.readerIndex, length: count)!.elementsEqual(
          HTTP2Wire.preface[..<count])
      else { throw HTTP2ConnectionError(.protocolError, "not an HTTP/2 client preface") }
      guard count == HTTP2Wire.preface.count else { return }
      buffer.moveReaderIndex(forwardBy: count)
      awaitingPreface = false
    }
    while !closing, buffer.readableBytes >= HTTP2Wire.frameHeaderLength {
      let start = buffer.readerIndex
      let word = buffer.getInteger(at: start, as: UInt32.self)!
      let length = Int(word >> 8)
      guard length <= HTTP2Wire.defaultMaxFrameSize else {
        throw HTTP2ConnectionError(.frameSizeError, "frame of \(length) bytes")
      }
      guard buffer.readableBytes >= HTTP2Wire.frameHeaderLength + length else { return }
      let type = UInt8(truncatingIfNeeded: word)
      let flags = buffer.getInteger(at: start + 4, as: UInt8.self)!
      let stream = buffer.getInteger(at: start + 5, as: UInt32.self)! & 0x7FFF_FFFF
      buffer.moveReaderIndex(forwardBy: HTTP2Wire.frameHeaderLength)
      var payload = buffer.readSlice(length: length)!
      try receive(type: type, flags: flags, stream: stream, payload: &payload)
    }
  }

  private func receive(
    type: UInt8, flags: UInt8, stream: UInt32, payload: inout ByteBuffer
  )
    throws
  {
    if awaitingSettings {
      guard type == FrameType.settings, flags & FrameFlag.ack == 0 else {
        throw HTTP2ConnectionError(.protocolError, "the first frame must be SETTINGS")
      }
      awaitingSettings = false
    }
    if let partial, type != FrameType.continuation || stream != partial.stream {
      throw HTTP2ConnectionError(.protocolError, "header block of stream \(partial.stream) cut")
    }
    if type == FrameType.ping || type == FrameType.settings || type == FrameType.priority {
      try countControlFrame()
    }
    switch type {
    case FrameType.data: try receiveData(flags: flags, stream: stream, payload: &payload)
    case FrameType.headers: try receiveHeaders(flags: flags, stream: stream, payload: &payload)
    case FrameType.continuation: try receiveContinuation(flags: flags, payload: &payload)
    case FrameType.rstStream: try receiveReset(stream: stream, payload: payload)
    case FrameType.settings: try receiveSettings(flags: flags, stream: stream, payload: payload)
    case FrameType.ping:
      guard stream == 0 else { throw HTTP2ConnectionError(.protocolError, "PING on a stream") }
      guard payload.readableBytes == 8 else {
        throw HTTP2ConnectionError(.frameSizeError, "PING of \(payload.readableBytes) bytes")
      }
      if flags & FrameFlag.ack == 0 {
        output.writeFrameHeader(length: 8, type: FrameType.ping, flags: FrameFlag.ack, stream: 0)
        output.writeImmutableBuffer(payload)
        answered(17)
        markNeedsFlush()
      }
    case FrameType.goAway: try receiveGoAway(stream: stream, payload: &payload)
    case FrameType.windowUpdate: try receiveWindowUpdate(stream: stream, payload: payload)
    case FrameType.priority:
      guard payload.readableBytes == 5 else {
        throw HTTP2ConnectionError(.frameSizeError, "PRIORITY of \(payload.readableBytes) bytes")
      }
      guard stream != 0 else { throw HTTP2ConnectionError(.protocolError, "PRIORITY on stream 0") }
      if Self.dependency(payload) == stream { try dependsOnItself(stream) }
    case FrameType.pushPromise:
      throw HTTP2ConnectionError(.protocolError, "PUSH_PROMISE, and push is off")
    default:
      break  // Unknown frame types are ignored.
    }
  }

  /// A stream of the peer's ended early: reset by it, or by this side for its error.
  private func countEndedEarly() throws {
    guard isServer else { return }
    let now = NIODeadline.now()
    if now - resetWindowStart > Self.resetWindow {
      resetWindowStart = now
      endedEarly = 0
      completedStreams = 0
    }
    endedEarly += 1
    guard endedEarly <= Self.maximumResets || endedEarly <= 2 * completedStreams else {
      throw HTTP2ConnectionError(.enhanceYourCalm, "too many streams reset")
    }
  }

  private func countControlFrame() throws {
    let now = NIODeadline.now()
    if now - controlWindowStart > Self.controlFrameWindow {
      controlWindowStart = now
      controlFrames = 0
    }
    controlFrames += 1
    guard controlFrames <= Self.maximumControlFrames else {
      throw HTTP2ConnectionError(.enhanceYourCalm, "too many PING, SETTINGS or PRIORITY frames")
    }
  }

  /// Whether `stream` has never been opened (a frame for it, other than HEADERS opening it, is
  /// a protocol error).
  private func isIdle(_ stream: UInt32) -> Bool {
    let peerOpens = isServer == (stream & 1 == 1)
    return peerOpens ? stream > lastStreamSeen : stream >= nextStreamID
  }

  private func receiveData(flags: UInt8, stream id: UInt32, payload: inout ByteBuffer) throws {
    guard id != 0 else { throw HTTP2ConnectionError(.protocolError, "DATA on stream 0") }
    let flow = payload.readableBytes
    receiveWindow -= flow
    guard receiveWindow >= 0 else {
      throw HTTP2ConnectionError(.flowControlError, "the connection window was exceeded")
    }
    if flags & FrameFlag.padded != 0 {
      guard let padding = payload.readInteger(as: UInt8.self),
        Int(padding) <= payload.readableBytes
      else { throw HTTP2ConnectionError(.protocolError, "padding longer than the frame") }
      payload = payload.readSlice(length: payload.readableBytes - Int(padding))!
    }
    let endStream = flags & FrameFlag.endStream != 0
    if payload.readableBytes > 0 || endStream {
      emptyDataFrames = 0
    } else {
      // Nothing to forward (an app may take a run of them for an attack on its connection,
      // which other callers share): dropped, its padding credited, and a run of them ends the
      // connection.
      emptyDataFrames += 1
      guard emptyDataFrames <= Self.maximumEmptyDataFrames else {
        throw HTTP2ConnectionError(.enhanceYourCalm, "too many empty DATA frames")
      }
    }
    guard streams[id] != nil else {
      if isIdle(id) { throw HTTP2ConnectionError(.protocolError, "DATA on idle stream \(id)") }
      returnCredit(flow)  // a stream already closed here: the bytes are dropped
      return
    }
    let call: ForwardedCall
    do {
      var stream = streams[id]!
      guard !stream.remoteEnded else {
        returnCredit(flow)
        try peerError(id, .streamClosed)
        return
      }
      stream.receiveWindow -= flow
      guard stream.receiveWindow >= 0 else {
        returnCredit(flow)
        try peerError(id, .flowControlError)
        return
      }
      stream.receivedLength += payload.readableBytes
      if let declared = stream.declaredLength,
        stream.receivedLength > declared || (endStream && stream.receivedLength != declared)
      {
        returnCredit(flow)
        try malformed(id, "content-length \(declared), DATA \(stream.receivedLength) bytes")
        return
      }
      if endStream { stream.remoteEnded = true }
      call = stream.call
      streams[id] = stream
    }
    guard payload.readableBytes > 0 || endStream else {
      if flow > 0 { returnCredit(flow, stream: id) }
      return
    }
    call.forwardData(payload, endStream: endStream, flow: flow, from: self, stream: id)
    if endStream { closeIfEnded(id) }
  }

  private func receiveHeaders(flags: UInt8, stream id: UInt32, payload: inout ByteBuffer) throws {
    guard id != 0 else { throw HTTP2ConnectionError(.protocolError, "HEADERS on stream 0") }
    emptyDataFrames = 0
    if flags & FrameFlag.padded != 0 {
      guard let padding = payload.readInteger(as: UInt8.self),
        Int(padding) <= payload.readableBytes
      else { throw HTTP2ConnectionError(.protocolError, "padding longer than the frame") }
      payload = payload.readSlice(length: payload.readableBytes - Int(padding))!
    }
    var selfDependent = false
    if flags & FrameFlag.priority != 0 {
      guard let priority = payload.readSlice(length: 5) else {
        throw HTTP2ConnectionError(.frameSizeError, "HEADERS too short for its priority")
      }
      selfDependent = Self.dependency(priority) == id
    }
    let endStream = flags & FrameFlag.endStream != 0
    if flags & FrameFlag.endHeaders != 0 {
      try headersComplete(
        stream: id, endStream: endStream, block: &payload, selfDependent: selfDependent)
    } else {
      partial = PartialHeaders(
        stream: id, endStream: endStream, block: payload, selfDependent: selfDependent)
    }
  }

  /// The stream a PRIORITY frame's or field's 5 bytes name as the dependency.
  private static func dependency(_ priority: ByteBuffer) -> UInt32 {
    priority.getInteger(at: priority.readerIndex, as: UInt32.self)! & 0x7FFF_FFFF
  }

  /// RFC 9113 §5.3.1: a stream that depends on itself is a stream error.
  private func dependsOnItself(_ id: UInt32) throws {
    if streams[id] != nil {
      try peerError(id, .protocolError)
    } else {
      writeReset(id, .protocolError)
      try countEndedEarly()
    }
  }

  private func receiveContinuation(flags: UInt8, payload: inout ByteBuffer) throws {
    guard var block = partial else {
      throw HTTP2ConnectionError(.protocolError, "CONTINUATION without HEADERS")
    }
    partial = nil
    block.continuations += 1
    guard block.continuations <= Self.maximumContinuations else {
      throw HTTP2ConnectionError(.enhanceYourCalm, "a header block in too many CONTINUATIONs")
    }
    block.block.writeBuffer(&payload)
    if flags & FrameFlag.endHeaders != 0 {
      try headersComplete(
        stream: block.stream, endStream: block.endStream, block: &block.block,
        selfDependent: block.selfDependent)
    } else {
      partial = block
    }
  }

  private func headersComplete(
    stream id: UInt32, endStream: Bool, block: inout ByteBuffer, selfDependent: Bool = false
  ) throws {
    // Every block is decoded, even for a stream about to be refused: HPACK state is shared.
    let headers: HPACKHeaders
    do {
      headers = try decoder.decodeHeaders(from: &block)
    } catch is NIOHPACKErrors.MaxHeaderListSizeViolation {
      throw HTTP2ConnectionError(
        .protocolError, "header list over \(Self.maximumHeaderListSize) bytes")
    } catch {
      throw HTTP2ConnectionError(.compressionError, "undecodable header block: \(error)")
    }
    if selfDependent {
      // The stream is opened and closed at once: its id is spent.
      if isServer, id & 1 == 1, id > lastStreamSeen { lastStreamSeen = id }
      try dependsOnItself(id)
      return
    }
    if streams[id] != nil {
      var stream = streams[id]!
      guard !stream.remoteEnded else {
        try peerError(id, .streamClosed)
        return
      }
      // Trailers (or response headers) on an open stream.
      guard endStream || !isServer else {
        try peerError(id, .protocolError)
        return
      }
      var headers = headers
      let block: HTTP2Fields.Block = stream.headersReceived || isServer ? .trailers : .response
      if let problem = HTTP2Fields.malformed(headers, as: block, strict: isServer) {
        try malformed(id, problem)
        return
      }
      if block == .response {
        stream.declaredLength = HTTP2Fields.contentLength(headers)
        guard stream.declaredLength != -1 else {
          try malformed(id, "content-length that is not one number")
          return
        }
      }
      if endStream, let declared = stream.declaredLength, declared != stream.receivedLength {
        try malformed(id, "content-length \(declared), DATA \(stream.receivedLength) bytes")
        return
      }
      // Only the sidecar may say who called, in trailers too.
      if isServer { headers.remove(name: "x-trellis-peer-identity") }
      stream.headersReceived = true
      if endStream { stream.remoteEnded = true }
      streams[id] = stream
      stream.call.forwardHeaders(headers, endStream: endStream, from: self, stream: id)
      if endStream { closeIfEnded(id) }
      return
    }
    guard case .downstream(let direction, let service, let route) = role, id & 1 == 1 else {
      if isIdle(id) { throw HTTP2ConnectionError(.protocolError, "HEADERS on idle stream \(id)") }
      return  // a stream already closed here
    }
    guard id > lastStreamSeen else {
      throw HTTP2ConnectionError(.protocolError, "stream \(id) reopened")
    }
    lastStreamSeen = id
    if draining {
      writeReset(id, .refusedStream)
      return
    }
    guard streams.count < loop.maxConcurrentStreams else {
      // RFC 9113 §5.1.2: a stream over the advertised limit is refused, not the connection.
      writeReset(id, .refusedStream)
      try countEndedEarly()
      return
    }
    let declaredLength = HTTP2Fields.contentLength(headers)
    guard HTTP2Fields.malformed(headers, as: .request, strict: true) == nil, declaredLength != -1,
      !endStream || (declaredLength ?? 0) == 0
    else {
      // RFC 9113 §8.1.1: a malformed request is a stream error.
      writeReset(id, .protocolError)
      try countEndedEarly()
      return
    }
    lastActive = .now()
    let call = ForwardedCall(downstream: self, stream: id)
    call.metrics = loop.metrics
    call.tracing = loop.tracing
    call.telemetry = loop.telemetry
    // The trace headers are this hop's to rewrite; the route is chosen by what the caller sent.
    var forwarded = headers
    call.trace = loop.beginTrace(&forwarded, inbound: direction == "inbound")
    call.direction = direction
    call.method = headers.first(name: ":path") ?? ""
    call.service =
      service ?? String(headers.first(name: ":authority")?.split(separator: ":").first ?? "")
    call.requestEnded = endStream
    streams[id] = Stream(
      call: call, sendWindow: peerInitialWindow, receiveWindow: initialReceiveWindow,
      remoteEnded: endStream, headersReceived: true, declaredLength: declaredLength)
    // gRPC over HTTP/2: a request that is not gRPC is answered 415, so that an HTTP client is
    // not told 200.
    let contentType = headers.first(name: "content-type")
    guard isGRPCContentType(contentType) else {
      call.answer(
        .internalError,
        "expected content-type application/grpc, got '\(contentType ?? "")'", httpStatus: 415)
      return
    }
    switch route(headers) {
    case .reject(let status, let message, let fault):
      if let fault {
        call.trace?.event(
          "fault_injected", [.string("kind", fault), .int("grpc_status", status.rawValue)])
      }
      call.answer(status, message)
    case .forward(let endpoint, let pool, let rewrite):
      rewrite?(&forwarded)
      call.peer = forwarded.first(name: "x-trellis-peer-identity")
      call.forward(to: endpoint, pool: pool, headers: forwarded, endStream: endStream)
    case .outbound(let plan, let pool, let limit):
      call.limit = limit
      call.forward(plan, pool: pool, headers: forwarded, endStream: endStream)
    }
  }

  private func receiveReset(stream id: UInt32, payload: ByteBuffer) throws {
    guard payload.readableBytes == 4 else {
      throw HTTP2ConnectionError(.frameSizeError, "RST_STREAM of \(payload.readableBytes) bytes")
    }
    guard id != 0, !isIdle(id) else {
      throw HTTP2ConnectionError(.protocolError, "RST_STREAM on idle stream \(id)")
    }
    try countEndedEarly()
    let code = H2Error(code: payload.getInteger(at: payload.readerIndex, as: UInt32.self)!)
    guard let stream = removeStream(id) else { return }
    stream.call.reset(code, from: self, stream: id)
    stream.call.closed(on: self, reason: code, stream: id)
    streamRemoved()
  }

  private func receiveSettings(flags: UInt8, stream: UInt32, payload: ByteBuffer) throws {
    guard stream == 0 else { throw HTTP2ConnectionError(.protocolError, "SETTINGS on a stream") }
    if flags & FrameFlag.ack != 0 {
      guard payload.readableBytes == 0 else {
        throw HTTP2ConnectionError(.frameSizeError, "SETTINGS ACK with a payload")
      }
      if !settingsAcknowledged {
        // The peer now holds every stream to this side's initial window, as this side does.
        settingsAcknowledged = true
        let delta = HTTP2Windows.stream - HTTP2Windows.protocolDefault
        for id in Array(streams.keys) { streams[id]!.receiveWindow += delta }
      }
      return
    }
    guard payload.readableBytes % 6 == 0 else {
      throw HTTP2ConnectionError(.frameSizeError, "SETTINGS of \(payload.readableBytes) bytes")
    }
    let initialBefore = peerInitialWindow
    var largestSendWindow: Int?
    var index = payload.readerIndex
    while index < payload.writerIndex {
      let id = payload.getInteger(at: index, as: UInt16.self)!
      let value = payload.getInteger(at: index + 2, as: UInt32.self)!
      index += 6
      switch id {
      case SettingID.headerTableSize:
        try? encoder.setDynamicTableSize(min(Int(value), HPACKEncoder.defaultDynamicTableSize))
      case SettingID.enablePush:
        guard value <= 1 else { throw HTTP2ConnectionError(.protocolError, "ENABLE_PUSH \(value)") }
      case SettingID.maxConcurrentStreams:
        peerStreamLimit = Int(value)
      case SettingID.initialWindowSize:
        guard value <= UInt32(HTTP2Wire.maxWindow) else {
          throw HTTP2ConnectionError(.flowControlError, "INITIAL_WINDOW_SIZE \(value)")
        }
        // Applied to the streams once the whole frame is read (one pass, however many entries);
        // every value on the way must keep the largest stream window within 2^31-1.
        if largestSendWindow == nil { largestSendWindow = streams.values.map(\.sendWindow).max() }
        if let largest = largestSendWindow,
          largest + Int(value) - initialBefore > HTTP2Wire.maxWindow
        {
          throw HTTP2ConnectionError(
            .flowControlError, "INITIAL_WINDOW_SIZE \(value) takes a stream window past 2^31-1")
        }
        peerInitialWindow = Int(value)
      case SettingID.maxFrameSize:
        guard value >= 16_384, value <= 16_777_215 else {
          throw HTTP2ConnectionError(.protocolError, "MAX_FRAME_SIZE \(value)")
        }
        peerMaxFrameSize = Int(value)
      default:
        break  // MAX_HEADER_LIST_SIZE is advisory; unknown settings are ignored.
      }
    }
    let delta = peerInitialWindow - initialBefore
    if delta != 0 {
      for id in Array(streams.keys) { streams[id]!.sendWindow += delta }
      if delta > 0 { unblockAll() }
    }
    output.writeFrameHeader(length: 0, type: FrameType.settings, flags: FrameFlag.ack, stream: 0)
    answered(9)
    markNeedsFlush()
  }

  /// An answer to the peer's own frame was written.
  private func answered(_ bytes: Int) {
    if !writable { answersWhileUnwritable += bytes }
  }

  private func receiveGoAway(stream: UInt32, payload: inout ByteBuffer) throws {
    guard stream == 0 else { throw HTTP2ConnectionError(.protocolError, "GOAWAY on a stream") }
    guard let last = payload.readInteger(as: UInt32.self),
      let code = payload.readInteger(as: UInt32.self)
    else { throw HTTP2ConnectionError(.frameSizeError, "GOAWAY too short") }
    acceptsCalls = false
    let lastStream = last & 0x7FFF_FFFF
    guard !isServer else { return }
    let reason = "\(endpointDescription) went away (\(H2Error(code: code)))"
    guard code == H2Error.noError.code else {
      // An error ends the connection, whatever streams it names: a peer that has failed
      // might never answer them.
      failure = reason
      closing = true
      context?.close(promise: nil)
      return
    }
    // Streams the peer never processed are answered; those it took finish.
    for id in streams.keys.sorted() where id > lastStream {
      if let stream = removeStream(id) { stream.call.upstreamFailed(reason) }
    }
    streamRemoved()
  }

  private func receiveWindowUpdate(stream id: UInt32, payload: ByteBuffer) throws {
    guard payload.readableBytes == 4 else {
      throw HTTP2ConnectionError(.frameSizeError, "WINDOW_UPDATE of \(payload.readableBytes) bytes")
    }
    let increment = Int(payload.getInteger(at: payload.readerIndex, as: UInt32.self)! & 0x7FFF_FFFF)
    if id == 0 {
      guard increment > 0 else {
        throw HTTP2ConnectionError(.protocolError, "WINDOW_UPDATE of 0")
      }
      sendWindow += increment
      guard sendWindow <= HTTP2Wire.maxWindow else {
        throw HTTP2ConnectionError(.flowControlError, "the connection window overflowed")
      }
      unblockAll()
      return
    }
    guard streams[id] != nil else {
      if isIdle(id) {
        throw HTTP2ConnectionError(.protocolError, "WINDOW_UPDATE on idle stream \(id)")
      }
      return
    }
    guard increment > 0 else {
      try peerError(id, .protocolError)
      return
    }
    streams[id]!.sendWindow += increment
    guard streams[id]!.sendWindow <= HTTP2Wire.maxWindow else {
      try peerError(id, .flowControlError)
      return
    }
    if !streams[id]!.queue.isEmpty { sendQueued(id) }
  }

  // MARK: Streams

  /// Removes a stream, giving back the window of the data still queued on it.
  private func removeStream(_ id: UInt32) -> Stream? {
    guard let stream = streams.removeValue(forKey: id) else { return nil }
    forget(stream)
    for entry in stream.queue {
      if case .data(_, _, let flow, let source) = entry, let source {
        stream.call.handedOn(flow, from: source, connectionCredited: true)
      }
    }
    return stream
  }

  /// After streams are removed: idle bookkeeping, and a draining connection closes once empty.
  private func streamRemoved() {
    if streams.isEmpty {
      lastActive = .now()
      if draining || (!isServer && !acceptsCalls) { closeAfterFlush() }
    }
  }

  /// A stream both sides have ended is closed.
  private func closeIfEnded(_ id: UInt32) {
    guard let stream = streams[id], stream.localEnded, stream.remoteEnded else { return }
    streams.removeValue(forKey: id)
    forget(stream)
    completedStreams += 1
    stream.call.closed(on: self, reason: nil, stream: id)
    streamRemoved()
  }

  /// Ends one of the peer's streams for the peer's error (a stream error it caused): counted
  /// against the reset budget.
  private func peerError(_ id: UInt32, _ code: H2Error) throws {
    resetStream(id, code)
    try countEndedEarly()
  }

  /// Ends one stream with RST_STREAM: a stream error, or the call's own reset.
  func resetStream(_ id: UInt32, _ code: H2Error) {
    guard let stream = removeStream(id) else { return }
    writeReset(id, code)
    stream.call.closed(on: self, reason: code, stream: id)
    streamRemoved()
  }

  /// Drops a stream whose call has moved on to another attempt: reset if either side may
  /// still send on it, forgotten quietly if both have ended it (a closed stream takes no
  /// RST_STREAM). The call is not told.
  func abandon(_ id: UInt32) {
    guard let stream = streams[id] else { return }
    if stream.localEnded && stream.remoteEnded {
      _ = removeStream(id)
    } else {
      _ = removeStream(id)
      writeReset(id, .cancel)
    }
    streamRemoved()
  }

  /// A call waiting for this connection to be established has gone elsewhere.
  func cancelWaiting(_ call: ForwardedCall) {
    waiting.removeAll { $0.call === call }
  }

  /// A malformed header block or body on stream `id` (RFC 9113 §8.1.1): a stream error —
  /// the peer's, counted against its reset budget, on an accepted connection.
  private func malformed(_ id: UInt32, _ problem: String) throws {
    if isServer {
      try peerError(id, .protocolError)
    } else {
      resetStream(id, .protocolError)
    }
  }

  // MARK: Frames out

  /// Sends HEADERS on a stream (after whatever is already waiting on it).
  func sendHeaders(_ headers: HPACKHeaders, endStream: Bool, on id: UInt32) {
    guard !closing, var stream = streams[id] else { return }
    guard stream.queue.isEmpty else {
      stream.queue.append(.headers(headers, endStream: endStream))
      streams[id] = stream
      return
    }
    writeHeaders(headers, endStream: endStream, on: id)
    if endStream {
      stream.localEnded = true
      ended(id, stream)
    }
  }

  /// Sends DATA on a stream as its windows allow; `flow` bytes go back to `source` once it
  /// is out (or dropped).
  func sendData(
    _ data: ByteBuffer, endStream: Bool, on id: UInt32, flow: Int,
    source: ForwardingConnection?, call: ForwardedCall
  ) {
    guard !closing, var stream = streams[id] else {
      if let source { call.handedOn(flow, from: source) }
      return
    }
    let length = data.readableBytes
    guard stream.queue.isEmpty, canWrite, length <= stream.sendWindow, length <= sendWindow
    else {
      // It waits here, bounded by the stream window its source was given (no stream credit
      // goes back until it is out), in a buffer of its own rather than a slice that would keep
      // a whole read alive. The source's connection window goes back now: the other streams
      // of the source's connection keep flowing.
      var own = context?.channel.allocator.buffer(capacity: length) ?? ByteBuffer()
      own.writeImmutableBuffer(data)
      stream.queue.append(.data(own, endStream: endStream, flow: flow, source: source))
      streams[id] = stream
      if let source { call.queued(flow, from: source) }
      sendQueued(id)
      return
    }
    // The common case: nothing waiting and the windows allow it.
    stream.sendWindow -= length
    sendWindow -= length
    writeData(data, endStream: endStream, on: id)
    if endStream {
      stream.localEnded = true
      ended(id, stream)
    } else {
      streams[id] = stream
    }
    if let source { call.handedOn(flow, from: source) }
  }

  /// Stores a stream this side has just ended, or closes it if the peer has ended it too.
  private func ended(_ id: UInt32, _ stream: Stream) {
    guard stream.remoteEnded else {
      streams[id] = stream
      return
    }
    streams.removeValue(forKey: id)
    forget(stream)
    completedStreams += 1
    stream.call.closed(on: self, reason: nil, stream: id)
    streamRemoved()
  }

  /// Whether DATA may be written now: the socket takes what it is given. (What one read
  /// forwards is bounded by the read; control frames for a peer that does not read are bounded
  /// by `maximumPendingAnswers`.)
  private var canWrite: Bool { writable }

  /// Writes what the windows and the socket allow of a stream's queue.
  private func sendQueued(_ id: UInt32) {
    while var stream = streams[id], !stream.queue.isEmpty {
      guard canWrite else {
        if !blocked.contains(id) { blocked.append(id) }
        return
      }
      switch stream.queue[0] {
      case .headers(let headers, let endStream):
        stream.queue.removeFirst()
        if endStream { stream.localEnded = true }
        streams[id] = stream
        writeHeaders(headers, endStream: endStream, on: id)
      case .data(var data, let endStream, let flow, let source):
        let length = data.readableBytes
        let allowed = min(stream.sendWindow, sendWindow)
        if length > allowed || (length > 0 && allowed <= 0) {
          // Send what fits; the rest waits for WINDOW_UPDATE.
          if allowed > 0 {
            let part = data.readSlice(length: allowed)!
            writeData(part, endStream: false, on: id)
            stream.sendWindow -= allowed
            sendWindow -= allowed
            stream.queue[0] = .data(data, endStream: endStream, flow: flow, source: source)
          }
          streams[id] = stream
          if !blocked.contains(id) { blocked.append(id) }
          return
        }
        stream.queue.removeFirst()
        stream.sendWindow -= length
        sendWindow -= length
        if endStream { stream.localEnded = true }
        streams[id] = stream
        writeData(data, endStream: endStream, on: id)
        if let source { stream.call.handedOn(flow, from: source, connectionCredited: true) }
      }
    }
    closeIfEnded(id)
  }

  private func unblockAll() {
    guard !blocked.isEmpty else { return }
    let waiting = blocked
    blocked = []
    for id in waiting where sendWindow > 0 && canWrite { sendQueued(id) }
    for id in waiting
    where (sendWindow <= 0 || !canWrite) && streams[id] != nil && !blocked.contains(id) {
      blocked.append(id)
    }
  }

  private func writeHeaders(_ headers: HPACKHeaders, endStream: Bool, on id: UInt32) {
    let start = output.writerIndex
    let endFlag = endStream ? FrameFlag.endStream : 0
    output.writeFrameHeader(
      length: 0, type: FrameType.headers, flags: endFlag | FrameFlag.endHeaders, stream: id)
    do {
      try encoder.encode(headers: headers, to: &output)
    } catch {
      // The encoder fails only on misuse; end the stream rather than send a broken block.
      output.moveWriterIndex(to: start)
      writeReset(id, .internalError)
      return
    }
    let length = output.writerIndex - start - HTTP2Wire.frameHeaderLength
    if length <= peerMaxFrameSize {
      output.setFrameLength(length, at: start)
    } else {
      // Too big for one frame: HEADERS and CONTINUATIONs.
      var block = output.getSlice(at: start + HTTP2Wire.frameHeaderLength, length: length)!
      block = ByteBuffer(buffer: block)
      output.moveWriterIndex(to: start)
      var first = true
      while block.readableBytes > 0 || first {
        let chunk = block.readSlice(length: min(peerMaxFrameSize, block.readableBytes))!
        let last = block.readableBytes == 0
        let flags = (first ? endFlag : 0) | (last ? FrameFlag.endHeaders : 0)
        output.writeFrameHeader(
          length: chunk.readableBytes, type: first ? FrameType.headers : FrameType.continuation,
          flags: flags, stream: id)
        output.writeImmutableBuffer(chunk)
        first = false
      }
    }
    markNeedsFlush()
  }

  private func writeData(_ data: ByteBuffer, endStream: Bool, on id: UInt32) {
    output.writeFrameHeader(
      length: data.readableBytes, type: FrameType.data,
      flags: endStream ? FrameFlag.endStream : 0, stream: id)
    output.writeImmutableBuffer(data)
    markNeedsFlush()
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
    output.writeInteger(lastStreamSeen)
    output.writeInteger(code.code)
  }

  private func markNeedsFlush() {
    if !needsFlush {
      needsFlush = true
      loop.needsFlush(self)
    }
  }

  /// Writes what waits in `output`.
  func flushIfNeeded() {
    guard needsFlush else { return }
    needsFlush = false
    guard let context, output.readableBytes > 0 else { return }
    let chunk = output
    output = context.channel.allocator.buffer(capacity: 1024)
    context.writeAndFlush(wrapOutboundOut(chunk), promise: nil)
  }

  /// Gives `length` bytes of window back to the peer's connection window, once half a window
  /// is owed.
  func returnCredit(_ length: Int) {
    connectionCredit += length
    if connectionCredit >= HTTP2Windows.connection / 2 {
      writeWindowUpdate(connectionCredit, on: 0)
      receiveWindow += connectionCredit
      connectionCredit = 0
    }
  }

  /// Gives `length` bytes back to the connection and, while the peer may still send on it,
  /// to stream `id`.
  func returnCredit(_ length: Int, stream id: UInt32) {
    returnCredit(length)
    returnStreamCredit(length, stream: id)
  }

  /// Gives `length` bytes back to stream `id` only, while the peer may still send on it. Its
  /// bytes are leaving for a reader that keeps up (credit comes back only as they are written
  /// to a socket that takes them), so its window is doubled each time, up to
  /// `HTTP2Windows.maximumStream`, while the event loop's budget for grown windows lasts: a
  /// fast stream gets the window a long round trip needs, and what stalled streams can hold
  /// stays bounded — `HTTP2Windows.stream` each, and the budget between them all.
  func returnStreamCredit(_ length: Int, stream id: UInt32) {
    guard var stream = streams[id], !stream.remoteEnded else { return }
    stream.credit += length
    if stream.credit >= stream.window / 2 {
      var increment = stream.credit
      let growth = min(stream.window, HTTP2Windows.maximumStream - stream.window)
      if growth > 0, loop.takeWindowBudget(growth) {
        stream.window += growth
        increment += growth
      }
      writeWindowUpdate(increment, on: id)
      stream.receiveWindow += increment
      stream.credit = 0
    }
    streams[id] = stream
  }

  /// A stream is gone: what its window grew by goes back to the loop's budget.
  private func forget(_ stream: Stream) {
    loop.returnWindowBudget(stream.window - HTTP2Windows.stream)
  }

  // MARK: Liveness

  /// A peer sidecar behind a cut link sends nothing, and TCP says nothing for minutes: a
  /// pooled mesh connection that has heard nothing for a while sends a PING, and one whose
  /// PING goes unanswered is closed, its calls failing over (or retried) at once.
  struct Liveness {
    var lastHeard = NIODeadline.now()
    var pingSent: NIODeadline?
    /// The PING's time ran out once; the verdict waits for one more pass over the socket.
    var overdue = false
    var check: Scheduled<Void>?
  }
  private var liveness: Liveness?

  /// How long a connection carrying calls may be silent before it is PINGed, and how long an
  /// idle one may.
  static let pingAfterSilence = (busy: TimeAmount.milliseconds(500), idle: TimeAmount.seconds(10))
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

  private func startLivenessCheck(context: ChannelHandlerContext) {
    liveness = Liveness()
    scheduleLivenessCheck(context: context)
  }

  private func scheduleLivenessCheck(context: ChannelHandlerContext) {
    let wait =
      streams.isEmpty
      ? Self.pingAfterSilence.idle : .nanoseconds(Self.pingAfterSilence.busy.nanoseconds / 2)
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
      let silence = streams.isEmpty ? Self.pingAfterSilence.idle : Self.pingAfterSilence.busy
      if now - state.lastHeard >= silence {
        state.pingSent = now
        output.writeFrameHeader(length: 8, type: FrameType.ping, flags: 0, stream: 0)
        output.writeInteger(UInt64(now.uptimeNanoseconds))
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
      guard connection.streams.isEmpty, connection.waiting.isEmpty,
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
    acceptsCalls = false
    writeGoAway(.noError)
    markNeedsFlush()
    flushIfNeeded()
    if streams.isEmpty { closeAfterFlush() }
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
    let id = nextStreamID
    guard id < UInt32(Int32.max) - 2, !closing else {
      acceptsCalls = false
      call.upstreamFailed("connection to \(endpointDescription) is closing")
      return
    }
    nextStreamID = id + 2
    streams[id] = Stream(
      call: call, sendWindow: peerInitialWindow, receiveWindow: initialReceiveWindow,
      localEnded: endStream)
    call.upstreamStream = id
    lastActive = .now()
    writeHeaders(headers, endStream: endStream, on: id)
    call.releaseHeld()
    // The first call on an idle connection: its liveness is watched closely from now on.
    if streams.count == 1, liveness?.pingSent == nil, let context {
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
    let open = streams
    streams = [:]
    blocked = []
    for stream in open.values { forget(stream) }
    for (id, stream) in open.sorted(by: { $0.key < $1.key }) {
      for entry in stream.queue {
        if case .data(_, _, let flow, let source) = entry, let source {
          stream.call.handedOn(flow, from: source, connectionCredited: true)
        }
      }
      stream.call.connectionLost(
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
    while !toFlush.isEmpty {
      let connections = toFlush
      toFlush.removeAll(keepingCapacity: true)
      for connection in connections { connection.flushIfNeeded() }
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
