import NIOCore
import NIOEmbedded
import Testing

@testable import EtcdAPI

/// The handler that answers an etcd member's PINGs below the HTTP/2 handler: every other byte
/// passes unchanged, wherever the reads split the frames.
@Suite struct PeerPingAnswererTests {
  static func frame(type: UInt8, flags: UInt8 = 0, stream: UInt32 = 0, payload: [UInt8]) -> [UInt8]
  {
    let length = UInt32(payload.count)
    return [
      UInt8(length >> 16 & 0xff), UInt8(length >> 8 & 0xff), UInt8(length & 0xff), type, flags,
    ]
      + [
        UInt8(stream >> 24), UInt8(stream >> 16 & 0xff), UInt8(stream >> 8 & 0xff),
        UInt8(stream & 0xff),
      ] + payload
  }

  static let settings = frame(type: 0x4, payload: [0, 3, 0, 0, 0, 100])
  static let data = frame(type: 0x0, flags: 0x1, stream: 1, payload: Array(repeating: 7, count: 40))
  static let ping = frame(type: 0x6, payload: [2, 4, 16, 16, 9, 14, 7, 7])
  static let pingAck = frame(type: 0x6, flags: 0x1, payload: [1, 2, 3, 4, 5, 6, 7, 8])
  /// Not 8 bytes long: the HTTP/2 handler's to refuse.
  static let badPing = frame(type: 0x6, payload: [1, 2, 3, 4, 5, 6, 7, 8, 9])

  /// Feeds `bytes` in reads of `chunk` bytes: what was passed on and what was written back.
  static func run(_ bytes: [UInt8], chunk: Int) throws -> (passed: [UInt8], written: [UInt8]) {
    let channel = EmbeddedChannel(handler: PeerPingAnswerer())
    var offset = 0
    while offset < bytes.count {
      let end = min(offset + chunk, bytes.count)
      try channel.writeInbound(ByteBuffer(bytes: bytes[offset..<end]))
      offset = end
    }
    var passed: [UInt8] = []
    while let buffer = try channel.readInbound(as: ByteBuffer.self) {
      passed += Array(buffer.readableBytesView)
    }
    var written: [UInt8] = []
    while let buffer = try channel.readOutbound(as: ByteBuffer.self) {
      written += Array(buffer.readableBytesView)
    }
    _ = try channel.finish()
    return (passed, written)
  }

  @Test(arguments: [1, 2, 5, 9, 16, 17, 64, 4096])
  func pingsAreAnsweredAndEverythingElsePasses(chunk: Int) throws {
    let stream =
      Self.settings + Self.ping + Self.data + Self.pingAck + Self.ping + Self.badPing
      + Self.data
    let (passed, written) = try Self.run(stream, chunk: chunk)
    #expect(passed == Self.settings + Self.data + Self.pingAck + Self.badPing + Self.data)
    let ack = Self.frame(type: 0x6, flags: 0x1, payload: [2, 4, 16, 16, 9, 14, 7, 7])
    #expect(written == ack + ack)
  }

  @Test func aFrameCutShortIsHeldUntilItsRestArrives() throws {
    let (passed, written) = try Self.run(Self.data + Array(Self.ping.prefix(12)), chunk: 4096)
    #expect(passed == Self.data)
    #expect(written.isEmpty)
  }
}
