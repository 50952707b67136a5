import NIOCore
import NIOEmbedded
import NIOHPACK
import Testing

@testable import MeshProxy

/// `GRPCStreamServer`: one test per rule, a client written frame by frame against it.
@Suite struct GRPCStreamServerTests {
  /// Echoes each message and ends the call with OK when the client has sent all of it.
  final class Echo: GRPCStreamService, GRPCStreamCallHandler {
    var call: GRPCStreamCall?
    var received: [String] = []
    var drainedCount = 0
    var endedCount = 0

    func open(
      path: String, headers: HPACKHeaders, call: GRPCStreamCall
    ) -> (any GRPCStreamCallHandler)? {
      guard path == "/test.Echo/Chat" else { return nil }
      self.call = call
      return self
    }
    func received(_ message: ByteBuffer) {
      received.append(String(buffer: message))
      call?.send(message)
    }
    func receivedEnd() { call?.finish(code: 0) }
    func drained() { drainedCount += 1 }
    func ended() { endedCount += 1 }
  }

  /// The client's side: frames written by hand, the server's read back.
  struct Client {
    let channel: EmbeddedChannel
    var encoder = HPACKEncoder(allocator: ByteBufferAllocator())
    var decoder = HPACKDecoder(
      allocator: ByteBufferAllocator(), maxDynamicTableSize: 4096,
      maxHeaderListSize: 64 * 1024)
    var reader = HTTP2FrameReader(expectsPreface: false)
    var unread = ByteBuffer()

    init(_ server: GRPCStreamServer, settings: [(UInt16, UInt32)] = []) throws {
      channel = EmbeddedChannel(handler: server)
      try channel.connect(to: try SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
      var bytes = ByteBuffer(bytes: HTTP2Wire.preface)
      bytes.writeFrameHeader(
        length: settings.count * 6, type: FrameType.settings, flags: 0, stream: 0)
      for (id, value) in settings {
        bytes.writeInteger(id)
        bytes.writeInteger(value)
      }
      try channel.writeInbound(bytes)
    }

    mutating func request(
      _ stream: UInt32, path: String = "/test.Echo/Chat", contentType: String = "application/grpc",
      extra: [(String, String)] = [], endStream: Bool = false
    ) throws {
      var headers: HPACKHeaders = [
        ":method": "POST", ":scheme": "https", ":path": path, ":authority": "control-plane",
        "content-type": contentType, "te": "trailers",
      ]
      for (name, value) in extra { headers.add(name: name, value: value) }
      var block = ByteBuffer()
      try encoder.encode(headers: headers, to: &block)
      var frame = ByteBuffer()
      frame.writeFrameHeader(
        length: block.readableBytes, type: FrameType.headers,
        flags: FrameFlag.endHeaders | (endStream ? FrameFlag.endStream : 0), stream: stream)
      frame.writeBuffer(&block)
      try channel.writeInbound(frame)
    }

    func data(_ stream: UInt32, _ payload: ByteBuffer, endStream: Bool = false) throws {
      var frame = ByteBuffer()
      frame.writeFrameHeader(
        length: payload.readableBytes, type: FrameType.data,
        flags: endStream ? FrameFlag.endStream : 0, stream: stream)
      var payload = payload
      frame.writeBuffer(&payload)
      try channel.writeInbound(frame)
    }

    func frame(type: UInt8, flags: UInt8 = 0, stream: UInt32 = 0, _ payload: [UInt8]) throws {
      var frame = ByteBuffer()
      frame.writeFrameHeader(length: payload.count, type: type, flags: flags, stream: stream)
      frame.writeBytes(payload)
      try channel.writeInbound(frame)
    }

    /// gRPC messages, each with its 5-byte prefix (`flag` for the first byte).
    static func messages(_ texts: [String], flag: UInt8 = 0) -> ByteBuffer {
      var buffer = ByteBuffer()
      for text in texts {
        buffer.writeInteger(flag)
        buffer.writeInteger(UInt32(text.utf8.count))
        buffer.writeString(text)
      }
      return buffer
    }

    /// Every frame the server wrote since the last call, header blocks decoded.
    mutating func read() throws -> [Frame] {
      while let bytes = try channel.readOutbound(as: ByteBuffer.self) {
        var bytes = bytes
        unread.writeBuffer(&bytes)
      }
      var frames: [Frame] = []
      // A header block in HEADERS and CONTINUATIONs is decoded once whole, on its HEADERS.
      var block: (index: Int, bytes: ByteBuffer)?
      while let frame = try reader.next(from: &unread) {
        var payload = frame.payload
        frames.append(
          Frame(type: frame.type, flags: frame.flags, stream: frame.stream, payload: payload))
        if frame.type == FrameType.headers || frame.type == FrameType.continuation {
          var gathered = block?.bytes ?? ByteBuffer()
          gathered.writeBuffer(&payload)
          block = (block?.index ?? frames.count - 1, gathered)
          if frame.flags & FrameFlag.endHeaders != 0, var whole = block?.bytes {
            frames[block!.index].headers = try decoder.decodeHeaders(from: &whole)
            block = nil
          }
        }
      }
      return frames
    }
  }

  struct Frame {
    var type: UInt8
    var flags: UInt8
    var stream: UInt32
    var payload: ByteBuffer
    var headers: HPACKHeaders?

    var status: String? { headers?.first(name: "grpc-status") }
    var endsStream: Bool { flags & FrameFlag.endStream != 0 }
  }

  @Test func aCallGetsItsMessagesBackThenTrailers() throws {
    let echo = Echo()
    var client = try Client(GRPCStreamServer(service: echo))
    // Its SETTINGS and connection window, then the acknowledgement of the client's SETTINGS.
    let start = try client.read()
    #expect(start.map(\.type) == [FrameType.settings, FrameType.windowUpdate, FrameType.settings])
    #expect(start.map(\.flags) == [0, 0, FrameFlag.ack])
    try client.request(1)
    // Two messages, cut across three DATA frames.
    var messages = Client.messages(["hello", "world!"])
    try client.data(1, messages.readSlice(length: 3)!)
    try client.data(1, messages.readSlice(length: 7)!)
    try client.data(1, messages, endStream: true)
    #expect(echo.received == ["hello", "world!"])
    let frames = try client.read().filter { $0.stream == 1 }
    #expect(frames.first?.headers?.first(name: ":status") == "200")
    var echoed = ByteBuffer()
    for var frame in frames where frame.type == FrameType.data {
      echoed.writeBuffer(&frame.payload)
    }
    #expect(echoed == Client.messages(["hello", "world!"]))
    #expect(frames.last?.status == "0")
    #expect(frames.last?.endsStream == true)
    #expect(echo.endedCount == 1)
  }

  @Test func aMethodNotServedIsUnimplemented() throws {
    var client = try Client(GRPCStreamServer(service: Echo()))
    try client.request(1, path: "/test.Echo/Other", endStream: true)
    let answer = try #require(try client.read().last)
    #expect(answer.headers?.first(name: ":status") == "200")
    #expect(answer.status == "12")
    #expect(answer.headers?.first(name: "grpc-message") == "/test.Echo/Other is not served here")
    #expect(answer.endsStream)
  }

  @Test func trailersOverOneFrameGoInContinuations() throws {
    var client = try Client(GRPCStreamServer(service: Echo()))
    // Its name, percent-encoded in grpc-message, takes three bytes a character.
    let path = "/" + String(repeating: "%", count: 6_000)
    try client.request(1, path: path, endStream: true)
    let frames = try client.read().filter { $0.stream == 1 }
    #expect(frames.map(\.type) == [FrameType.headers, FrameType.continuation])
    #expect(frames.allSatisfy { $0.payload.readableBytes <= HTTP2Wire.defaultMaxFrameSize })
    #expect(frames.map { $0.flags & FrameFlag.endHeaders } == [0, FrameFlag.endHeaders])
    #expect(frames[0].endsStream && !frames[1].endsStream)
    #expect(frames[0].status == "12")
    let message = try #require(frames[0].headers?.first(name: "grpc-message"))
    #expect(message == "/" + String(repeating: "%25", count: 6_000) + " is not served here")
  }

  @Test func aRequestThatIsNotGRPCIsRefusedWith415() throws {
    var client = try Client(GRPCStreamServer(service: Echo()))
    try client.request(1, contentType: "application/json", endStream: true)
    let answer = try #require(try client.read().last)
    #expect(answer.headers?.first(name: ":status") == "415")
  }

  @Test func aMessageOverTheLimitEndsItsCall() throws {
    let echo = Echo()
    var client = try Client(GRPCStreamServer(service: echo, maximumMessage: 8))
    try client.request(1)
    try client.data(1, Client.messages(["a message of many bytes"]))
    let frames = try client.read().filter { $0.stream == 1 }
    #expect(frames.first?.status == "8")
    #expect(echo.received.isEmpty)
    #expect(echo.endedCount == 1)
    // The peer had not ended its side: the stream is reset with NO_ERROR after the trailers.
    #expect(frames.last?.type == FrameType.rstStream)
    #expect(frames.last.map { Array(buffer: $0.payload) } == [0, 0, 0, 0])
  }

  @Test func aCompressedMessageIsRefused() throws {
    let echo = Echo()
    var client = try Client(GRPCStreamServer(service: echo))
    try client.request(1)
    try client.data(1, Client.messages(["zipped"], flag: 1))
    let frames = try client.read()
    #expect(frames.contains { $0.status == "12" })
    #expect(echo.received.isEmpty)
  }

  @Test func aCallEndsAtItsDeadline() throws {
    let echo = Echo()
    var client = try Client(GRPCStreamServer(service: echo))
    try client.request(1, extra: [("grpc-timeout", "2S")])
    _ = try client.read()
    client.channel.embeddedEventLoop.advanceTime(by: .seconds(1))
    #expect(try client.read().isEmpty)
    client.channel.embeddedEventLoop.advanceTime(by: .seconds(1))
    let frames = try client.read()
    #expect(frames.contains { $0.status == "4" })
    #expect(echo.endedCount == 1)
  }

  @Test func messagesWaitForThePeersWindowThenDrainedIsTold() throws {
    let echo = Echo()
    // The client's streams take 10 bytes until it says more.
    var client = try Client(
      GRPCStreamServer(service: echo), settings: [(SettingID.initialWindowSize, 10)])
    try client.request(1)
    try client.data(1, Client.messages(["twenty bytes of text"]))
    let first = try client.read().filter { $0.type == FrameType.data }
    #expect(first.map(\.payload.readableBytes) == [10])
    #expect(echo.call?.isBlocked == true)
    #expect(echo.drainedCount == 0)
    // WINDOW_UPDATE on the stream: the rest goes, and the handler hears it has.
    try client.frame(type: FrameType.windowUpdate, stream: 1, [0, 0, 0, 100])
    let rest = try client.read().filter { $0.type == FrameType.data }
    #expect(rest.map(\.payload.readableBytes) == [15])
    #expect(echo.call?.isBlocked == false)
    #expect(echo.drainedCount == 1)
  }

  @Test func aPeerThatDoesNotReadBlocksSendsUntilTheSocketDrains() throws {
    let echo = Echo()
    var client = try Client(GRPCStreamServer(service: echo))
    try client.request(1)
    _ = try client.read()
    #expect(echo.call?.isBlocked == false)
    // The socket's buffer is full (the peer reads nothing): a sender must wait.
    client.channel.isWritable = false
    client.channel.pipeline.fireChannelWritabilityChanged()
    #expect(echo.call?.isBlocked == true)
    #expect(echo.drainedCount == 0)
    client.channel.isWritable = true
    client.channel.pipeline.fireChannelWritabilityChanged()
    #expect(echo.call?.isBlocked == false)
    #expect(echo.drainedCount == 1)
  }

  @Test func aSilentPeerIsPingedThenClosed() throws {
    let echo = Echo()
    var client = try Client(
      GRPCStreamServer(service: echo, pingAfter: .seconds(30), closeAfter: .seconds(20)))
    try client.request(1)
    _ = try client.read()
    client.channel.embeddedEventLoop.advanceTime(by: .seconds(20))
    #expect(try client.read().isEmpty)
    client.channel.embeddedEventLoop.advanceTime(by: .seconds(20))
    #expect(try client.read().map(\.type) == [FrameType.ping])
    client.channel.embeddedEventLoop.advanceTime(by: .seconds(20))
    #expect(!client.channel.isActive)
    #expect(echo.endedCount == 1)
  }

  @Test func aPeerThatAnswersThePingIsKept() throws {
    var client = try Client(
      GRPCStreamServer(service: Echo(), pingAfter: .seconds(30), closeAfter: .seconds(20)))
    _ = try client.read()
    client.channel.embeddedEventLoop.advanceTime(by: .seconds(40))
    let ping = try #require(try client.read().first { $0.type == FrameType.ping })
    try client.frame(type: FrameType.ping, flags: FrameFlag.ack, Array(buffer: ping.payload))
    client.channel.embeddedEventLoop.advanceTime(by: .seconds(25))
    #expect(client.channel.isActive)
  }

  @Test func quiescingEndsCallsAsUnavailableAndSendsGoAway() throws {
    let echo = Echo()
    var client = try Client(GRPCStreamServer(service: echo))
    try client.request(1)
    _ = try client.read()
    client.channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
    let frames = try client.read()
    #expect(frames.contains { $0.stream == 1 && $0.status == "14" })
    #expect(frames.last?.type == FrameType.goAway)
    #expect(!client.channel.isActive)
  }

  @Test func aResetFromThePeerEndsTheCall() throws {
    let echo = Echo()
    var client = try Client(GRPCStreamServer(service: echo))
    try client.request(1)
    try client.frame(type: FrameType.rstStream, stream: 1, [0, 0, 0, 8])
    #expect(echo.endedCount == 1)
    echo.call?.send(ByteBuffer(string: "late"))
    #expect(try client.read().allSatisfy { $0.stream != 1 || $0.type == FrameType.headers })
  }

  @Test func settingsSentByAnotherLayerAreNotSentAgain() throws {
    var client = try Client(GRPCStreamServer(service: Echo(), settingsSent: true))
    let frames = try client.read().filter { $0.flags & FrameFlag.ack == 0 }
    #expect(frames.map(\.type) == [FrameType.windowUpdate])
  }
}

/// `HTTP2FirstRequest` and `SettingsAckFilter`: what the control plane's front reads a
/// connection's first request with, and how it hands the rest on.
@Suite struct HTTP2FirstRequestTests {
  func settings(_ flags: UInt8 = 0, _ payload: [UInt8] = []) -> ByteBuffer {
    var buffer = ByteBuffer()
    buffer.writeFrameHeader(
      length: payload.count, type: FrameType.settings, flags: flags, stream: 0)
    buffer.writeBytes(payload)
    return buffer
  }

  func headers(
    path: String, padded: Bool = false, priority: Bool = false, split: Bool = false
  ) throws
    -> ByteBuffer
  {
    var encoder = HPACKEncoder(allocator: ByteBufferAllocator())
    var block = ByteBuffer()
    try encoder.encode(
      headers: [":method": "POST", ":path": path, "content-type": "application/grpc"], to: &block)
    var frame = ByteBuffer()
    var payload = ByteBuffer()
    if padded { payload.writeInteger(UInt8(3)) }
    if priority { payload.writeBytes([0, 0, 0, 0, 16]) }
    let cut = split ? block.readableBytes / 2 : block.readableBytes
    var first = block.readSlice(length: cut)!
    payload.writeBuffer(&first)
    if padded { payload.writeBytes([0, 0, 0]) }
    let flags =
      (split ? 0 : FrameFlag.endHeaders) | (padded ? FrameFlag.padded : 0)
      | (priority ? FrameFlag.priority : 0)
    frame.writeFrameHeader(
      length: payload.readableBytes, type: FrameType.headers, flags: flags, stream: 1)
    frame.writeBuffer(&payload)
    if split {
      frame.writeFrameHeader(
        length: block.readableBytes, type: FrameType.continuation, flags: FrameFlag.endHeaders,
        stream: 1)
      frame.writeBuffer(&block)
    }
    return frame
  }

  func connection(_ parts: [ByteBuffer]) -> ByteBuffer {
    var all = ByteBuffer(bytes: HTTP2Wire.preface)
    for var part in parts { all.writeBuffer(&part) }
    return all
  }

  @Test func thePathIsReadWhateverTheBytesAreCutInto() throws {
    let bytes = connection([settings(), settings(FrameFlag.ack), try headers(path: "/a.B/C")])
    var reader = HTTP2FirstRequest()
    var found: [String] = []
    for index in 0..<bytes.readableBytes {
      if let path = try reader.read(bytes.getSlice(at: index, length: 1)!) { found.append(path) }
    }
    #expect(found == ["/a.B/C"])
  }

  @Test func paddingPriorityAndContinuationAreRead() throws {
    for (padded, priority, split) in [
      (true, false, false), (false, true, false), (true, true, true),
    ] {
      var reader = HTTP2FirstRequest()
      let bytes = connection([
        settings(), try headers(path: "/x.Y/Z", padded: padded, priority: priority, split: split),
      ])
      #expect(try reader.read(bytes) == "/x.Y/Z")
    }
  }

  @Test func bytesThatAreNotHTTP2AreRefused() {
    var reader = HTTP2FirstRequest()
    #expect(throws: (any Error).self) {
      try reader.read(ByteBuffer(string: "GET / HTTP/1.1\r\n\r\n"))
    }
  }

  @Test func aClientThatNeverAsksIsCutOffAtTheLimit() throws {
    var reader = HTTP2FirstRequest()
    _ = try reader.read(connection([]))
    var pings = ByteBuffer()
    while pings.readableBytes < HTTP2FirstRequest.limit {
      pings.writeFrameHeader(length: 8, type: FrameType.ping, flags: 0, stream: 0)
      pings.writeInteger(UInt64(1))
    }
    #expect(throws: (any Error).self) { try reader.read(pings) }
  }

  @Test func theFirstSettingsAcknowledgementAloneIsTakenOut() {
    let ack = settings(FrameFlag.ack)
    let window: ByteBuffer = {
      var frame = ByteBuffer()
      frame.writeFrameHeader(length: 4, type: FrameType.windowUpdate, flags: 0, stream: 0)
      frame.writeInteger(UInt32(1000))
      return frame
    }()
    let input = connection([settings(0, [0, 4, 0, 0, 0x40, 0]), window, ack, window, ack])
    let expected = connection([settings(0, [0, 4, 0, 0, 0x40, 0]), window, window, ack])
    // Whole, and one byte at a time.
    var whole = SettingsAckFilter()
    #expect(whole.filter(input) == expected)
    #expect(whole.done)
    var bytewise = SettingsAckFilter()
    var output = ByteBuffer()
    for index in 0..<input.readableBytes {
      var piece = bytewise.filter(input.getSlice(at: index, length: 1)!)
      output.writeBuffer(&piece)
    }
    #expect(output == expected)
  }
}
