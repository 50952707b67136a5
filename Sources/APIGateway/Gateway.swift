import Crypto
import GRPCCore
import HTTPTypes
import Hummingbird
import Logging
import MeshServiceKit
import MeshTranscoding
import NIOCore
import Tracing

#if canImport(FoundationEssentials)
  import FoundationEssentials
#else
  import Foundation
#endif

/// The API gateway: the shop's single HTTP/JSON entry point. Each request is matched against
/// the `google.api.http` bindings of the services' methods (`RouteTable`), transcoded to the
/// gRPC request (`Transcoder`), sent to the service (through the gateway's sidecar), and the
/// reply — or its status, mapped as Google's APIs map them — answered as JSON.
///
/// Around that: an API key on every request when keys are configured (401 without one), a
/// body limit (413), CORS for the configured origins, an `x-request-id` on every response
/// (the caller's, or a new one; passed on to the service), and a trace started by every
/// request (continued when the caller sends a `traceparent`), its id in `x-trace-id`.
public struct Gateway: Sendable {
  public struct Settings: Sendable {
    /// Accepted keys (`x-api-key: KEY` or `Authorization: Bearer KEY`); none: no key needed.
    public var apiKeys: [String] = []
    public var maxBodyBytes = 1 << 20
    /// Origins allowed by CORS: none (CORS answers nothing), `*`, or a list.
    public var corsOrigins: [String] = []
    /// The limit on each call to a service.
    public var timeout: Duration = .seconds(15)
    /// Of the requests that arrive without a trace, the share whose new trace is sampled.
    public var traceSampling = 1.0
    public init() {}
  }

  /// Calls a service's method with the request's bytes; returns the response's bytes.
  public typealias Call =
    @Sendable (_ route: GatewayRoute, _ request: [UInt8], _ metadata: Metadata) async throws ->
    [UInt8]

  let routes: RouteTable
  let transcoder: Transcoder
  let settings: Settings
  let call: Call
  let logger: Logger
  private let keyDigests: [[UInt8]]

  public init(
    routes: RouteTable, transcoder: Transcoder, settings: Settings, logger: Logger,
    call: @escaping Call
  ) {
    self.routes = routes
    self.transcoder = transcoder
    self.settings = settings
    self.call = call
    self.logger = logger
    self.keyDigests = settings.apiKeys.map { Array(SHA256.hash(data: Array($0.utf8))) }
  }

  /// A gRPC client call through `client`, for `Call`.
  public static func unary(
    _ client: GRPCClient<some ClientTransport>, route: GatewayRoute, request: [UInt8],
    metadata: Metadata, timeout: Duration
  ) async throws -> [UInt8] {
    var options = CallOptions.defaults
    options.timeout = timeout
    let method = route.method
    return try await client.unary(
      request: ClientRequest(message: request, metadata: metadata),
      descriptor: GRPCCore.MethodDescriptor(
        fullyQualifiedService: route.service, method: method.name),
      serializer: RawSerializer(), deserializer: RawDeserializer(), options: options
    ) { try $0.message }
  }

  /// The Hummingbird router: the middleware chain, and every path and method sent to the
  /// gateway's own matching (so an unknown path gets the same JSON error as any other).
  public func router() -> Router<BasicRequestContext> {
    let router = Router()
    router.add(middleware: EdgeMiddleware(gateway: self))
    if !settings.corsOrigins.isEmpty {
      router.add(middleware: CORSByOrigin(origins: settings.corsOrigins))
    }
    router.add(middleware: ErrorMiddleware())
    router.add(middleware: APIKeyMiddleware(gateway: self))
    for method: HTTPRequest.Method in [.get, .post, .put, .patch, .delete, .head, .options] {
      for path: RouterPath in ["/", "**"] {
        router.on(path, method: method) { request, context in
          try await self.respond(to: request, context: context)
        }
      }
    }
    return router
  }

  func respond(to request: Request, context: BasicRequestContext) async throws -> Response {
    // (The edge middleware set the request id and the span.)
    var request = request
    let path = request.uri.path
    let route: GatewayRoute
    let pathValues: [String: String]
    switch routes.resolve(method: request.method.rawValue, path: path) {
    case .matched(let matched, let values):
      route = matched
      pathValues = values
    case .methodNotAllowed(let allowed):
      throw GatewayError(
        httpStatus: 405, code: "UNIMPLEMENTED",
        message:
          "\(request.method.rawValue) \(path): allowed are \(allowed.joined(separator: ", "))",
        headers: [.allow: allowed.joined(separator: ", ")])
    case .notFound:
      throw GatewayError(
        httpStatus: 404, code: "NOT_FOUND",
        message: "no route for \(request.method.rawValue) \(path)")
    }
    if let length = request.headers[.contentLength].flatMap(Int.init),
      length > settings.maxBodyBytes
    {
      throw Self.tooLarge(settings.maxBodyBytes)
    }
    let body: ByteBuffer
    do {
      body = try await request.collectBody(upTo: settings.maxBodyBytes)
    } catch is NIOTooManyBytesError {
      throw Self.tooLarge(settings.maxBodyBytes)
    } catch let error as HTTPError where error.status == .contentTooLarge {
      throw Self.tooLarge(settings.maxBodyBytes)
    }
    let query = Self.queryItems(request.uri.query)
    let message = try transcoder.request(
      for: route, pathValues: pathValues, query: query, body: Array(buffer: body))
    var metadata = Metadata()
    if let id = RequestScope.requestID { metadata.addString(id, forKey: "x-request-id") }
    if let span = RequestScope.span {
      span.operationName = "\(route.httpMethod) \(route.template)"
      span.attributes["http.route"] = route.template.description
      span.attributes["rpc.method"] = route.method.fullPath
    }
    let reply: [UInt8]
    do {
      reply = try await call(route, message, metadata)
    } catch let error as RPCError {
      throw GatewayError(
        httpStatus: StatusMapping.httpStatus(forGRPCCode: error.code.rawValue),
        code: StatusMapping.name(forGRPCCode: error.code.rawValue), message: error.message)
    }
    return Response(
      status: .ok, headers: [.contentType: "application/json; charset=utf-8"],
      body: .init(byteBuffer: ByteBuffer(string: try transcoder.response(for: route, bytes: reply)))
    )
  }

  static func tooLarge(_ limit: Int) -> GatewayError {
    GatewayError(
      httpStatus: 413, code: "RESOURCE_EXHAUSTED",
      message: "request body: larger than the limit of \(limit) bytes")
  }

  /// `a=1&b.c=x%20y&b.c=z`, decoded (`+` is a space), in order.
  static func queryItems(_ query: String?) -> [(String, String)] {
    guard let query, !query.isEmpty else { return [] }
    return query.split(separator: "&").compactMap { pair in
      let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
      let name = PercentDecoding.decode(parts[0], plusIsSpace: true)
      guard !name.isEmpty else { return nil }
      let value = parts.count > 1 ? PercentDecoding.decode(parts[1], plusIsSpace: true) : ""
      return (name, value)
    }
  }

  func checkKey(_ request: Request) -> Bool {
    guard !keyDigests.isEmpty else { return true }
    let presented: String?
    if let key = request.headers[.apiKey] {
      presented = key
    } else if let authorization = request.headers[.authorization],
      authorization.lowercased().hasPrefix("bearer ")
    {
      presented = String(authorization.dropFirst(7)).trimmingCharacters(in: .whitespaces)
    } else {
      presented = nil
    }
    guard let presented else { return false }
    let digest = Array(SHA256.hash(data: Array(presented.utf8)))
    // Digests of equal length compared in full: the time taken says nothing of the keys.
    var found = false
    for candidate in keyDigests {
      var difference: UInt8 = 0
      for (a, b) in zip(candidate, digest) { difference |= a ^ b }
      found = found || difference == 0
    }
    return found
  }
}

/// CORS for a list of origins: a request from one of them gets Hummingbird's CORS answer
/// naming that origin (a preflight is answered there); from any other origin, none — so the
/// browser keeps the response from the page.
struct CORSByOrigin: RouterMiddleware {
  typealias Context = BasicRequestContext
  let any: CORSMiddleware<Context>?
  let byOrigin: [String: CORSMiddleware<Context>]

  init(origins: [String]) {
    func cors(_ origin: CORSMiddleware<Context>.AllowOriginExtended) -> CORSMiddleware<Context> {
      CORSMiddleware(
        allowOrigin: origin,
        allowHeaders: [
          .accept, .authorization, .contentType, .origin, .apiKey, .requestID,
          HTTPField.Name("traceparent")!,
        ],
        allowMethods: [.get, .post, .put, .patch, .delete, .options],
        exposedHeaders: ["x-request-id", "x-trace-id"], maxAge: .seconds(600))
    }
    any = origins.contains("*") ? cors(.all) : nil
    byOrigin = Dictionary(
      origins.filter { $0 != "*" }.map { ($0, cors(.custom($0))) }, uniquingKeysWith: { a, _ in a })
  }

  func handle(
    _ request: Request, context: Context, next: (Request, Context) async throws -> Response
  ) async throws -> Response {
    guard let origin = request.headers[.origin], let cors = byOrigin[origin] ?? any else {
      return try await next(request, context)
    }
    var response = try await cors.handle(request, context: context, next: next)
    // What a page may read of an actual response (Hummingbird names these on preflights).
    if request.method != .options {
      response.headers[.accessControlExposeHeaders] = "x-request-id, x-trace-id"
    }
    return response
  }
}

/// What the edge middleware knows of the request in flight, for the handler.
enum RequestScope {
  @TaskLocal static var requestID: String?
  @TaskLocal static var span: (any Tracing.Span)?
}

/// The outermost middleware: the request id (the caller's `x-request-id` when it is 1–128
/// visible ASCII characters, else a new one) on every response; the request's server span —
/// continuing the caller's trace, or the root of a new one — with its trace id in
/// `x-trace-id`; one log line per request; and every error answered as Google-style JSON.
struct EdgeMiddleware: RouterMiddleware {
  typealias Context = BasicRequestContext
  let gateway: Gateway

  func handle(
    _ request: Request, context: Context, next: (Request, Context) async throws -> Response
  ) async throws -> Response {
    let started = ContinuousClock.now
    let id =
      request.headers[.requestID].flatMap { Self.valid($0) ? $0 : nil }
      ?? "req_" + String(UInt64.random(in: 0...UInt64.max), radix: 16)
    var trace = ServiceContext.startingTrace(
      sampled: Double.random(in: 0..<1) < gateway.settings.traceSampling)
    InstrumentationSystem.instrument.extract(
      request.headers, into: &trace, using: FieldsExtractor())
    let span = InstrumentationSystem.tracer.startAnySpan(
      "\(request.method.rawValue) \(request.uri.path)", context: trace, ofKind: .server)
    span.attributes["http.request.method"] = request.method.rawValue
    span.attributes["url.path"] = request.uri.path
    span.attributes["trellis.request_id"] = id
    var response: Response
    do {
      response = try await RequestScope.$requestID.withValue(id) {
        try await RequestScope.$span.withValue(span) {
          try await ServiceContext.withValue(span.context) { try await next(request, context) }
        }
      }
    } catch {
      // Errors are answered by ErrorMiddleware, inside CORS; only what escapes it lands here.
      response = ErrorMiddleware.response(for: error)
    }
    if response.status.code >= 500 {
      span.setStatus(.init(code: .error, message: response.status.reasonPhrase))
    }
    span.attributes["http.response.status_code"] = Int(response.status.code)
    response.headers[.requestID] = id
    if let trace = span.context.trace { response.headers[.traceID] = trace.traceID.description }
    span.end()
    let elapsed = ContinuousClock.now - started
    let milliseconds =
      Double(elapsed.components.seconds) * 1000
      + Double(elapsed.components.attoseconds) / 1e15
    gateway.logger.info(
      "request",
      metadata: [
        "method": "\(request.method.rawValue)", "path": "\(request.uri.path)",
        "status": "\(response.status.code)", "request_id": "\(id)",
        "duration_ms": "\((milliseconds * 1000).rounded() / 1000)",
      ])
    return response
  }

  static func valid(_ id: String) -> Bool {
    (1...128).contains(id.utf8.count) && id.utf8.allSatisfy { (0x21...0x7e).contains($0) }
  }
}

/// Answers every error of the layers inside it as Google-style JSON, so the layers outside
/// (CORS) see a response and decorate it as any other.
struct ErrorMiddleware: RouterMiddleware {
  typealias Context = BasicRequestContext

  func handle(
    _ request: Request, context: Context, next: (Request, Context) async throws -> Response
  ) async throws -> Response {
    do {
      return try await next(request, context)
    } catch {
      return Self.response(for: error)
    }
  }

  static func response(for error: any Error) -> Response {
    let failure = gatewayError(error)
    var response = Response(
      status: .init(code: failure.httpStatus),
      headers: [.contentType: "application/json; charset=utf-8"],
      body: .init(byteBuffer: ByteBuffer(string: failure.jsonBody)))
    if failure.httpStatus == 401 { response.headers[.wwwAuthenticate] = "Bearer" }
    response.headers.append(contentsOf: failure.headers)
    return response
  }

  static func gatewayError(_ error: any Error) -> GatewayError {
    switch error {
    case let failure as GatewayError: return failure
    case let http as HTTPError where http.status == .contentTooLarge:
      return GatewayError(
        httpStatus: 413, code: "RESOURCE_EXHAUSTED", message: http.body ?? "request body too large")
    case let http as HTTPError:
      return GatewayError(
        httpStatus: Int(http.status.code), code: "UNKNOWN",
        message: http.body ?? http.status.reasonPhrase)
    default:
      return GatewayError(httpStatus: 500, code: "INTERNAL", message: "\(error)")
    }
  }
}

/// Refuses a request without an accepted API key (401). CORS preflights never get here: the
/// CORS middleware, before this one, answers them (they carry no key, by design).
struct APIKeyMiddleware: RouterMiddleware {
  typealias Context = BasicRequestContext
  let gateway: Gateway

  func handle(
    _ request: Request, context: Context, next: (Request, Context) async throws -> Response
  ) async throws -> Response {
    guard gateway.checkKey(request) else {
      throw GatewayError(
        httpStatus: 401, code: "UNAUTHENTICATED",
        message:
          "an API key is required: send it as \"x-api-key: KEY\" or \"Authorization: Bearer KEY\"")
    }
    return try await next(request, context)
  }
}

struct FieldsExtractor: Extractor {
  func extract(key: String, from carrier: HTTPFields) -> String? {
    HTTPField.Name(key).flatMap { carrier[$0] }
  }
}

extension HTTPField.Name {
  static let requestID = HTTPField.Name("x-request-id")!
  static let traceID = HTTPField.Name("x-trace-id")!
  static let apiKey = HTTPField.Name("x-api-key")!
}
