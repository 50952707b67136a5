import NIOCore
import NIOHTTP1
import NIOPosix

/// The sidecar's admin listener (loopback HTTP/1.1): `/live`, `/ready`, `/metrics`, `/certs`,
/// `/endpoints`, and OTLP/HTTP's `POST /v1/traces` for the app's spans.
struct AdminServer {
  /// What the admin endpoints report, asked afresh on every request.
  struct Reports: Sendable {
    /// nil when ready; otherwise why not.
    var notReady: @Sendable () -> String?
    var metrics: @Sendable () -> String
    /// `/certs` as JSON.
    var certificates: @Sendable () -> String
    /// `/endpoints` as JSON: every service's endpoints, their state, load and ejections.
    var endpoints: @Sendable () -> String
    /// Takes an OTLP/HTTP `ExportTraceServiceRequest` (binary protobuf); nil when no spans are
    /// exported.
    var traces: (@Sendable (ByteBuffer) -> TraceIntake)?
  }

  /// What became of spans posted to `/v1/traces`.
  enum TraceIntake {
    case accepted
    /// The export queue is full: the spans were dropped (and counted).
    case full
    case invalid(String)
  }

  /// The largest body `/v1/traces` takes.
  static let maximumBody = 4 << 20

  static func bind(
    host: String, port: Int, group: any EventLoopGroup, reports: Reports
  ) async throws -> any Channel {
    try await ServerBootstrap(group: group)
      .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
      .childChannelInitializer { channel in
        channel.eventLoop.makeCompletedFuture {
          try channel.pipeline.syncOperations.configureHTTPServerPipeline(
            withErrorHandling: true)
          try channel.pipeline.syncOperations.addHandler(AdminHandler(reports: reports))
        }
      }
      .bind(host: host, port: port)
      .get()
  }
}

private final class AdminHandler: ChannelInboundHandler {
  typealias InboundIn = HTTPServerRequestPart
  typealias OutboundOut = HTTPServerResponsePart

  private let reports: AdminServer.Reports
  private var request: HTTPRequestHead?
  private var body: ByteBuffer?
  private var bodyTooLarge = false

  init(reports: AdminServer.Reports) {
    self.reports = reports
  }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    switch unwrapInboundIn(data) {
    case .head(let head):
      request = head
      body = nil
      bodyTooLarge = false
    case .body(var part):
      guard !bodyTooLarge else { return }
      if (body?.readableBytes ?? 0) + part.readableBytes > AdminServer.maximumBody {
        bodyTooLarge = true
        body = nil
      } else if body == nil {
        body = part
      } else {
        body!.writeBuffer(&part)
      }
    case .end:
      guard let head = request else { return }
      request = nil
      let body = self.body ?? ByteBuffer()
      self.body = nil
      guard head.method == .POST else {
        respond(context: context, head: head, answer(head))
        return
      }
      if let refusal = refusePost(head) {
        respond(context: context, head: head, refusal)
        return
      }
      // Decoding spans is not for the event loop the calls run on: it happens on another
      // thread, and the answer is written back on the loop.
      let traces = reports.traces!
      let loop = context.eventLoop
      let handler = NIOLoopBound(self, eventLoop: loop)
      let channelContext = NIOLoopBound(context, eventLoop: loop)
      let reply: @Sendable ((HTTPResponseStatus, String, String)) -> Void = { answer in
        loop.execute { handler.value.respond(context: channelContext.value, head: head, answer) }
      }
      Self.decodeAside(body, with: traces, then: reply)
    }
  }

  private func respond(
    context: ChannelHandlerContext, head: HTTPRequestHead,
    _ answer: (status: HTTPResponseStatus, type: String, body: String)
  ) {
    let (status, type, body) = answer
    var headers = HTTPHeaders()
    headers.add(name: "content-type", value: type)
    headers.add(name: "content-length", value: "\(body.utf8.count)")
    if !head.isKeepAlive { headers.add(name: "connection", value: "close") }
    context.write(
      wrapOutboundOut(
        .head(HTTPResponseHead(version: head.version, status: status, headers: headers))),
      promise: nil)
    context.write(
      wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: body)))),
      promise: nil)
    let keepAlive = head.isKeepAlive
    context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
      if !keepAlive { context.close(promise: nil) }
    }
  }

  /// `POST /v1/traces` (OTLP/HTTP, binary protobuf) is the only POST; nil when this one is
  /// to be read.
  private func refusePost(_ head: HTTPRequestHead) -> (HTTPResponseStatus, String, String)? {
    let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
    guard path == "/v1/traces" else {
      return (.methodNotAllowed, "text/plain", "only GET, except POST /v1/traces\n")
    }
    guard reports.traces != nil else {
      return (.notFound, "text/plain", "this sidecar exports no spans\n")
    }
    guard !bodyTooLarge else {
      return (.payloadTooLarge, "text/plain", "over \(AdminServer.maximumBody) bytes\n")
    }
    let type = head.headers.first(name: "content-type") ?? ""
    guard type.hasPrefix("application/x-protobuf") else {
      return (
        .unsupportedMediaType, "text/plain",
        "expected content-type application/x-protobuf, got '\(type)'\n"
      )
    }
    return nil
  }

  /// Hands posted spans to `traces` on a thread of the concurrency pool.
  private static func decodeAside(
    _ body: ByteBuffer, with traces: @escaping @Sendable (ByteBuffer) -> AdminServer.TraceIntake,
    then reply: @escaping @Sendable ((HTTPResponseStatus, String, String)) -> Void
  ) {
    Task.detached { reply(answer(traces(body))) }
  }

  /// The answer to spans posted: an empty `ExportTraceServiceResponse` when they were taken.
  private static func answer(
    _ intake: AdminServer.TraceIntake
  ) -> (
    HTTPResponseStatus, String, String
  ) {
    switch intake {
    case .accepted: (.ok, "application/x-protobuf", "")
    case .full: (.serviceUnavailable, "text/plain", "the span queue is full\n")
    case .invalid(let reason): (.badRequest, "text/plain", reason + "\n")
    }
  }

  private func answer(_ head: HTTPRequestHead) -> (HTTPResponseStatus, String, String) {
    guard head.method == .GET || head.method == .HEAD else {
      return (.methodNotAllowed, "text/plain", "only GET, except POST /v1/traces\n")
    }
    let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
    switch path {
    case "/live":
      return (.ok, "text/plain", "live\n")
    case "/ready":
      if let reason = reports.notReady() {
        return (.serviceUnavailable, "text/plain", reason + "\n")
      }
      return (.ok, "text/plain", "ready\n")
    case "/metrics":
      return (.ok, "text/plain; version=0.0.4", reports.metrics())
    case "/certs":
      return (.ok, "application/json", reports.certificates())
    case "/endpoints":
      return (.ok, "application/json", reports.endpoints())
    default:
      return (
        .notFound, "text/plain",
        "no such page; try /live, /ready, /metrics, /certs or /endpoints\n"
      )
    }
  }
}

/// `text` as a JSON string, for the admin pages' hand-written JSON.
func jsonString(_ text: String) -> String {
  var out = "\""
  for scalar in text.unicodeScalars {
    switch scalar {
    case "\"": out += "\\\""
    case "\\": out += "\\\\"
    case "\n": out += "\\n"
    case _ where scalar.value < 0x20:
      let hex = String(scalar.value, radix: 16)
      out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
    default: out.unicodeScalars.append(scalar)
    }
  }
  return out + "\""
}
