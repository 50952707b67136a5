import GRPCCore
import Tracing

/// Runs the rest of a server's chain and calls `ended` once, when the RPC is over: with nil
/// when it ended OK, or the status it ended with — when its response's producer finishes or
/// throws, or when it fails before one. With `within`, the handler (`next`, and the producer
/// that may run later in another task) runs under that `ServiceContext`.
func observingEnd<Input: Sendable, Output: Sendable>(
  _ request: StreamingServerRequest<Input>, _ context: ServerContext,
  within serviceContext: ServiceContext? = nil,
  next:
    @Sendable (StreamingServerRequest<Input>, ServerContext) async throws ->
    StreamingServerResponse<Output>,
  ended: @escaping @Sendable (RPCError.Code?, String?) -> Void
) async throws -> StreamingServerResponse<Output> {
  do {
    var response = try await ServiceContext.withValue(serviceContext ?? ServiceContext.current) {
      try await next(request, context)
    }
    switch response.accepted {
    case .success(var contents):
      let producer = contents.producer
      contents.producer = { writer in
        do {
          let trailers = try await ServiceContext.withValue(
            serviceContext ?? ServiceContext.current
          ) { try await producer(writer) }
          ended(nil, nil)
          return trailers
        } catch let error as RPCError {
          ended(error.code, error.message)
          throw error
        } catch {
          ended(.unknown, "\(error)")
          throw error
        }
      }
      response.accepted = .success(contents)
    case .failure(let error):
      ended(error.code, error.message)
    }
    return response
  } catch let error as RPCError {
    ended(error.code, error.message)
    throw error
  } catch {
    ended(.unknown, "\(error)")
    throw error
  }
}
