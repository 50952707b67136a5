import NIOCore
import NIOHPACK
import Testing

@testable import MeshProxy

/// The HTTP/2 core as values: each rule of RFC 9113 and each limit the sidecar holds a peer to,
/// one test each, fed frames as a peer would send them. No sockets, no sleeps: time is passed in.
@Suite struct HTTP2ConnectionTests {
  typealias Connection = HTTP2Connection<Int>
  static let start = NIODeadline.uptimeNanoseconds(1_000_000_000)

  static let request: [(String, String)] = [
    (":method", "POST"), (":scheme", "http"), (":path", "/a.B/C"), (":authority", "b"),
    ("content-type", "application/grpc"), ("te", "trailers"),
  ]

  // MARK: A peer's frames

  /// Frames a peer would send, its own HPACK state included.
  struct Peer {
    var encoder = HPACKEncoder(allocator: ByteBufferAllocator(), useHuffmanEncoding: false)

    func frame(
      _ type: UInt8, _ flags: UInt8 = 0, _ stream: UInt32 = 0, _ payload: [UInt8] = []
    )
      -> HTTP2Frame
    {
      HTTP2Frame(type: type, flags: flags, stream: stream, payload: ByteBuffer(bytes: payload))
    }

    func settings(_ entries: [(UInt16, UInt32)] = []) -> HTTP2Frame {
      var payload = ByteBuffer()
      for (id, value) in entries {
        payload.writeInteger(id)
        payload.writeInteger(value)
      }
      return HTTP2Frame(type: FrameType.settings, flags: 0, stream: 0, payload: payload)
    }

    mutating func headers(
      _ stream: UInt32, _ fields: [(String, String)] = HTTP2ConnectionTests.request,
      endStream: Bool = false, flags extra: UInt8 = FrameFlag.endHeaders, prefix: [UInt8] = []
    ) -> HTTP2Frame {
      var block = ByteBuffer(bytes: prefix)
      try! encoder.encode(headers: HPACKHeaders(fields), to: &block)
      return HTTP2Frame(
        type: FrameType.headers, flags: extra | (endStream ? FrameFlag.endStream : 0),
        stream: stream, payload: block)
    }

    func data(_ stream: UInt32, _ count: Int, endStream: Bool = false) -> HTTP2Frame {
      frame(
        FrameType.data, endStream ? FrameFlag.endStream : 0, stream,
        [UInt8](repeating: 7, count: count))
    }

    func reset(_ stream: UInt32, _ code: H2Error = .cancel) -> HTTP2Frame {
      var payload = ByteBuffer()
      payload.writeInteger(code.code)
      return HTTP2Frame(type: FrameType.rstStream, flags: 0, stream: stream, payload: payload)
    }

    func windowUpdate(_ stream: UInt32, _ increment: UInt32) -> HTTP2Frame {
      var payload = ByteBuffer()
      payload.writeInteger(increment)
      return HTTP2Frame(type: FrameType.windowUpdate, flags: 0, stream: stream, payload: payload)
    }

    func ping(ack: Bool = false, _ value: UInt64 = 42) -> HTTP2Frame {
      var payload = ByteBuffer()
      payload.writeInteger(value)
      return HTTP2Frame(
        type: FrameType.ping, flags: ack ? FrameFlag.ack : 0, stream: 0, payload: payload)
    }

    func priority(_ stream: UInt32, dependsOn: UInt32) -> HTTP2Frame {
      var payload = ByteBuffer()
      payload.writeInteger(dependsOn)
      payload.writeInteger(UInt8(15))
      return HTTP2Frame(type: FrameType.priority, flags: 0, stream: stream, payload: payload)
    }
  }

  /// An accepted connection that has read the peer's SETTINGS (and the peer this side's).
  static func server(
    maxConcurrentStreams: Int = 100, acknowledged: Bool = true
  ) throws -> (Connection, Peer) {
    var connection = Connection(
      isServer: true, maxConcurrentStreams: maxConcurrentStreams, peerStreamLimit: 100,
      now: start)
    let peer = Peer()
    _ = try connection.receive(peer.settings(), now: start)
    if acknowledged {
      _ = try connection.receive(peer.frame(FrameType.settings, FrameFlag.ack), now: start)
    }
    connection.outbox = []
    return (connection, peer)
  }

  /// A pooled connection (this side opens the streams) that has read the peer's SETTINGS.
  static func client() throws -> (Connection, Peer) {
    var connection = Connection(
      isServer: false, maxConcurrentStreams: 100, peerStreamLimit: 100, now: start)
    let peer = Peer()
    _ = try connection.receive(peer.settings(), now: start)
    return (connection, peer)
  }

  /// Opens stream `id` as the handler does on a `.request` event.
  static func open(
    _ id: UInt32, on connection: inout Connection, _ peer: inout Peer, endStream: Bool = false
  ) throws {
    let event = try connection.receive(peer.headers(id, endStream: endStream), now: start)
    guard case .request(let opened, _, let ended, let length) = event else {
      Issue.record("expected a request, got \(event)")
      return
    }
    connection.open(opened, Int(opened), endStream: ended, declaredLength: length)
  }

  func expectStreamError(
    _ event: Connection.Event, _ id: UInt32, _ code: H2Error,
    sourceLocation: SourceLocation = #_sourceLocation
  ) {
    guard case .streamError(_, id, code) = event else {
      Issue.record("expected \(code) on stream \(id), got \(event)", sourceLocation: sourceLocation)
      return
    }
  }

  func connectionError(
    _ code: H2Error, _ body: () throws -> Void, sourceLocation: SourceLocation = #_sourceLocation
  ) {
    do {
      try body()
      Issue.record("no connection error", sourceLocation: sourceLocation)
    } catch let error as HTTP2ConnectionError {
      #expect(error.code == code, "\(error)", sourceLocation: sourceLocation)
    } catch {
      Issue.record("\(error)", sourceLocation: sourceLocation)
    }
  }

  // MARK: Frames

  @Test func theClientPrefaceComesFirstAndMayArriveInPieces() throws {
    var reader = HTTP2FrameReader(expectsPreface: true)
    var buffer = ByteBuffer(bytes: HTTP2Wire.preface.prefix(10))
    #expect(try reader.next(from: &buffer) == nil)
    buffer.writeBytes(HTTP2Wire.preface.dropFirst(10))
    buffer.writeBytes([0, 0, 0, FrameType.settings, 0, 0, 0, 0, 0])
    let frame = try #require(try reader.next(from: &buffer))
    #expect(frame.type == FrameType.settings && frame.payload.readableBytes == 0)

    var wrong = HTTP2FrameReader(expectsPreface: true)
    var http1 = ByteBuffer(string: "GET / HTTP/1.1\r\n")
    connectionError(.protocolError) { _ = try wrong.next(from: &http1) }
  }

  @Test func aFrameStaysBufferedUntilWholeAndNoneIsLargerThan16KiB() throws {
    var reader = HTTP2FrameReader(expectsPreface: false)
    var buffer = ByteBuffer(bytes: [0, 0, 4, FrameType.data, 0, 0, 0, 0, 1, 1, 2])
    #expect(try reader.next(from: &buffer) == nil)
    buffer.writeBytes([3, 4])
    #expect(try reader.next(from: &buffer)?.payload.readableBytes == 4)
    var big = ByteBuffer(bytes: [0, 0x40, 0x01, FrameType.data, 0, 0, 0, 0, 1])
    connectionError(.frameSizeError) { _ = try reader.next(from: &big) }
  }

  // MARK: Settings

  @Test func theFirstFrameMustBeSettings() {
    var connection = Connection(
      isServer: true, maxConcurrentStreams: 10, peerStreamLimit: 10, now: Self.start)
    connectionError(.protocolError) {
      _ = try connection.receive(Peer().ping(), now: Self.start)
    }
  }

  @Test func settingsAreAcknowledgedAndAnAckCarriesNothing() throws {
    var (connection, peer) = try Self.server()
    _ = try connection.receive(
      peer.settings([(SettingID.maxConcurrentStreams, 7)]), now: Self.start)
    #expect(connection.outbox == [.settingsAck])
    #expect(connection.peerStreamLimit == 7)
    connectionError(.frameSizeError) {
      _ = try connection.receive(
        peer.frame(FrameType.settings, FrameFlag.ack, 0, [0, 0, 0, 0, 0, 0]), now: Self.start)
    }
  }

  @Test func settingsValuesOutOfRangeAreConnectionErrors() throws {
    for (id, value, code) in [
      (SettingID.enablePush, UInt32(2), H2Error.protocolError),
      (SettingID.initialWindowSize, UInt32(1) << 31, .flowControlError),
      (SettingID.maxFrameSize, UInt32(16_383), .protocolError),
      (SettingID.maxFrameSize, UInt32(1) << 24, .protocolError),
    ] {
      var (connection, peer) = try Self.server()
      connectionError(code) {
        _ = try connection.receive(peer.settings([(id, value)]), now: Self.start)
      }
    }
  }

  @Test func anInitialWindowChangeMovesEveryOpenStreamsWindow() throws {
    var (connection, peer) = try Self.server()
    try Self.open(1, on: &connection, &peer)
    try Self.open(3, on: &connection, &peer)
    let event = try connection.receive(
      peer.settings([(SettingID.initialWindowSize, 100_000)]), now: Self.start)
    guard case .windowsOpened = event else {
      Issue.record("\(event)")
      return
    }
    #expect(connection.streams[1]?.sendWindow == 100_000)
    #expect(connection.streams[3]?.sendWindow == 100_000)
    _ = try connection.receive(peer.settings([(SettingID.initialWindowSize, 0)]), now: Self.start)
    #expect(connection.streams[3]?.sendWindow == 0)
  }

  @Test func aWindowShrunkBelowWhatWasSentLetsNothingGoUntilItIsPositive() throws {
    var (connection, peer) = try Self.server()
    try Self.open(1, on: &connection, &peer)
    let spent = connection.consumeSendWindow(1_000, on: 1)
    #expect(spent)
    _ = try connection.receive(
      peer.settings([(SettingID.initialWindowSize, 500)]), now: Self.start)
    #expect(connection.sendable(on: 1) == -500)
    let before = connection.sendWindow
    let negative = connection.consumeSendWindow(-500, on: 1)
    let unknown = connection.consumeSendWindow(0, on: 3)
    #expect(!negative && !unknown)
    #expect(connection.sendWindow == before)
    _ = try connection.receive(peer.windowUpdate(1, 600), now: Self.start)
    #expect(connection.sendable(on: 1) == 100)
  }

  @Test func anInitialWindowThatTakesAStreamPastTheMaximumAtAnyStepIsAnError() throws {
    var (connection, peer) = try Self.server()
    try Self.open(1, on: &connection, &peer)
    _ = try connection.receive(
      peer.windowUpdate(1, UInt32(HTTP2Wire.maxWindow - HTTP2Windows.protocolDefault)),
      now: Self.start)
    #expect(connection.streams[1]?.sendWindow == HTTP2Wire.maxWindow)
    // The last value would leave the window where it is; the first one takes it past 2^31-1.
    connectionError(.flowControlError) {
      _ = try connection.receive(
        peer.settings([
          (SettingID.initialWindowSize, 65_536),
          (SettingID.initialWindowSize, UInt32(HTTP2Windows.protocolDefault)),
        ]), now: Self.start)
    }
  }

  @Test func streamsOpenedBeforeOurSettingsAreAcknowledgedGetTheDefaultWindow() throws {
    var (connection, peer) = try Self.server(acknowledged: false)
    try Self.open(1, on: &connection, &peer)
    #expect(connection.streams[1]?.receiveWindow == HTTP2Windows.protocolDefault)
    _ = try connection.receive(peer.frame(FrameType.settings, FrameFlag.ack), now: Self.start)
    #expect(connection.streams[1]?.receiveWindow == HTTP2Windows.stream)
    try Self.open(3, on: &connection, &peer)
    #expect(connection.streams[3]?.receiveWindow == HTTP2Windows.stream)
  }

  // MARK: Control frames

  @Test func aPingIsAnsweredWithItsPayload() throws {
    var (connection, peer) = try Self.server()
    _ = try connection.receive(peer.ping(0xABCD), now: Self.start)
    #expect(connection.outbox == [.pingAck(0xABCD)])
    connectionError(.protocolError) {
      _ = try connection.receive(
        peer.frame(FrameType.ping, 0, 1, [UInt8](repeating: 0, count: 8)), now: Self.start)
    }
    var (other, _) = try Self.server()
    connectionError(.frameSizeError) {
      _ = try other.receive(peer.frame(FrameType.ping, 0, 0, [1, 2, 3]), now: Self.start)
    }
  }

  @Test func aFloodOfControlFramesIsSentAwayButTheSameSpreadOutIsNot() throws {
    var (connection, peer) = try Self.server()
    // The SETTINGS that opened the connection, and its acknowledgement, counted.
    for _ in 2..<Connection.maximumControlFrames {
      _ = try connection.receive(peer.ping(), now: Self.start)
    }
    connectionError(.enhanceYourCalm) { _ = try connection.receive(peer.ping(), now: Self.start) }

    var (spread, _) = try Self.server()
    var now = Self.start
    for _ in 0..<(2 * Connection.maximumControlFrames) {
      now = now + .milliseconds(20)
      _ = try spread.receive(peer.ping(), now: now)
    }
  }

  @Test func priorityOnStreamZeroIsAConnectionErrorAndOnItselfAStreamError() throws {
    var (connection, peer) = try Self.server()
    _ = try connection.receive(peer.priority(5, dependsOn: 3), now: Self.start)
    #expect(connection.outbox.isEmpty)
    try Self.open(1, on: &connection, &peer)
    let event = try connection.receive(peer.priority(1, dependsOn: 1), now: Self.start)
    expectStreamError(event, 1, .protocolError)
    #expect(connection.outbox == [.reset(1, .protocolError)])
    connectionError(.protocolError) {
      _ = try connection.receive(peer.priority(0, dependsOn: 1), now: Self.start)
    }
  }

  @Test func headersThatDependOnTheirOwnStreamAreAStreamError() throws {
    var (connection, peer) = try Self.server()
    let event = try connection.receive(
      peer.headers(1, flags: FrameFlag.endHeaders | FrameFlag.priority, prefix: [0, 0, 0, 1, 9]),
      now: Self.start)
    guard case .none = event else {
      Issue.record("\(event)")
      return
    }
    #expect(connection.outbox == [.reset(1, .protocolError)])
    #expect(connection.streams.isEmpty && connection.lastStreamSeen == 1)
  }

  @Test func pushPromiseIsAnError() throws {
    var (connection, peer) = try Self.server()
    connectionError(.protocolError) {
      _ = try connection.receive(
        peer.frame(FrameType.pushPromise, 4, 1, [0, 0, 0, 2]), now: Self.start)
    }
  }

  // MARK: Streams

  @Test func aRequestOpensAStreamAndItsEndsCloseIt() throws {
    var (connection, peer) = try Self.server()
    try Self.open(1, on: &connection, &peer)
    let event = try connection.receive(peer.data(1, 5, endStream: true), now: Self.start)
    guard case .data(1, 1, let payload, endStream: true, flow: 5) = event else {
      Issue.record("\(event)")
      return
    }
    #expect(payload.readableBytes == 5)
    #expect(connection.closeIfEnded(1) == nil)  // this side has not ended it
    #expect(connection.endedHere(1) != nil)
    #expect(connection.streams.isEmpty && connection.completedStreams == 1)
  }

  @Test func streamsPastTheAdvertisedLimitAreRefusedOneByOne() throws {
    var (connection, peer) = try Self.server(maxConcurrentStreams: 2)
    try Self.open(1, on: &connection, &peer)
    try Self.open(3, on: &connection, &peer)
    let event = try connection.receive(peer.headers(5), now: Self.start)
    guard case .none = event else {
      Issue.record("\(event)")
      return
    }
    #expect(connection.outbox == [.reset(5, .refusedStream)])
    #expect(connection.streams.count == 2)
  }

  @Test func aStreamIDMayNotGoBackwardsNorBeEvenFromAClient() throws {
    var (connection, peer) = try Self.server()
    try Self.open(5, on: &connection, &peer)
    connectionError(.protocolError) { _ = try connection.receive(peer.headers(3), now: Self.start) }
    var (other, otherPeer) = try Self.server()
    connectionError(.protocolError) { _ = try other.receive(otherPeer.headers(2), now: Self.start) }
  }

  @Test func framesOnIdleStreamsAreConnectionErrors() throws {
    for frame in [Peer().data(1, 1), Peer().windowUpdate(1, 1), Peer().reset(1)] {
      var (connection, _) = try Self.server()
      connectionError(.protocolError) { _ = try connection.receive(frame, now: Self.start) }
    }
  }

  @Test func aMalformedRequestIsResetAndCounted() throws {
    var (connection, peer) = try Self.server()
    let event = try connection.receive(
      peer.headers(1, Self.request.filter { $0.0 != ":path" }), now: Self.start)
    guard case .none = event else {
      Issue.record("\(event)")
      return
    }
    #expect(connection.outbox == [.reset(1, .protocolError)])
    #expect(connection.endedEarly == 1)
  }

  @Test func contentLengthMustMatchTheData() throws {
    var (connection, peer) = try Self.server()
    let declared = try connection.receive(
      peer.headers(1, Self.request + [("content-length", "4")]), now: Self.start)
    guard case .request(1, _, _, declaredLength: .some(4)) = declared else {
      Issue.record("\(declared)")
      return
    }
    connection.open(1, 1, endStream: false, declaredLength: 4)
    let event = try connection.receive(peer.data(1, 3, endStream: true), now: Self.start)
    expectStreamError(event, 1, .protocolError)
  }

  @Test func trailersCarryNoPseudoHeaderAndLoseTheCallersIdentity() throws {
    var (connection, peer) = try Self.server()
    try Self.open(1, on: &connection, &peer)
    let event = try connection.receive(
      peer.headers(
        1, [("x-trellis-peer-identity", "spiffe://forged"), ("a", "b")], endStream: true),
      now: Self.start)
    guard case .headers(_, 1, let trailers, endStream: true) = event else {
      Issue.record("\(event)")
      return
    }
    #expect(trailers.first(name: "x-trellis-peer-identity") == nil)
    #expect(trailers.first(name: "a") == "b")

    try Self.open(3, on: &connection, &peer)
    let bad = try connection.receive(
      peer.headers(3, [(":path", "/x")], endStream: true), now: Self.start)
    expectStreamError(bad, 3, .protocolError)
  }

  @Test func aHeaderBlockIsNotCutAndTakesAtMostFiveContinuations() throws {
    var (connection, peer) = try Self.server()
    let first = peer.headers(1, flags: 0)
    _ = try connection.receive(
      HTTP2Frame(
        type: FrameType.headers, flags: 0, stream: 1,
        payload: first.payload.getSlice(at: 0, length: 3)!),
      now: Self.start)
    connectionError(.protocolError) { _ = try connection.receive(peer.ping(), now: Self.start) }

    var (flooded, floodPeer) = try Self.server()
    _ = try flooded.receive(floodPeer.headers(1, flags: 0), now: Self.start)
    for _ in 0..<Connection.maximumContinuations {
      _ = try flooded.receive(peer.frame(FrameType.continuation, 0, 1), now: Self.start)
    }
    connectionError(.enhanceYourCalm) {
      _ = try flooded.receive(peer.frame(FrameType.continuation, 0, 1), now: Self.start)
    }
  }

  @Test func anOversizedHeaderListIsAConnectionError() throws {
    var (connection, peer) = try Self.server()
    let big = Self.request + (0..<20).map { ("x-\($0)", String(repeating: "v", count: 1_000)) }
    connectionError(.protocolError) {
      _ = try connection.receive(peer.headers(1, big), now: Self.start)
    }
  }

  // MARK: Flow control

  @Test func theConnectionWindowBindsThePeer() throws {
    var (connection, peer) = try Self.server(maxConcurrentStreams: 1_000)
    var id: UInt32 = 1
    var sent = 0
    while sent + 16_384 <= HTTP2Windows.connection {
      try Self.open(id, on: &connection, &peer)
      _ = try connection.receive(peer.data(id, 16_384), now: Self.start)
      sent += 16_384
      id += 2
    }
    try Self.open(id, on: &connection, &peer)
    connectionError(.flowControlError) {
      _ = try connection.receive(peer.data(id, 16_384), now: Self.start)
    }
  }

  @Test func aStreamWindowExceededIsAStreamError() throws {
    var (connection, peer) = try Self.server()
    try Self.open(1, on: &connection, &peer)
    _ = try connection.receive(peer.data(1, HTTP2Windows.stream), now: Self.start)
    let event = try connection.receive(peer.data(1, 1), now: Self.start)
    expectStreamError(event, 1, .flowControlError)
  }

  @Test func windowUpdatesOfZeroOrPastTheMaximumAreErrors() throws {
    var (connection, peer) = try Self.server()
    try Self.open(1, on: &connection, &peer)
    guard
      case .streamError(_, 1, .protocolError) = try connection.receive(
        peer.windowUpdate(1, 0), now: Self.start)
    else {
      Issue.record("a WINDOW_UPDATE of 0 on a stream is a stream error")
      return
    }
    connectionError(.protocolError) {
      _ = try connection.receive(peer.windowUpdate(0, 0), now: Self.start)
    }
    var (other, otherPeer) = try Self.server()
    connectionError(.flowControlError) {
      _ = try other.receive(otherPeer.windowUpdate(0, UInt32(HTTP2Wire.maxWindow)), now: Self.start)
    }
  }

  @Test func aStreamsWindowGrowsWhileItsBytesLeaveAndTheBudgetLasts() throws {
    var (connection, peer) = try Self.server()
    try Self.open(1, on: &connection, &peer)
    var budget = HTTP2Windows.stream
    let grow: (Int) -> Bool = { bytes in
      guard budget >= bytes else { return false }
      budget -= bytes
      return true
    }
    connection.returnStreamCredit(HTTP2Windows.stream / 2, on: 1, grow: grow)
    #expect(connection.outbox == [.windowUpdate(1, HTTP2Windows.stream / 2 + HTTP2Windows.stream)])
    #expect(connection.streams[1]?.window == 2 * HTTP2Windows.stream)
    connection.outbox = []
    connection.returnStreamCredit(HTTP2Windows.stream, on: 1, grow: grow)
    // The budget is spent: the credit goes back, the window stays.
    #expect(connection.outbox == [.windowUpdate(1, HTTP2Windows.stream)])
    #expect(connection.streams[1]?.window == 2 * HTTP2Windows.stream)
  }

  @Test func connectionCreditGoesBackOnceHalfAWindowIsOwed() throws {
    var (connection, _) = try Self.server()
    connection.returnCredit(HTTP2Windows.connection / 2 - 1)
    #expect(connection.outbox.isEmpty)
    connection.returnCredit(1)
    #expect(connection.outbox == [.windowUpdate(0, HTTP2Windows.connection / 2)])
  }

  // MARK: Limits

  @Test func emptyDataIsNeverForwardedAndARunOfItIsSentAway() throws {
    var (connection, peer) = try Self.server()
    try Self.open(1, on: &connection, &peer)
    let padded = peer.frame(FrameType.data, FrameFlag.padded, 1, [3, 0, 0, 0])
    guard case .credit(1, flow: 4) = try connection.receive(padded, now: Self.start) else {
      Issue.record("padding-only DATA is credited, not forwarded")
      return
    }
    for _ in 1..<Connection.maximumEmptyDataFrames {
      guard case .none = try connection.receive(peer.data(1, 0), now: Self.start) else {
        Issue.record("empty DATA is not forwarded")
        return
      }
    }
    connectionError(.enhanceYourCalm) {
      _ = try connection.receive(peer.data(1, 0), now: Self.start)
    }
  }

  @Test func paddingLongerThanTheFrameIsAnError() throws {
    var (connection, peer) = try Self.server()
    try Self.open(1, on: &connection, &peer)
    connectionError(.protocolError) {
      _ = try connection.receive(
        peer.frame(FrameType.data, FrameFlag.padded, 1, [5, 0]), now: Self.start)
    }
  }

  @Test func streamsEndedEarlyAreJudgedAgainstThoseThatCompleted() throws {
    // The peer's own resets and the streams this side resets for its errors count alike.
    var (loop, peer) = try Self.server()
    var id: UInt32 = 1
    for index in 0..<Connection.maximumResets {
      try Self.open(id, on: &loop, &peer)
      _ = try loop.receive(
        index.isMultiple(of: 2) ? peer.reset(id) : peer.windowUpdate(id, 0), now: Self.start)
      id += 2
    }
    try Self.open(id, on: &loop, &peer)
    connectionError(.enhanceYourCalm) { _ = try loop.receive(peer.reset(id), now: Self.start) }

    // An app whose calls a third complete cancels as many as it likes.
    var (app, appPeer) = try Self.server()
    id = 1
    for index in 0..<(3 * Connection.maximumResets) {
      try Self.open(id, on: &app, &appPeer, endStream: true)
      if index % 3 == 0 {
        _ = app.endedHere(id)
      } else {
        _ = try app.receive(appPeer.reset(id), now: Self.start)
      }
      id += 2
    }
  }

  @Test func theResetBudgetIsPerWindowOfTime() throws {
    var (connection, peer) = try Self.server()
    var id: UInt32 = 1
    var now = Self.start
    for _ in 0..<(3 * Connection.maximumResets) {
      now = now + .milliseconds(200)
      try Self.open(id, on: &connection, &peer)
      _ = try connection.receive(peer.reset(id), now: now)
      id += 2
    }
  }

  // MARK: Closed streams (RFC 9113 §5.1)

  @Test func framesOnAStreamResetHereAreDroppedUntilThePeerHasSeenTheReset() throws {
    var (connection, peer) = try Self.server()
    try Self.open(1, on: &connection, &peer)
    #expect(connection.reset(1, .cancel) != nil)
    #expect(connection.needsPing)
    connection.outbox = []
    // In flight before the peer read the reset: DATA (its window credited) and a late HEADERS.
    guard case .none = try connection.receive(peer.data(1, 100), now: Self.start),
      case .none = try connection.receive(
        peer.headers(1, [("a", "b")], endStream: true), now: Self.start)
    else {
      Issue.record("frames in flight are dropped")
      return
    }
    #expect(connection.outbox.isEmpty)
    connection.sentPing()
    // An answer to an earlier PING proves nothing; PRIORITY is always allowed.
    _ = try connection.receive(peer.priority(1, dependsOn: 0), now: Self.start)
    _ = try connection.receive(peer.data(1, 1), now: Self.start)
    _ = try connection.receive(peer.ping(ack: true), now: Self.start)
    _ = try connection.receive(peer.priority(1, dependsOn: 0), now: Self.start)
    connectionError(.protocolError) { _ = try connection.receive(peer.data(1, 1), now: Self.start) }
  }

  @Test func anAnswerToAPingSentBeforeTheResetProvesNothing() throws {
    var (connection, peer) = try Self.server()
    try Self.open(1, on: &connection, &peer)
    connection.sentPing()  // a liveness PING, before the reset
    _ = connection.reset(1, .cancel)
    _ = try connection.receive(peer.ping(ack: true), now: Self.start)
    guard case .none = try connection.receive(peer.data(1, 10), now: Self.start) else {
      Issue.record("still dropped")
      return
    }
  }

  @Test func dataAfterThePeersResetOrEndStreamIsStreamClosed() throws {
    var (connection, peer) = try Self.server()
    try Self.open(1, on: &connection, &peer)
    _ = try connection.receive(peer.reset(1), now: Self.start)
    _ = try connection.receive(peer.data(1, 10), now: Self.start)
    #expect(connection.outbox == [.reset(1, .streamClosed)])
    // A late WINDOW_UPDATE is harmless.
    connection.outbox = []
    _ = try connection.receive(peer.windowUpdate(1, 10), now: Self.start)
    #expect(connection.outbox.isEmpty)

    try Self.open(3, on: &connection, &peer, endStream: true)
    let open = try connection.receive(peer.data(3, 1), now: Self.start)
    expectStreamError(open, 3, .streamClosed)

    try Self.open(5, on: &connection, &peer, endStream: true)
    _ = connection.endedHere(5)
    connection.outbox = []
    _ = try connection.receive(peer.data(5, 1), now: Self.start)
    #expect(connection.outbox == [.reset(5, .streamClosed)])
  }

  @Test func whatAnAppSendsAfterAResetIsDroppedForAsLongAsItComes() throws {
    var (connection, peer) = try Self.client()
    let idOpened = connection.openStream(9, endStream: true)
    let id = try #require(idOpened)
    _ = connection.reset(id, .cancel)
    #expect(!connection.needsPing)
    _ = try connection.receive(peer.ping(ack: true), now: Self.start)
    guard
      case .none = try connection.receive(peer.headers(id, [(":status", "200")]), now: Self.start),
      case .none = try connection.receive(peer.data(id, 1), now: Self.start)
    else {
      Issue.record("dropped")
      return
    }
  }

  @Test func theRecordOfClosedStreamsIsBounded() {
    var closed = HTTP2ClosedStreams()
    for id in stride(from: UInt32(1), to: UInt32(4 * HTTP2ClosedStreams.capacity), by: 2) {
      closed.record(id, .completed)
    }
    #expect(closed.count == HTTP2ClosedStreams.capacity)
    #expect(closed.closing(of: 1) == nil)
    #expect(closed.closing(of: UInt32(4 * HTTP2ClosedStreams.capacity - 1)) == .completed)
  }

  // MARK: Pooled connections

  @Test func aGoAwayNamesTheLastStreamThePeerTook() throws {
    var (connection, peer) = try Self.client()
    let firstOpened = connection.openStream(1, endStream: true)
    let first = try #require(firstOpened)
    let secondOpened = connection.openStream(2, endStream: true)
    let second = try #require(secondOpened)
    let event = try connection.receive(
      peer.frame(FrameType.goAway, 0, 0, [0, 0, 0, UInt8(first), 0, 0, 0, 0]), now: Self.start)
    guard case .goAway(lastStream: first, code: .noError) = event else {
      Issue.record("\(event)")
      return
    }
    #expect(connection.removeStreams(above: first).map(\.0) == [second])
    #expect(connection.refusesStreams)
  }
}
