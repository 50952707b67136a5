import GRPCCore
import Logging

/// Logs one line per RPC when it ends: method, gRPC status, duration and peer.
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
      logger.info("rpc", metadata: metadata)
    }
    return try await observingEnd(request, context, next: next, ended: log)
  }
}
