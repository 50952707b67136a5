import NIOCore

/// Streams opened, ended and reset by this side; windows spent and given back; the counters
/// behind the limits.
extension HTTP2Connection {
  // MARK: Opening

  /// Opens the peer's stream `id` (a `.request` event's) for `attachment`.
  @_specialize(where Attachment == ForwardingConnection.StreamCall)
  mutating func open(
    _ id: UInt32, _ attachment: Attachment, endStream: Bool, declaredLength: Int?
  ) {
    streams[id] = Stream(
      attachment: attachment, sendWindow: peerInitialWindow, receiveWindow: initialReceiveWindow,
      remoteEnded: endStream, headersReceived: true, declaredLength: declaredLength)
  }

  /// Opens a stream of this side's for `attachment`, its HEADERS about to be sent: its ID, or
  /// nil when the connection has run out of stream IDs.
  @_specialize(where Attachment == ForwardingConnection.StreamCall)
  mutating func openStream(_ attachment: Attachment, endStream: Bool) -> UInt32? {
    let id = nextStreamID
    guard id < UInt32(Int32.max) - 2 else { return nil }
    nextStreamID = id + 2
    streams[id] = Stream(
      attachment: attachment, sendWindow: peerInitialWindow, receiveWindow: initialReceiveWindow,
      localEnded: endStream)
    return id
  }

  /// Changes what is kept with stream `id`.
  @inline(__always)
  mutating func withAttachment<Result>(
    of id: UInt32, _ body: (inout Attachment) -> Result
  ) -> Result? {
    guard let index = streams.index(forKey: id) else { return nil }
    return inPlace(index) { body(&$0.attachment) }
  }

  /// The stream at `index`, for `body` to read or change in place. (Reading a stream out of
  /// the table copies it, its attachment too: the path of every frame reads in place.)
  @inline(__always)
  mutating func inPlace<Result>(
    _ index: [UInt32: Stream].Index, _ body: (inout Stream) throws -> Result
  ) rethrows -> Result {
    try body(&streams.values[index])
  }

  // MARK: Sending

  /// What this side may send on stream `id` now, by both windows (negative when a SETTINGS
  /// frame has shrunk a stream's window below what was already sent).
  @_specialize(where Attachment == ForwardingConnection.StreamCall)
  func sendable(on id: UInt32) -> Int {
    guard let stream = streams[id] else { return 0 }
    return min(stream.sendWindow, sendWindow)
  }

  /// Spends `length` bytes of both send windows on stream `id`, if they allow it.
  @_specialize(where Attachment == ForwardingConnection.StreamCall)
  mutating func consumeSendWindow(_ length: Int, on id: UInt32) -> Bool {
    guard length >= 0, length <= sendWindow, let index = streams.index(forKey: id) else {
      return false
    }
    let spent = inPlace(index) { stream in
      guard length <= stream.sendWindow else { return false }
      stream.sendWindow -= length
      return true
    }
    if spent { sendWindow -= length }
    return spent
  }

  /// This side sent END_STREAM on stream `id`: the stream, now closed, if the peer had ended
  /// it too.
  @_specialize(where Attachment == ForwardingConnection.StreamCall)
  mutating func endedHere(_ id: UInt32) -> Stream? {
    guard let index = streams.index(forKey: id) else { return nil }
    inPlace(index) { $0.localEnded = true }
    return closeIfEnded(at: index)
  }

  /// Closes stream `id` if both sides have ended it: the stream, now gone.
  @_specialize(where Attachment == ForwardingConnection.StreamCall)
  mutating func closeIfEnded(_ id: UInt32) -> Stream? {
    guard let index = streams.index(forKey: id) else { return nil }
    return closeIfEnded(at: index)
  }

  @inline(__always)
  private mutating func closeIfEnded(at index: [UInt32: Stream].Index) -> Stream? {
    guard inPlace(index, { $0.localEnded && $0.remoteEnded }) else { return nil }
    let (id, stream) = streams.remove(at: index)
    completedStreams += 1
    closed.record(id, .completed)
    return stream
  }

  // MARK: Resetting

  /// Resets stream `id` (RST_STREAM `code` goes in the outbox): the stream, now gone.
  @_specialize(where Attachment == ForwardingConnection.StreamCall)
  mutating func reset(_ id: UInt32, _ code: H2Error) -> Stream? {
    guard let stream = streams.removeValue(forKey: id) else { return nil }
    refuse(id, code)
    return stream
  }

  /// Drops stream `id`, whose call has moved on: reset if either side may still send on it,
  /// forgotten quietly if both have ended it (a closed stream takes no RST_STREAM).
  @_specialize(where Attachment == ForwardingConnection.StreamCall)
  mutating func abandon(_ id: UInt32) -> Stream? {
    guard let index = streams.index(forKey: id) else { return nil }
    let stream = streams.remove(at: index).value
    if stream.localEnded && stream.remoteEnded {
      closed.record(id, .completed)
    } else {
      refuse(id, .cancel)
    }
    return stream
  }

  /// Forgets every stream above `lastStream` (the peer said it never processed them).
  mutating func removeStreams(above lastStream: UInt32) -> [(UInt32, Stream)] {
    let gone = streams.filter { $0.key > lastStream }.sorted { $0.key < $1.key }
    for (id, _) in gone { streams.removeValue(forKey: id) }
    return gone
  }

  /// Forgets every stream (the connection is gone).
  mutating func removeAllStreams() -> [(UInt32, Stream)] {
    let gone = streams.sorted { $0.key < $1.key }
    streams = [:]
    return gone
  }

  /// Writes RST_STREAM on stream `id`, which is not (or no longer) open, and remembers it.
  @_specialize(where Attachment == ForwardingConnection.StreamCall)
  mutating func refuse(_ id: UInt32, _ code: H2Error) {
    outbox.append(.reset(id, code))
    if isServer {
      needsPing = true
      closed.record(id, .resetHere(ping: pingsSent + 1))
    } else {
      // What an app sends after a reset is dropped for as long as it comes.
      closed.record(id, .resetHere(ping: .max))
    }
  }

  /// Resets one of the peer's open streams for the peer's error (a stream error it caused),
  /// counted against the reset budget.
  @_specialize(where Attachment == ForwardingConnection.StreamCall)
  mutating func peerError(_ id: UInt32, _ code: H2Error, now: NIODeadline) throws -> Event {
    try countEndedEarly(now: now)
    guard let stream = reset(id, code) else { return .none }
    return .streamError(stream, id, code)
  }

  /// A malformed header block or body (RFC 9113 §8.1.1): a stream error — the peer's, counted
  /// against its reset budget, on an accepted connection.
  @_specialize(where Attachment == ForwardingConnection.StreamCall)
  mutating func malformed(_ id: UInt32, now: NIODeadline) throws -> Event {
    if isServer { return try peerError(id, .protocolError, now: now) }
    guard let stream = reset(id, .protocolError) else { return .none }
    return .streamError(stream, id, .protocolError)
  }

  /// This side sent a PING (a liveness check, or the one `needsPing` asked for).
  mutating func sentPing() {
    pingsSent += 1
    needsPing = false
  }

  // MARK: Credit

  /// Gives `length` bytes back to the peer's connection window, once half a window is owed.
  @_specialize(where Attachment == ForwardingConnection.StreamCall)
  mutating func returnCredit(_ length: Int) {
    connectionCredit += length
    if connectionCredit >= HTTP2Windows.connection / 2 {
      outbox.append(.windowUpdate(0, connectionCredit))
      receiveWindow += connectionCredit
      connectionCredit = 0
    }
  }

  /// Gives `length` bytes back to stream `id` only, while the peer may still send on it. Its
  /// bytes are leaving for a reader that keeps up (credit comes back only as they are written
  /// to a socket that takes them), so its window is doubled each time, up to
  /// `HTTP2Windows.maximumStream`, while `grow` grants it (the event loop's budget for grown
  /// windows): a fast stream gets the window a long round trip needs, and what stalled streams
  /// can hold stays bounded.
  @_specialize(where Attachment == ForwardingConnection.StreamCall)
  mutating func returnStreamCredit(_ length: Int, on id: UInt32, grow: (Int) -> Bool) {
    guard let index = streams.index(forKey: id) else { return }
    let increment = inPlace(index) { stream in
      stream.remoteEnded ? nil : Self.credit(length, &stream, grow: grow)
    }
    if let increment { outbox.append(.windowUpdate(id, increment)) }
  }

  /// Adds `length` to a stream's credit: the WINDOW_UPDATE increment, once half its window is
  /// owed.
  @inline(__always)
  private static func credit(_ length: Int, _ stream: inout Stream, grow: (Int) -> Bool) -> Int? {
    stream.credit += length
    guard stream.credit >= stream.window / 2 else { return nil }
    var increment = stream.credit
    let growth = min(stream.window, HTTP2Windows.maximumStream - stream.window)
    if growth > 0, grow(growth) {
      stream.window += growth
      increment += growth
    }
    stream.receiveWindow += increment
    stream.credit = 0
    return increment
  }

  // MARK: Limits

  /// A stream of the peer's ended early: reset by it, or by this side for its error.
  mutating func countEndedEarly(now: NIODeadline) throws {
    guard isServer else { return }
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

  mutating func countControlFrame(now: NIODeadline) throws {
    if now - controlWindowStart > Self.controlFrameWindow {
      controlWindowStart = now
      controlFrames = 0
    }
    controlFrames += 1
    guard controlFrames <= Self.maximumControlFrames else {
      throw HTTP2ConnectionError(.enhanceYourCalm, "too many PING, SETTINGS or PRIORITY frames")
    }
  }
}
