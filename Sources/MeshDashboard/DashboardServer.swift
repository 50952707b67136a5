import Foundation
import Hummingbird
import Logging
import MeshConfig
import MeshProtos
import NIOCore
import ServiceLifecycle

/// The dashboard's HTTP server: its page (HTML, CSS and JavaScript modules, served from the
/// binary; nothing is fetched from elsewhere) and the JSON it reads, every figure asked of
/// `source` when asked for. `/api/live` streams the service graph as server-sent events, one
/// a second.
public struct DashboardServer: Sendable {
  let source: any DashboardSource
  /// The mesh's log lines, when this host has them (what `meshctl up` started here).
  let logs: LogCollector?
  let logger: Logger
  /// How often `/api/live` sends the graph.
  let interval: Duration

  public init(
    source: any DashboardSource, logs: LogCollector? = nil, interval: Duration = .seconds(1),
    logger: Logger
  ) {
    self.source = source
    self.logs = logs
    self.interval = interval
    self.logger = logger
  }

  public func router() -> Router<BasicRequestContext> {
    let router = Router()
    router.add(middleware: Failures())
    for path: RouterPath in ["/", "/index.html"] {
      router.get(path) { _, _ in Self.asset(DashboardAssets.index, type: "text/html") }
    }
    router.get("/app.js") { _, _ in Self.asset(DashboardAssets.script, type: "text/javascript") }
    router.get("/style.css") { _, _ in Self.asset(DashboardAssets.style, type: "text/css") }
    router.get("/api/graph") { _, _ in try Self.json(try await graph()) }
    router.get("/api/services/:name") { _, context in
      let name = try context.parameters.require("name")
      return try Self.json(try await service(name))
    }
    router.get("/api/top") { request, _ in
      var top = Trellis_Mesh_V1_TopRequest()
      top.service = request.uri.queryParameters.get("service") ?? ""
      top.byMethod = request.uri.queryParameters.get("methods") == "1"
      top.byEdge = request.uri.queryParameters.get("edges") == "1"
      let response = try await source.top(top)
      return try Self.json(response.rows.map(DashboardRow.init))
    }
    router.get("/api/traces") { request, _ in
      let filter = try Self.traceFilter(request.uri.queryParameters)
      return try Self.json(DashboardViews.traces(try await source.listTraces(filter)))
    }
    router.get("/api/traces/:id") { _, context in
      let id = try context.parameters.require("id").lowercased()
      guard id.count == 32, id.allSatisfy(\.isHexDigit) else {
        throw HTTPError(.badRequest, message: "a trace id is 32 hex digits")
      }
      guard let tree = TraceTree.trees(try await source.traces(ids: [id])).first else {
        throw HTTPError(.notFound, message: "no trace \(id) is stored")
      }
      return try Self.json(DashboardViews.trace(tree))
    }
    router.get("/api/config") { _, _ in
      async let versions = source.configVersions()
      async let status = source.status()
      let running = try? await source.config(version: 0)
      let config = try running.map { try MeshConfig(yaml: $0.yaml, file: "version \($0.version)") }
      return try Self.json(
        DashboardViews.config(
          versions: try await versions, running: config, status: try await status))
    }
    router.get("/api/config/diff") { request, _ in
      func version(_ name: String) throws -> Int64 {
        guard let text = request.uri.queryParameters.get(name), let value = Int64(text), value > 0
        else {
          throw HTTPError(.badRequest, message: "\(name): name a config version (1, 2, …)")
        }
        return value
      }
      let (from, to) = (try version("from"), try version("to"))
      async let old = source.config(version: from)
      async let new = source.config(version: to)
      let diff = unifiedDiff(
        old: try await old.yaml, new: try await new.yaml, oldName: "version \(from)",
        newName: "version \(to)")
      return try Self.json(DashboardViews.Diff(from: from, to: to, diff: diff))
    }
    router.get("/api/logs") { request, _ in
      guard let logs else {
        throw HTTPError(
          .notFound,
          message: "no logs here: the dashboard gathers the logs of what meshctl up started")
      }
      let query = request.uri.queryParameters
      func given(_ name: String) -> String? { query.get(name).flatMap { $0.isEmpty ? nil : $0 } }
      let limit = given("limit").flatMap(Int.init) ?? 500
      guard (1...5000).contains(limit) else {
        throw HTTPError(.badRequest, message: "limit: a number from 1 to 5000")
      }
      if let trace = given("trace"), trace.count != 32 || !trace.allSatisfy(\.isHexDigit) {
        throw HTTPError(.badRequest, message: "trace: a trace id is 32 hex digits")
      }
      return try Self.json(
        logs.search(
          trace: given("trace"), service: given("service"), level: given("level"),
          text: given("q"), limit: limit))
    }
    router.get("/api/trust") { _, _ in
      try Self.json(DashboardViews.trust(try await source.status()))
    }
    router.get("/api/tap") { request, _ in
      var tap = Trellis_Mesh_V1_TapRequest()
      tap.service = request.uri.queryParameters.get("service") ?? ""
      tap.method = request.uri.queryParameters.get("method") ?? ""
      guard !tap.service.isEmpty else {
        throw HTTPError(.badRequest, message: "service: name the service to tap")
      }
      let rate = request.uri.queryParameters.get("maxPerSecond").flatMap { UInt32($0) } ?? 20
      tap.maxPerSecond = min(max(rate, 1), Self.maximumTapRate)
      return Response(
        status: .ok,
        headers: [.contentType: "text/event-stream", .cacheControl: "no-store"],
        body: ResponseBody { [source, tap] writer in
          let (events, continuation) = AsyncStream.makeStream(
            of: String.self, bufferingPolicy: .bufferingNewest(Int(Self.maximumTapRate)))
          let tapping = Task {
            do {
              try await source.tap(tap) { event in
                let data = try JSONEncoder.dashboard.encode(DashboardViews.TapEvent(event))
                continuation.yield(
                  "event: call\ndata: \(String(decoding: data, as: UTF8.self))\n\n")
              }
              continuation.yield("event: end\ndata: \"the tap ended\"\n\n")
            } catch {
              continuation.yield("event: failure\ndata: \(Self.quoted("\(error)"))\n\n")
            }
            continuation.finish()
          }
          defer { tapping.cancel() }
          // A comment line first, so the browser knows the stream is open. The stream ends
          // when the dashboard shuts down (a server waits for its responses to end).
          try await writer.write(ByteBuffer(string: ": tapping \(tap.service)\n\n"))
          try await withGracefulShutdownHandler {
            for await event in events { try await writer.write(ByteBuffer(string: event)) }
          } onGracefulShutdown: {
            continuation.finish()
          }
          try await writer.finish(nil)
        })
    }
    router.get("/api/live") { _, _ in
      let interval = interval
      let logger = logger
      return Response(
        status: .ok,
        headers: [.contentType: "text/event-stream", .cacheControl: "no-store"],
        body: ResponseBody { writer in
          // Until the page goes, or the dashboard shuts down (a server waits for its responses
          // to end: an endless one would hold it up).
          while !Task.isCancelled, !Task.isShuttingDownGracefully {
            let event: String
            do {
              let data = try JSONEncoder.dashboard.encode(try await graph())
              event = "event: graph\ndata: \(String(decoding: data, as: UTF8.self))\n\n"
            } catch {
              logger.debug("the live graph failed", metadata: ["error": "\(error)"])
              event = "event: failure\ndata: \(Self.quoted("\(error)"))\n\n"
            }
            try await writer.write(ByteBuffer(string: event))
            try await Task.sleep(for: interval)
          }
          try await writer.finish(nil)
        })
    }
    return router
  }

  func services() async throws -> [String] {
    Set(try await source.status().sidecars.compactMap { DashboardViews.serviceName($0.spiffeID) })
      .sorted()
  }

  func graph() async throws -> DashboardViews.Graph {
    async let services = services()
    async let top = source.top(Trellis_Mesh_V1_TopRequest())
    var byEdge = Trellis_Mesh_V1_TopRequest()
    byEdge.byEdge = true
    async let edges = source.top(byEdge)
    return DashboardViews.graph(
      services: try await services, top: try await top, edges: try await edges)
  }

  func service(_ name: String) async throws -> DashboardViews.Service {
    var one = Trellis_Mesh_V1_TopRequest()
    one.service = name
    var methods = one
    one.history = true
    methods.byMethod = true
    var byEdge = Trellis_Mesh_V1_TopRequest()
    byEdge.byEdge = true
    async let top = source.top(one)
    async let byMethod = source.top(methods)
    async let edges = source.top(byEdge)
    async let status = source.status()
    async let endpoints = source.endpoints(service: name)
    let (figures, rows, calls, sidecars, seen) = try await (
      top, byMethod, edges, status, endpoints
    )
    let known = sidecars.sidecars.contains { DashboardViews.serviceName($0.spiffeID) == name }
    guard
      known || !figures.rows.isEmpty
        || calls.rows.contains(where: { $0.caller == name || $0.service == name })
    else {
      throw HTTPError(.notFound, message: "the mesh knows no service \(name)")
    }
    let running = try? await source.config(version: 0)
    let config = running.flatMap { try? MeshConfig(yaml: $0.yaml, file: "version \($0.version)") }
    return DashboardViews.service(
      name, top: figures, methods: rows, edges: calls, status: sidecars, endpoints: seen,
      config: config)
  }

  static func traceFilter(_ query: Parameters) throws -> Trellis_Mesh_V1_TraceFilter {
    var filter = Trellis_Mesh_V1_TraceFilter()
    filter.service = query.get("service") ?? ""
    filter.method = query.get("method") ?? ""
    filter.errorsOnly = query.get("errors") == "1"
    if let text = query.get("minMs"), !text.isEmpty {
      guard let value = Double(text), value >= 0 else {
        throw HTTPError(.badRequest, message: "minMs: \(text) is not a number of milliseconds")
      }
      filter.minDurationNanos = Int64(value * 1e6)
    }
    if let text = query.get("sinceSeconds"), !text.isEmpty {
      guard let value = Double(text), value > 0 else {
        throw HTTPError(.badRequest, message: "sinceSeconds: \(text) is not a number of seconds")
      }
      filter.sinceUnixNano = UInt64(max(0, (Date().timeIntervalSince1970 - value) * 1e9))
    }
    if let text = query.get("limit"), !text.isEmpty {
      guard let value = UInt32(text), (1...500).contains(value) else {
        throw HTTPError(.badRequest, message: "limit: \(text) is not a number from 1 to 500")
      }
      filter.limit = value
    }
    return filter
  }

  /// The most calls a tap shows a second, from each sidecar.
  static let maximumTapRate: UInt32 = 50

  static func asset(_ text: String, type: String) -> Response {
    Response(
      status: .ok, headers: [.contentType: "\(type); charset=utf-8", .cacheControl: "no-cache"],
      body: .init(byteBuffer: ByteBuffer(string: text)))
  }

  static func json(_ value: some Encodable) throws -> Response {
    Response(
      status: .ok, headers: [.contentType: "application/json; charset=utf-8"],
      body: .init(byteBuffer: ByteBuffer(bytes: try JSONEncoder.dashboard.encode(value))))
  }

  static func quoted(_ text: String) -> String {
    String(decoding: (try? JSONEncoder().encode(text)) ?? Data("\"\"".utf8), as: UTF8.self)
  }

  /// A failure as JSON, `{"error": "…"}`: the source's (the control plane's) as 502.
  struct Failures: RouterMiddleware {
    typealias Context = BasicRequestContext
    func handle(
      _ request: Request, context: Context,
      next: (Request, Context) async throws -> Response
    ) async throws -> Response {
      do {
        return try await next(request, context)
      } catch let error as HTTPError {
        return Self.answer(error.status, error.body ?? "\(error.status)")
      } catch {
        return Self.answer(.badGateway, "the control plane: \(error)")
      }
    }

    static func answer(_ status: HTTPResponse.Status, _ message: String) -> Response {
      Response(
        status: status, headers: [.contentType: "application/json; charset=utf-8"],
        body: .init(byteBuffer: ByteBuffer(string: "{\"error\":\(quoted(message))}")))
    }
  }
}

/// A row of `/api/top`: the fields of `meshctl top -o json`.
struct DashboardRow: Encodable {
  var service: String
  var method: String?
  var caller: String?
  var successRate: Double
  var rps: Double
  var p50Ms: Double
  var p95Ms: Double
  var p99Ms: Double
  var requests: UInt64
  var instances: UInt32

  init(_ row: Trellis_Mesh_V1_TopRow) {
    service = row.service
    method = row.method.isEmpty ? nil : row.method
    caller = row.caller.isEmpty ? nil : row.caller
    successRate = row.successRate
    rps = row.requestsPerSecond
    p50Ms = row.p50Ms
    p95Ms = row.p95Ms
    p99Ms = row.p99Ms
    requests = row.requests
    instances = row.instances
  }
}

extension JSONEncoder {
  static var dashboard: JSONEncoder {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    encoder.nonConformingFloatEncodingStrategy = .convertToString(
      positiveInfinity: "Infinity", negativeInfinity: "-Infinity", nan: "NaN")
    return encoder
  }
}
