import ArgumentParser
import NIOCore
import NIOHPACK
import NIOHTTP2
import NIOPosix

/// The far end of the proxy benchmarks: a gRPC server over h2c that answers every call at once
/// with status OK and the request's messages echoed back, so that the proxies under test — not
/// the server — are what saturates. It speaks gRPC on the wire (response headers, the echoed
/// length-prefixed messages, `grpc-status` trailers) and runs no application code.
@main
struct BenchServer: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "bench-server",
    abstract: "Echo every gRPC call with status OK over h2c, for proxy benchmarks.")

  @Option(help: "Address to listen on (HOST:PORT).")
  var listen = "127.0.0.1:50099"

  @Option(help: "Event loop threads.")
  var threads = 1

  func run() throws {
    guard let colon = listen.lastIndex(of: ":"),
      let port = Int(listen[listen.index(after: colon)...])
    else { throw ValidationError("--listen: expected HOST:PORT, got '\(listen)'") }
    let host = String(listen[..<colon])
    let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
    let channel = try ServerBootstrap(group: group)
      .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
      .childChannelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
      .childChannelInitializer { channel in
        channel.eventLoop.makeCompletedFuture {
          try channel.pipeline.syncOperations.addHandler(NIOHTTP2Handler(mode: .server))
          try channel.pipeline.syncOperations.addHandler(EchoHandler())
        }
      }
      .bind(host: host, port: port).wait()
    print("bench-server listening on \(channel.localAddress.map(\.description) ?? listen)")
    try channel.closeFuture.wait()
  }
}

/// Answers each stream when its request ends: headers, the request body echoed, trailers.
/// Windows are returned as data arrives (frame mode leaves that to the handler).
final class EchoHandler: ChannelInboundHandler {
  typealias InboundIn = HTTP2Frame
  typealias OutboundOut = HTTP2Frame

  private var bodies: [HTTP2StreamID: ByteBuffer] = [:]
  private var unacknowledged = 0
  private static let responseHeaders: HPACKHeaders = [
    ":status": "200", "content-type": "application/grpc",
  ]
  private static let okTrailers: HPACKHeaders = ["grpc-status": "0"]

  func channelActive(context: ChannelHandlerContext) {
    context.writeAndFlush(
      wrapOutboundOut(
        HTTP2Frame(streamID: .rootStream, payload: .windowUpdate(windowSizeIncrement: 1 << 24))),
      promise: nil)
    context.fireChannelActive()
  }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    let frame = unwrapInboundIn(data)
    switch frame.payload {
    case .headers(let headers):
      if headers.endStream { respond(context: context, stream: frame.streamID) }
    case .data(let data):
      if case .byteBuffer(var buffer) = data.data {
        unacknowledged += buffer.readableBytes
        if var body = bodies.removeValue(forKey: frame.streamID) {
          body.writeBuffer(&buffer)
          bodies[frame.streamID] = body
        } else {
          bodies[frame.streamID] = buffer
        }
      }
      if data.endStream {
        respond(context: context, stream: frame.streamID)
      } else if let body = bodies[frame.streamID], body.readableBytes > 0 {
        context.write(
          wrapOutboundOut(
            HTTP2Frame(
              streamID: frame.streamID,
              payload: .windowUpdate(windowSizeIncrement: body.readableBytes))),
          promise: nil)
      }
      if unacknowledged > 1 << 20 {
        context.write(
          wrapOutboundOut(
            HTTP2Frame(
              streamID: .rootStream, payload: .windowUpdate(windowSizeIncrement: unacknowledged))),
          promise: nil)
        unacknowledged = 0
      }
    default:
      break
    }
  }

  func channelReadComplete(context: ChannelHandlerContext) {
    context.flush()
    context.fireChannelReadComplete()
  }

  private func respond(context: ChannelHandlerContext, stream: HTTP2StreamID) {
    context.write(
      wrapOutboundOut(
        HTTP2Frame(streamID: stream, payload: .headers(.init(headers: Self.responseHeaders)))),
      promise: nil)
    if let body = bodies.removeValue(forKey: stream), body.readableBytes > 0 {
      context.write(
        wrapOutboundOut(
          HTTP2Frame(streamID: stream, payload: .data(.init(data: .byteBuffer(body))))),
        promise: nil)
    }
    context.write(
      wrapOutboundOut(
        HTTP2Frame(
          streamID: stream, payload: .headers(.init(headers: Self.okTrailers, endStream: true)))),
      promise: nil)
  }
}
