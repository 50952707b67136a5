import NIOCore

/// Answers the PING frames an etcd member sends, below the HTTP/2 handler, which never sees
/// them.
///
/// etcd's gRPC server (grpc-go) measures each connection's bandwidth-delay product with a PING
/// whenever it receives data and has none outstanding: one per round trip for as long as calls
/// flow, forever with small messages. The client's HTTP/2 handler takes more than 200 control
/// frames in 30 s for a flood and closes the connection (ENHANCE_YOUR_CALM), failing every
/// call on it with "Stream unexpectedly closed"; grpc-swift does not let that limit be
/// changed. This handler sits between TLS (if any) and the HTTP/2 handler, follows the frame
/// boundaries of what the member sends, and answers each PING (not an ACK, on stream 0, 8
/// bytes) with its ACK itself; every other byte goes on unchanged. The ACKs of the client's
/// own keepalive pings pass, so keepalive works as before.
final class PeerPingAnswerer: ChannelInboundHandler, RemovableChannelHandler {
  typealias InboundIn = ByteBuffer
  typealias InboundOut = ByteBuffer
  typealias OutboundOut = ByteBuffer

  static let frameHeaderLength = 9
  static let pingType: UInt8 = 0x6
  static let ackFlag: UInt8 = 0x1
  static let pingLength = 8

  /// Bytes of the current frame's payload still to pass on.
  private var payloadLeft = 0
  /// The start of a frame whose header (or PING) has not all arrived yet.
  private var held: ByteBuffer?
  /// PINGs answered here, for tests.
  private(set) var answered = 0

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    var input = unwrapInboundIn(data)
    if var start = held {
      start.writeBuffer(&input)
      input = start
      held = nil
    }
    var passFrom = input.readerIndex
    var index = input.readerIndex
    let end = input.writerIndex
    while index < end {
      if payloadLeft > 0 {
        let passed = min(payloadLeft, end - index)
        index += passed
        payloadLeft -= passed
        continue
      }
      guard end - index >= Self.frameHeaderLength,
        let lengthAndType = input.getInteger(at: index, as: UInt32.self),
        let flags = input.getInteger(at: index + 4, as: UInt8.self),
        let stream = input.getInteger(at: index + 5, as: UInt32.self)
      else { break }
      let length = Int(lengthAndType >> 8)
      let type = UInt8(truncatingIfNeeded: lengthAndType)
      guard type == Self.pingType, flags & Self.ackFlag == 0, length == Self.pingLength,
        stream & 0x7fff_ffff == 0
      else {
        // Any other frame, or a malformed PING for the HTTP/2 handler to judge: passed on.
        index += Self.frameHeaderLength
        payloadLeft = length
        continue
      }
      guard end - index >= Self.frameHeaderLength + Self.pingLength,
        let opaque = input.getBytes(at: index + Self.frameHeaderLength, length: Self.pingLength)
      else { break }
      if index > passFrom, let before = input.getSlice(at: passFrom, length: index - passFrom) {
        context.fireChannelRead(wrapInboundOut(before))
      }
      var ack = context.channel.allocator.buffer(
        capacity: Self.frameHeaderLength + Self.pingLength)
      ack.writeInteger(UInt32(Self.pingLength) << 8 | UInt32(Self.pingType))
      ack.writeInteger(Self.ackFlag)
      ack.writeInteger(UInt32(0))
      ack.writeBytes(opaque)
      context.writeAndFlush(wrapOutboundOut(ack), promise: nil)
      answered += 1
      index += Self.frameHeaderLength + Self.pingLength
      passFrom = index
    }
    if index > passFrom, let passed = input.getSlice(at: passFrom, length: index - passFrom) {
      context.fireChannelRead(wrapInboundOut(passed))
    }
    if index < end {
      held = input.getSlice(at: index, length: end - index)
    }
  }
}
