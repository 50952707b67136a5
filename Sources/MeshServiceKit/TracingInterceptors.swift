import GRPCCore
import MeshTracing
import Tracing

/// Joins each call an app serves to its trace: the context the sidecar passed in becomes the
/// handler's `ServiceContext` (under the app's own server span when the trace is sampled), so
/// the calls the handler makes through `TracePropagation` carry it on, and spans the handler
/// starts are children of it.
struct TracingServerInterceptor: ServerInterceptor {
  func intercept<Input: Sendable, Output: Sendable>(
    request: StreamingServerRequest<Input>,
    context: ServerContext,
    next:
      @Sendable (StreamingServerRequest<Input>, ServerContext) async throws ->
      StreamingServerResponse<Output>
  ) async throws -> StreamingServerResponse<Output> {
    var incoming = ServiceContext.current ?? .topLevel
    InstrumentationSystem.instrument.extract(
      request.metadata, into: &incoming, using: MetadataExtractor())
    let method = context.descriptor.fullyQualifiedMethod
    let span = InstrumentationSystem.tracer.startSpan(
      method, context: incoming, ofKind: .server)
    let spanContext = span.context
    if span.isRecording {
      span.attributes["rpc.system"] = "grpc"
      span.attributes["rpc.service"] = context.descriptor.service.fullyQualifiedService
      span.attributes["rpc.method"] = context.descriptor.method
    }
    let end: @Sendable (RPCError.Code?, String?) -> Void = { code, message in
      span.attributes["rpc.grpc.status_code"] = code.map(Self.number) ?? 0
      if let code, Self.serverFailures.contains(code) {
        span.setStatus(SpanStatus(code: .error, message: "\(code.canonicalName): \(message ?? "")"))
      }
      span.end()
    }
    return try await observingEnd(request, context, within: spanContext, next: next, ended: end)
  }

  /// The statuses that say the server failed (OpenTelemetry's gRPC conventions).
  static let serverFailures: Set<RPCError.Code> = [
    .unknown, .deadlineExceeded, .unimplemented, .internalError, .unavailable, .dataLoss,
  ]

  static func number(_ code: RPCError.Code) -> Int { code.rawValue }
}

/// Puts the task's trace context on every call a client makes: `traceparent` and
/// `tracestate`, from the `ServiceContext` the handler runs under.
public struct TracePropagation: ClientInterceptor {
  public init() {}

  public func intercept<Input: Sendable, Output: Sendable>(
    request: StreamingClientRequest<Input>,
    context: ClientContext,
    next: (StreamingClientRequest<Input>, ClientContext) async throws -> StreamingClientResponse<
      Output
    >
  ) async throws -> StreamingClientResponse<Output> {
    guard let current = ServiceContext.current else { return try await next(request, context) }
    var request = request
    request.metadata.removeAllValues(forKey: "traceparent")
    request.metadata.removeAllValues(forKey: "tracestate")
    InstrumentationSystem.instrument.inject(
      current, into: &request.metadata, using: MetadataInjector())
    return try await next(request, context)
  }
}

struct MetadataExtractor: Extractor {
  func extract(key: String, from carrier: Metadata) -> String? {
    var values = carrier[stringValues: key].makeIterator()
    guard let first = values.next() else { return nil }
    guard key == "tracestate" else { return first }
    var joined = first
    while let next = values.next() { joined += "," + next }
    return joined
  }
}

struct MetadataInjector: Injector {
  func inject(_ value: String, forKey key: String, into carrier: inout Metadata) {
    carrier.addString(value, forKey: key)
  }
}
