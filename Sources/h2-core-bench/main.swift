import Foundation
import MeshProxy
import NIOCore
import NIOEmbedded
import NIOHPACK
import NIOHTTP2

// h2-core-bench [REQUESTS]: what it costs an HTTP/2 server core to take a gRPC request and write
// its answer (HEADERS, a DATA echoing the request, trailers), measured on the same client bytes
// for Trellis's core (HTTP2FrameReader and HTTP2Connection, as HTTP2CoreAnswerer drives them)
// and for swift-nio-http2's NIOHTTP2Handler with its stream multiplexer (a child channel per
// stream, an echo handler in each), in an EmbeddedChannel: no sockets, one thread. REQUESTS
// (default 100,000) go 100 to a read, in 5 interleaved rounds; prints each side's median
// nanoseconds per request and their ratio.

let requests = CommandLine.arguments.dropFirst().first.flatMap { Int($0) } ?? 100_000
let perRead = 100
let rounds = 5

func frame(_ type: UInt8, _ flags: UInt8, _ stream: UInt32, _ payload: ByteBuffer) -> ByteBuffer {
  var out = ByteBuffer()
  out.writeInteger(UInt32(payload.readableBytes) << 8 | UInt32(type))
  out.writeInteger(flags)
  out.writeInteger(stream)
  out.writeImmutableBuffer(payload)
  return out
}

/// The client's bytes: the preface, SETTINGS and a connection window opened wide; then the
/// requests, `perRead` to a buffer.
func clientBytes() throws -> [ByteBuffer] {
  var opening = ByteBuffer(string: "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
  opening.writeImmutableBuffer(frame(4, 0, 0, ByteBuffer()))
  var increment = ByteBuffer()
  increment.writeInteger(UInt32(Int32.max) - 65_535)
  opening.writeImmutableBuffer(frame(8, 0, 0, increment))
  var reads = [opening]
  var encoder = HPACKEncoder(allocator: ByteBufferAllocator())
  let headers: HPACKHeaders = [
    ":method": "POST", ":scheme": "http", ":path": "/grpc.health.v1.Health/Check",
    ":authority": "bench", "content-type": "application/grpc", "te": "trailers",
  ]
  var message = ByteBuffer(bytes: [0, 0, 0, 0, 2])
  message.writeBytes([0x0A, 0x00])
  var current = ByteBuffer()
  for index in 0..<requests {
    let stream = UInt32(2 * index + 1)
    var block = ByteBuffer()
    try encoder.encode(headers: headers, to: &block)
    current.writeImmutableBuffer(frame(1, 0x4, stream, block))
    current.writeImmutableBuffer(frame(0, 0x1, stream, message))
    if (index + 1) % perRead == 0 || index == requests - 1 {
      reads.append(current)
      current = ByteBuffer()
    }
  }
  return reads
}

/// Answers every request in a child channel of NIOHTTP2Handler's multiplexer.
final class Echo: ChannelInboundHandler {
  typealias InboundIn = HTTP2Frame.FramePayload
  typealias OutboundOut = HTTP2Frame.FramePayload

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    guard case .data(let payload) = unwrapInboundIn(data), payload.endStream,
      case .byteBuffer(let bytes) = payload.data
    else { return }
    let response: HPACKHeaders = [":status": "200", "content-type": "application/grpc"]
    context.write(wrapOutboundOut(.headers(.init(headers: response))), promise: nil)
    context.write(wrapOutboundOut(.data(.init(data: .byteBuffer(bytes)))), promise: nil)
    context.writeAndFlush(
      wrapOutboundOut(.headers(.init(headers: ["grpc-status": "0"], endStream: true))),
      promise: nil)
  }
}

func runTrellis(_ reads: [ByteBuffer]) throws -> (Duration, Int) {
  var core = HTTP2CoreAnswerer()
  var written = 0
  let start = ContinuousClock.now
  for read in reads {
    var bytes = read
    written += try core.read(&bytes).readableBytes
  }
  return (ContinuousClock.now - start, written)
}

func runNIOHTTP2(_ reads: [ByteBuffer]) throws -> (Duration, Int) {
  let channel = EmbeddedChannel()
  _ = try channel.pipeline.syncOperations.configureHTTP2Pipeline(
    mode: .server, connectionConfiguration: .init(), streamConfiguration: .init()
  ) { stream in
    stream.eventLoop.makeCompletedFuture {
      try stream.pipeline.syncOperations.addHandler(Echo())
    }
  }
  try channel.connect(to: try SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
  var written = 0
  let start = ContinuousClock.now
  for read in reads {
    try channel.writeInbound(read)
    channel.embeddedEventLoop.run()
    while let out = try channel.readOutbound(as: IOData.self) {
      if case .byteBuffer(let bytes) = out { written += bytes.readableBytes }
    }
  }
  let elapsed = ContinuousClock.now - start
  _ = try? channel.finish()
  return (elapsed, written)
}

func nanosecondsPerRequest(_ duration: Duration) -> Double {
  let (seconds, attoseconds) = duration.components
  return (Double(seconds) * 1e9 + Double(attoseconds) / 1e9) / Double(requests)
}

let reads = try clientBytes()
var trellis: [Double] = []
var nio: [Double] = []
var bytes = (trellis: 0, nio: 0)
for _ in 0..<rounds {
  let (ours, oursWritten) = try runTrellis(reads)
  let (theirs, theirsWritten) = try runNIOHTTP2(reads)
  trellis.append(nanosecondsPerRequest(ours))
  nio.append(nanosecondsPerRequest(theirs))
  bytes = (oursWritten, theirsWritten)
}
func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }
print(
  """
  \(requests) requests, \(perRead) a read, median of \(rounds) interleaved rounds:
    trellis core (HTTP2Connection)       \(String(format: "%7.0f", median(trellis))) ns/request, \
  \(bytes.trellis / requests) bytes written per request
    swift-nio-http2 (NIOHTTP2Handler)    \(String(format: "%7.0f", median(nio))) ns/request, \
  \(bytes.nio / requests) bytes written per request
    NIOHTTP2Handler / trellis core: \(String(format: "%.2f", median(nio) / median(trellis)))
  by round (ns/request): trellis \(trellis.map { String(format: "%.0f", $0) }.joined(separator: " ")); \
  nio \(nio.map { String(format: "%.0f", $0) }.joined(separator: " "))
  """)
