import NIOCore
import NIOHPACK

/// The rules of one HTTP/2 connection (RFC 9113) as a value: its settings and windows, the state
/// of its streams, and the limits a peer is held to.
///
/// Each frame the peer sends is an event (`receive`) that returns what it means for the calls
/// (an `Event`); what the connection must send back on its own account — acknowledgements,
/// resets of the peer's streams, window updates — waits in `outbox`. Each frame this side sends
/// is an event too (`opened`, `consumeSendWindow`, `endedHere`, `returnCredit`). It reads no
/// socket and keeps no timer: the time comes with the events that need it. `ForwardingConnection`
/// carries the events and actions out; `Attachment` is what it keeps with each stream (its
/// call, and the frames waiting for a window). The methods on the forwarding path are
/// specialized for the sidecar's attachment explicitly: left to itself the optimizer kept the
/// larger ones generic, and copying streams through value witnesses cost a quarter of the
/// sidecar's CPU per call (`scripts/bench`).
struct HTTP2Connection<Attachment> {
  /// One open stream.
  struct Stream {
    var attachment: Attachment
    /// What this side may still send on it, by the peer's stream window.
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
    /// Whether the peer's first header block (a request's or a response's) has come; the next
    /// one is trailers.
    var headersReceived = false
    /// The `content-length` the peer declared, and the DATA bytes it has sent.
    var declaredLength: Int?
    var receivedLength = 0
  }

  /// What a frame of the peer's means for the calls.
  enum Event {
    /// Nothing for the calls: handled here, or dropped.
    case none
    /// A new request (accepted connections): `open` it with its call, or refuse it.
    case request(UInt32, HTTP2Request, endStream: Bool, declaredLength: Int?)
    /// A response's headers or trailers on an open stream, checked and cleaned.
    case headers(Attachment, UInt32, HPACKHeaders, endStream: Bool)
    /// DATA with a payload (or END_STREAM) on an open stream; `flow` bytes of window went into
    /// it, to be given back once the data has left.
    case data(Attachment, UInt32, ByteBuffer, endStream: Bool, flow: Int)
    /// An empty DATA frame's padding: `flow` bytes to give back at once.
    case credit(UInt32, flow: Int)
    /// The peer reset an open stream, which is gone.
    case peerReset(Stream, UInt32, H2Error)
    /// This side reset an open stream for the peer's error (the RST_STREAM is in the outbox).
    case streamError(Stream, UInt32, H2Error)
    /// The peer is going away: streams above `lastStream` (this side's) it never processed.
    case goAway(lastStream: UInt32, code: H2Error)
    /// The connection's send window, or every stream's, grew: what waits may go.
    case windowsOpened
    /// One stream's send window grew.
    case streamWindowOpened(UInt32)
  }

  /// A frame this side owes the peer.
  enum ControlFrame: Equatable {
    case settingsAck
    case pingAck(UInt64)
    case reset(UInt32, H2Error)
    case windowUpdate(UInt32, Int)
  }

  /// A header block being gathered from HEADERS and CONTINUATION frames.
  struct PartialHeaders {
    let stream: UInt32
    let endStream: Bool
    var block: ByteBuffer
    var selfDependent = false
    var continuations = 0
  }

  // MARK: Limits

  /// Streams that may end early in `resetWindow` — beyond which, if they are also more than
  /// twice the streams that completed, the connection is a reset loop (CVE-2023-44487, and
  /// CVE-2025-8671's resets provoked from this side) and is sent away with ENHANCE_YOUR_CALM.
  /// An app that cancels many calls (by deadline, say) while a third of them complete is never
  /// cut.
  static var maximumResets: Int { 200 }
  static var resetWindow: TimeAmount { .seconds(30) }
  static var maximumContinuations: Int { 5 }
  static var maximumHeaderListSize: Int { 16 * 1024 }
  /// Control frames (PING, SETTINGS, PRIORITY) a peer may send in `controlFrameWindow`; past
  /// that, GOAWAY ENHANCE_YOUR_CALM. Ten times what a gRPC client's keepalive and BDP pings
  /// and a peer sidecar's liveness PINGs add up to.
  static var maximumControlFrames: Int { 1_000 }
  static var controlFrameWindow: TimeAmount { .seconds(10) }
  /// Empty DATA frames (no payload, or only padding, and no END_STREAM) a peer may send in a
  /// row — none of which is forwarded; past that, GOAWAY ENHANCE_YOUR_CALM. HEADERS, a DATA
  /// frame with data, and END_STREAM start the count again.
  static var maximumEmptyDataFrames: Int { 16 }

  // MARK: State

  /// Whether this side accepted the connection (the peer opens the streams).
  let isServer: Bool
  /// The SETTINGS_MAX_CONCURRENT_STREAMS this side advertises.
  let maxConcurrentStreams: Int
  var streams: [UInt32: Stream] = [:]
  /// Frames owed to the peer, in order, for the connection to write.
  var outbox: [ControlFrame] = []
  /// Set when this side has reset a stream of the peer's since its last PING: a PING is to be
  /// sent, whose acknowledgement shows that the peer has read the reset.
  var needsPing = false

  private(set) var awaitingSettings = true
  private var partial: PartialHeaders?
  private var decoder: HPACKDecoder
  /// Encodes this side's header blocks, within the table size the peer allows.
  var encoder = HPACKWriter()

  // The peer's settings, and the windows.
  private(set) var peerInitialWindow = HTTP2Windows.protocolDefault
  private(set) var peerMaxFrameSize = HTTP2Wire.defaultMaxFrameSize
  /// The peer's SETTINGS_MAX_CONCURRENT_STREAMS (until it says, what was assumed).
  private(set) var peerStreamLimit: Int
  /// What this side may still send on the connection.
  var sendWindow = HTTP2Windows.protocolDefault
  /// What the peer may still send on the connection.
  var receiveWindow = HTTP2Windows.connection
  /// Bytes handed on but not yet given back with a connection WINDOW_UPDATE.
  var connectionCredit = 0
  /// Whether the peer has acknowledged this side's SETTINGS. Until it has, it may send up to
  /// the protocol's default window on a stream (RFC 9113 §6.9.2), more than
  /// `HTTP2Windows.stream`.
  private(set) var settingsAcknowledged = false

  /// The highest stream the peer opened (accepted connections).
  private(set) var lastStreamSeen: UInt32 = 0
  /// The next stream this side opens (pooled connections).
  var nextStreamID: UInt32 = 1
  /// Whether new streams are refused (the connection is going away).
  var refusesStreams = false

  var closed = HTTP2ClosedStreams()
  var pingsSent: UInt64 = 0
  private var pingsAcknowledged: UInt64 = 0

  // Counters for the limits.
  var endedEarly = 0
  var completedStreams = 0
  var resetWindowStart: NIODeadline
  var controlFrames = 0
  var controlWindowStart: NIODeadline
  private var emptyDataFrames = 0

  init(isServer: Bool, maxConcurrentStreams: Int, peerStreamLimit: Int, now: NIODeadline) {
    self.isServer = isServer
    self.maxConcurrentStreams = maxConcurrentStreams
    self.peerStreamLimit = peerStreamLimit
    resetWindowStart = now
    controlWindowStart = now
    let allocator = ByteBufferAllocator()
    decoder = HPACKDecoder(
      allocator: allocator, maxDynamicTableSize: HPACKDecoder.maxDynamicTableSize,
      maxHeaderListSize: Self.maximumHeaderListSize)
  }

  /// The settings this side sends first.
  var initialSettings: [(UInt16, UInt32)] {
    var settings: [(UInt16, UInt32)] = [
      (SettingID.maxConcurrentStreams, UInt32(maxConcurrentStreams)),
      (SettingID.initialWindowSize, UInt32(HTTP2Windows.stream)),
      (SettingID.maxHeaderListSize, UInt32(Self.maximumHeaderListSize)),
    ]
    if !isServer { settings.append((SettingID.enablePush, 0)) }
    return settings
  }

  /// The window a new stream gives the peer.
  var initialReceiveWindow: Int {
    settingsAcknowledged ? HTTP2Windows.stream : HTTP2Windows.protocolDefault
  }

  /// Whether `stream` has never been opened (a frame for it, other than HEADERS opening it, is
  /// a protocol error).
  func isIdle(_ stream: UInt32) -> Bool {
    let peerOpens = isServer == (stream & 1 == 1)
    return peerOpens ? stream > lastStreamSeen : stream >= nextStreamID
  }

  // MARK: Frames in

  /// The peer's frame `frame`, read at `now`. Throws the connection error it is, if it is one.
  @_specialize(where Attachment == ForwardingConnection.StreamCall)
  mutating func receive(_ frame: HTTP2Frame, now: NIODeadline) throws -> Event {
    if awaitingSettings {
      guard frame.type == FrameType.settings, !frame.has(FrameFlag.ack) else {
        throw HTTP2ConnectionError(.protocolError, "the first frame must be SETTINGS")
      }
      awaitingSettings = false
    }
    if let partial, frame.type != FrameType.continuation || frame.stream != partial.stream {
      throw HTTP2ConnectionError(.protocolError, "header block of stream \(partial.stream) cut")
    }
    switch frame.type {
    case FrameType.data: return try receiveData(frame, now: now)
    case FrameType.headers: return try receiveHeaders(frame, now: now)
    case FrameType.continuation: return try receiveContinuation(frame, now: now)
    case FrameType.rstStream: return try receiveReset(frame, now: now)
    case FrameType.settings:
      try countControlFrame(now: now)
      return try receiveSettings(frame)
    case FrameType.ping:
      try countControlFrame(now: now)
      return try receivePing(frame)
    case FrameType.goAway: return try receiveGoAway(frame)
    case FrameType.windowUpdate: return try receiveWindowUpdate(frame, now: now)
    case FrameType.priority:
      try countControlFrame(now: now)
      return try receivePriority(frame, now: now)
    case FrameType.pushPromise:
      throw HTTP2ConnectionError(.protocolError, "PUSH_PROMISE, and push is off")
    default:
      return .none  // Unknown frame types are ignored.
    }
  }

  @_specialize(where Attachment == ForwardingConnection.StreamCall)
  private mutating func receiveData(_ frame: HTTP2Frame, now: NIODeadline) throws -> Event {
    let id = frame.stream
    guard id != 0 else { throw HTTP2ConnectionError(.protocolError, "DATA on stream 0") }
    var payload = frame.payload
    let flow = payload.readableBytes
    receiveWindow -= flow
    guard receiveWindow >= 0 else {
      throw HTTP2ConnectionError(.flowControlError, "the connection window was exceeded")
    }
    if frame.has(FrameFlag.padded) { try Self.removePadding(&payload) }
    let endStream = frame.has(FrameFlag.endStream)
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
    guard let index = streams.index(forKey: id) else {
      if isIdle(id) { throw HTTP2ConnectionError(.protocolError, "DATA on idle stream \(id)") }
      returnCredit(flow)  // the bytes are dropped
      return try notOpen(FrameType.data, id, now: now)
    }
    // In place (by index, no copy of the stream and its attachment per frame).
    switch Self.take(flow: flow, data: payload.readableBytes, endStream, &streams.values[index]) {
    case .accepted:
      break
    case .error(let code):
      returnCredit(flow)
      return code == .protocolError
        ? try malformed(id, now: now) : try peerError(id, code, now: now)
    }
    guard payload.readableBytes > 0 || endStream else {
      return flow > 0 ? .credit(id, flow: flow) : .none
    }
    return .data(inPlace(index) { $0.attachment }, id, payload, endStream: endStream, flow: flow)
  }

  private enum HeadersVerdict {
    case accepted(Attachment)
    /// STREAM_CLOSED, or PROTOCOL_ERROR (a request's HEADERS without END_STREAM).
    case error(H2Error)
    /// RFC 9113 §8.1.1.
    case malformed
  }

  /// Checks a header block that comes on an open stream: trailers, or a response's headers.
  @inline(__always)
  private static func take(
    _ headers: inout HPACKHeaders, _ endStream: Bool, isServer: Bool, _ stream: inout Stream
  ) -> HeadersVerdict {
    guard !stream.remoteEnded else { return .error(.streamClosed) }
    // A request's trailers end it.
    guard endStream || !isServer else { return .error(.protocolError) }
    let kind: HTTP2Fields.Block = stream.headersReceived || isServer ? .trailers : .response
    let inspection = HTTP2Fields.inspect(headers, as: kind, strict: isServer)
    if inspection.problem != nil { return .malformed }
    if kind == .response {
      stream.declaredLength = inspection.contentLength
      guard stream.declaredLength != -1 else { return .malformed }
    }
    if endStream, let declared = stream.declaredLength, declared != stream.receivedLength {
      return .malformed
    }
    // Only the sidecar may say who called, in trailers too.
    if isServer && inspection.carriesPeerIdentity {
      headers.remove(name: "x-trellis-peer-identity")
    }
    stream.headersReceived = true
    if endStream { stream.remoteEnded = true }
    return .accepted(stream.attachment)
  }

  private enum DataVerdict {
    case accepted
    /// STREAM_CLOSED, FLOW_CONTROL_ERROR, or PROTOCOL_ERROR (a content-length the DATA breaks).
    case error(H2Error)
  }

  /// Counts a DATA frame of `flow` bytes (`data` of them payload) against an open stream.
  @inline(__always)
  private static func take(
    flow: Int, data: Int, _ endStream: Bool, _ stream: inout Stream
  ) -> DataVerdict {
    guard !stream.remoteEnded else { return .error(.streamClosed) }
    stream.receiveWindow -= flow
    guard stream.receiveWindow >= 0 else { return .error(.flowControlError) }
    stream.receivedLength += data
    if let declared = stream.declaredLength,
      stream.receivedLength > declared || (endStream && stream.receivedLength != declared)
    {
      return .error(.protocolError)
    }
    if endStream { stream.remoteEnded = true }
    return .accepted
  }

  /// A frame whose payload has a fixed length (RFC 9113 §6): any other is FRAME_SIZE_ERROR.
  private static func expectLength(_ length: Int, of frame: HTTP2Frame, _ name: String) throws {
    guard frame.payload.readableBytes == length else {
      throw HTTP2ConnectionError(
        .frameSizeError, "\(name) of \(frame.payload.readableBytes) bytes")
    }
  }

  private static func removePadding(_ payload: inout ByteBuffer) throws {
    guard let padding = payload.readInteger(as: UInt8.self), Int(padding) <= payload.readableBytes
    else { throw HTTP2ConnectionError(.protocolError, "padding longer than the frame") }
    payload = payload.readSlice(length: payload.readableBytes - Int(padding))!
  }

  @_specialize(where Attachment == ForwardingConnection.StreamCall)
  private mutating func receiveHeaders(_ frame: HTTP2Frame, now: NIODeadline) throws -> Event {
    let id = frame.stream
    guard id != 0 else { throw HTTP2ConnectionError(.protocolError, "HEADERS on stream 0") }
    emptyDataFrames = 0
    var payload = frame.payload
    if frame.has(FrameFlag.padded) { try Self.removePadding(&payload) }
    var selfDependent = false
    if frame.has(FrameFlag.priority) {
      guard let priority = payload.readSlice(length: 5) else {
        throw HTTP2ConnectionError(.frameSizeError, "HEADERS too short for its priority")
      }
      selfDependent = Self.dependency(priority) == id
    }
    let endStream = frame.has(FrameFlag.endStream)
    guard frame.has(FrameFlag.endHeaders) else {
      partial = PartialHeaders(
        stream: id, endStream: endStream, block: payload, selfDependent: selfDependent)
      return .none
    }
    return try headersComplete(
      stream: id, endStream: endStream, block: &payload, selfDependent: selfDependent, now: now)
  }

  /// The stream a PRIORITY frame's or field's 5 bytes name as the dependency.
  private static func dependency(_ priority: ByteBuffer) -> UInt32 {
    priority.getInteger(at: priority.readerIndex, as: UInt32.self)! & 0x7FFF_FFFF
  }

  @_specialize(where Attachment == ForwardingConnection.StreamCall)
  private mutating func receiveContinuation(_ frame: HTTP2Frame, now: NIODeadline) throws -> Event {
    guard var block = partial else {
      throw HTTP2ConnectionError(.protocolError, "CONTINUATION without HEADERS")
    }
    partial = nil
    block.continuations += 1
    guard block.continuations <= Self.maximumContinuations else {
      throw HTTP2ConnectionError(.enhanceYourCalm, "a header block in too many CONTINUATIONs")
    }
    var payload = frame.payload
    block.block.writeBuffer(&payload)
    guard frame.has(FrameFlag.endHeaders) else {
      partial = block
      return .none
    }
    return try headersComplete(
      stream: block.stream, endStream: block.endStream, block: &block.block,
      selfDependent: block.selfDependent, now: now)
  }

  @inline(__always)
  private mutating func headersComplete(
    stream id: UInt32, endStream: Bool, block: inout ByteBuffer, selfDependent: Bool,
    now: NIODeadline
  ) throws -> Event {
    // Every block is decoded, even for a stream about to be refused: HPACK state is shared.
    var headers: HPACKHeaders
    do {
      headers = try decoder.decodeHeaders(from: &block)
    } catch is NIOHPACKErrors.MaxHeaderListSizeViolation {
      throw HTTP2ConnectionError(
        .protocolError, "header list over \(Self.maximumHeaderListSize) bytes")
    } catch {
      throw HTTP2ConnectionError(.compressionError, "undecodable header block: \(error)")
    }
    if selfDependent {
      // RFC 9113 §5.3.1: a stream error. The stream is opened and closed at once: its ID is
      // spent.
      if isServer, id & 1 == 1, id > lastStreamSeen { lastStreamSeen = id }
      return try dependsOnItself(id, now: now)
    }
    if let index = streams.index(forKey: id) {
      // Trailers (or response headers) on an open stream; a request's trailers end it.
      let isServer = isServer
      switch inPlace(index, { Self.take(&headers, endStream, isServer: isServer, &$0) }) {
      case .accepted(let attachment):
        return .headers(attachment, id, headers, endStream: endStream)
      case .error(let code):
        return try peerError(id, code, now: now)
      case .malformed:
        return try malformed(id, now: now)
      }
    }
    guard isServer, id & 1 == 1, id > lastStreamSeen else {
      if isIdle(id) { throw HTTP2ConnectionError(.protocolError, "HEADERS on idle stream \(id)") }
      if isServer, closed.closing(of: id) == nil {
        throw HTTP2ConnectionError(.protocolError, "stream \(id) reopened")
      }
      return try notOpen(FrameType.headers, id, now: now)
    }
    lastStreamSeen = id
    if refusesStreams {
      refuse(id, .refusedStream)
      return .none
    }
    guard streams.count < maxConcurrentStreams else {
      // RFC 9113 §5.1.2: a stream over the advertised limit is refused, not the connection.
      try countEndedEarly(now: now)
      refuse(id, .refusedStream)
      return .none
    }
    let inspection = HTTP2Fields.inspect(headers, as: .request, strict: true)
    let declaredLength = inspection.contentLength
    guard inspection.problem == nil, declaredLength != -1,
      !endStream || (declaredLength ?? 0) == 0
    else {
      // RFC 9113 §8.1.1: a malformed request is a stream error.
      try countEndedEarly(now: now)
      refuse(id, .protocolError)
      return .none
    }
    let request = HTTP2Request(
      headers: headers, path: inspection.path ?? "", authority: inspection.authority,
      contentType: inspection.contentType, carriesPeerIdentity: inspection.carriesPeerIdentity)
    return .request(id, request, endStream: endStream, declaredLength: declaredLength)
  }

  /// RFC 9113 §5.3.1: a stream that depends on itself is a stream error.
  @_specialize(where Attachment == ForwardingConnection.StreamCall)
  private mutating func dependsOnItself(_ id: UInt32, now: NIODeadline) throws -> Event {
    if streams[id] != nil { return try peerError(id, .protocolError, now: now) }
    try countEndedEarly(now: now)
    refuse(id, .protocolError)
    return .none
  }

  @_specialize(where Attachment == ForwardingConnection.StreamCall)
  private mutating func receivePriority(_ frame: HTTP2Frame, now: NIODeadline) throws -> Event {
    try Self.expectLength(5, of: frame, "PRIORITY")
    guard frame.stream != 0 else {
      throw HTTP2ConnectionError(.protocolError, "PRIORITY on stream 0")
    }
    guard Self.dependency(frame.payload) == frame.stream else { return .none }
    return try dependsOnItself(frame.stream, now: now)
  }

  @_specialize(where Attachment == ForwardingConnection.StreamCall)
  private mutating func receiveReset(_ frame: HTTP2Frame, now: NIODeadline) throws -> Event {
    let id = frame.stream
    try Self.expectLength(4, of: frame, "RST_STREAM")
    guard id != 0, !isIdle(id) else {
      throw HTTP2ConnectionError(.protocolError, "RST_STREAM on idle stream \(id)")
    }
    guard streams[id] != nil else { return try notOpen(FrameType.rstStream, id, now: now) }
    try countEndedEarly(now: now)
    let code = H2Error(code: frame.payload.getInteger(at: frame.payload.readerIndex)!)
    let stream = streams.removeValue(forKey: id)!
    closed.record(id, .resetByPeer)
    return .peerReset(stream, id, code)
  }

  @_specialize(where Attachment == ForwardingConnection.StreamCall)
  private mutating func receiveSettings(_ frame: HTTP2Frame) throws -> Event {
    guard frame.stream == 0 else {
      throw HTTP2ConnectionError(.protocolError, "SETTINGS on a stream")
    }
    let payload = frame.payload
    if frame.has(FrameFlag.ack) {
      guard payload.readableBytes == 0 else {
        throw HTTP2ConnectionError(.frameSizeError, "SETTINGS ACK with a payload")
      }
      if !settingsAcknowledged {
        // The peer now holds every stream to this side's initial window, as this side does.
        settingsAcknowledged = true
        let delta = HTTP2Windows.stream - HTTP2Windows.protocolDefault
        for index in streams.values.indices { streams.values[index].receiveWindow += delta }
      }
      return .none
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
        encoder.setTableSize(Int(value))
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
    outbox.append(.settingsAck)
    let delta = peerInitialWindow - initialBefore
    guard delta != 0 else { return .none }
    for index in streams.values.indices { streams.values[index].sendWindow += delta }
    return delta > 0 ? .windowsOpened : .none
  }

  private mutating func receivePing(_ frame: HTTP2Frame) throws -> Event {
    guard frame.stream == 0 else { throw HTTP2ConnectionError(.protocolError, "PING on a stream") }
    try Self.expectLength(8, of: frame, "PING")
    if frame.has(FrameFlag.ack) {
      // Answers come in order; one this side did not ask for acknowledges nothing.
      if pingsAcknowledged < pingsSent { pingsAcknowledged += 1 }
    } else {
      outbox.append(.pingAck(frame.payload.getInteger(at: frame.payload.readerIndex)!))
    }
    return .none
  }

  private mutating func receiveGoAway(_ frame: HTTP2Frame) throws -> Event {
    guard frame.stream == 0 else {
      throw HTTP2ConnectionError(.protocolError, "GOAWAY on a stream")
    }
    var payload = frame.payload
    guard let last = payload.readInteger(as: UInt32.self),
      let code = payload.readInteger(as: UInt32.self)
    else { throw HTTP2ConnectionError(.frameSizeError, "GOAWAY too short") }
    refusesStreams = true
    return .goAway(lastStream: last & 0x7FFF_FFFF, code: H2Error(code: code))
  }

  @_specialize(where Attachment == ForwardingConnection.StreamCall)
  private mutating func receiveWindowUpdate(_ frame: HTTP2Frame, now: NIODeadline) throws -> Event {
    let id = frame.stream
    try Self.expectLength(4, of: frame, "WINDOW_UPDATE")
    let increment = Int(
      frame.payload.getInteger(at: frame.payload.readerIndex, as: UInt32.self)! & 0x7FFF_FFFF)
    if id == 0 {
      guard increment > 0 else { throw HTTP2ConnectionError(.protocolError, "WINDOW_UPDATE of 0") }
      sendWindow += increment
      guard sendWindow <= HTTP2Wire.maxWindow else {
        throw HTTP2ConnectionError(.flowControlError, "the connection window overflowed")
      }
      return .windowsOpened
    }
    guard streams[id] != nil else {
      if isIdle(id) {
        throw HTTP2ConnectionError(.protocolError, "WINDOW_UPDATE on idle stream \(id)")
      }
      return try notOpen(FrameType.windowUpdate, id, now: now)
    }
    guard increment > 0 else { return try peerError(id, .protocolError, now: now) }
    streams[id]!.sendWindow += increment
    guard streams[id]!.sendWindow <= HTTP2Wire.maxWindow else {
      return try peerError(id, .flowControlError, now: now)
    }
    return .streamWindowOpened(id)
  }

  /// A frame on a stream that has been opened and is closed (RFC 9113 §5.1), judged by how it
  /// closed. Its DATA has been credited to the connection already.
  @_specialize(where Attachment == ForwardingConnection.StreamCall)
  private mutating func notOpen(_ type: UInt8, _ id: UInt32, now: NIODeadline) throws -> Event {
    switch closed.closing(of: id) {
    case .resetHere(let ping):
      // The peer may have sent it before it read the reset: dropped, unless the peer has since
      // acknowledged a PING sent after the reset, so had read it.
      guard pingsAcknowledged < ping else {
        throw HTTP2ConnectionError(
          .protocolError, "\(Self.name(type)) on stream \(id) after its reset was acknowledged")
      }
    case .resetByPeer, .completed:
      // Half-closed or closed by the peer: new DATA or HEADERS from it is its error; a late
      // WINDOW_UPDATE or RST_STREAM is harmless.
      if type == FrameType.data || type == FrameType.headers {
        try countEndedEarly(now: now)
        outbox.append(.reset(id, .streamClosed))
      }
    case nil:
      break  // closed long ago: dropped
    }
    return .none
  }

  private static func name(_ type: UInt8) -> String {
    switch type {
    case FrameType.data: "DATA"
    case FrameType.headers: "HEADERS"
    case FrameType.rstStream: "RST_STREAM"
    case FrameType.windowUpdate: "WINDOW_UPDATE"
    default: "frame type \(type)"
    }
  }
}
