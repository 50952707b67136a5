import GRPCCore
import Logging

/// Logs one line per RPC when it ends: method, gRPC status, duration and peer (health checks
/// answered at debug level), with the trace it ran under.
struct RequestLogger: ServerInterceptor {
  let logger: Logger

  func intercept<Input: Sendable, Output: Sendable>(
    request: StreamingServerRequest<Input>,
    context: ServerContext,
    next:
      @Sendable (StreamingServerRequest<Input>, ServerContext) async throws ->
      StreamingServerResponse<Output>
  ) async throws -> StreamingServerResponse<Output> {
    let start = ContinuousClock.now
    let method = "/" + context.descriptor.fullyQualifiedMethod
    let isHealthCheck = context.descriptor.service.fullyQualifiedService == "grpc.health.v1.Health"
    let log: @Sendable (RPCError.Code?, String?) -> Void = { code, message in
      let elapsed = ContinuousClock.now - start
      let millis =
        Double(elapsed.components.seconds) * 1000 + Double(elapsed.components.attoseconds) / 1e15
      var metadata: Logger.Metadata = [
        "method": "\(method)",
        "grpc_code": "\(code?.canonicalName ?? "OK")",
        "duration_ms": .stringConvertible((millis * 1000).rounded() / 1000),
        "peer": "\(context.remotePeer)",
      ]
      if let message { metadata["grpc_message"] = "\(message)" }
      // The sidecar asks for the app's health every second: a health check answered is a
      // debug line.
      logger.log(level: isHealthCheck && code == nil ? .debug : .info, "rpc", metadata: metadata)
    }
    return try await observingEnd(request, context, next: next, ended: log)
  }
}
