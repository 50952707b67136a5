import GRPCCore
import MeshProtos
import Synchronization

/// The serving status of each service a process hosts, as `grpc.health.v1` reports it.
///
/// The empty service name stands for the whole server. Watchers see every change; on shutdown
/// every status turns NOT_SERVING, so load balancers stop sending before the listener closes.
public final class HealthStatus: Sendable {
  public typealias ServingStatus = Grpc_Health_V1_HealthCheckResponse.ServingStatus

  private struct State {
    var statuses: [String: ServingStatus] = [:]
    var watchers: [Int: (service: String, continuation: AsyncStream<ServingStatus>.Continuation)] =
      [:]
    var nextWatcher = 0
    var isShutDown = false
  }

  private let state = Mutex(State())

  public init() {}

  /// Sets a service's status and tells its watchers.
  public func set(_ status: ServingStatus, for service: String) {
    state.withLock { state in
      guard !state.isShutDown else { return }
      state.statuses[service] = status
      for watcher in state.watchers.values where watcher.service == service {
        watcher.continuation.yield(status)
      }
    }
  }

  /// Marks everything NOT_SERVING for good (later `set` calls are ignored) and ends every
  /// Watch after telling it, so open watches do not hold a graceful shutdown open forever.
  public func shutDown() {
    let watchers = state.withLock { state in
      state.isShutDown = true
      for service in state.statuses.keys { state.statuses[service] = .notServing }
      return Array(state.watchers.values)
    }
    // Outside the lock: finishing a stream runs its termination handler, which takes it.
    for watcher in watchers {
      watcher.continuation.yield(.notServing)
      watcher.continuation.finish()
    }
  }

  /// A service's status, or nil for a service this process does not know.
  public func status(of service: String) -> ServingStatus? {
    state.withLock { $0.statuses[service] }
  }

  /// The current status (SERVICE_UNKNOWN for an unknown service), then every change, and a
  /// function that ends the stream.
  func watch(_ service: String) -> (AsyncStream<ServingStatus>, @Sendable () -> Void) {
    let (stream, continuation) = AsyncStream.makeStream(
      of: ServingStatus.self, bufferingPolicy: .bufferingNewest(1))
    let (id, isShutDown) = state.withLock { state in
      let id = state.nextWatcher
      state.nextWatcher += 1
      state.watchers[id] = (service, continuation)
      continuation.yield(state.statuses[service] ?? .serviceUnknown)
      return (id, state.isShutDown)
    }
    continuation.onTermination = { [weak self] _ in
      self?.state.withLock { _ = $0.watchers.removeValue(forKey: id) }
    }
    if isShutDown { continuation.finish() }
    return (stream, { continuation.finish() })
  }
}

/// `grpc.health.v1.Health` over a `HealthStatus`.
struct HealthService: Grpc_Health_V1_Health.SimpleServiceProtocol {
  let status: HealthStatus

  func check(
    request: Grpc_Health_V1_HealthCheckRequest, context: ServerContext
  ) async throws -> Grpc_Health_V1_HealthCheckResponse {
    guard let current = status.status(of: request.service) else {
      throw RPCError(code: .notFound, message: "unknown service \"\(request.service)\"")
    }
    return .with { $0.status = current }
  }

  func watch(
    request: Grpc_Health_V1_HealthCheckRequest,
    response: RPCWriter<Grpc_Health_V1_HealthCheckResponse>,
    context: ServerContext
  ) async throws {
    let (updates, finish) = status.watch(request.service)
    // gRPC signals a cancelled RPC (client reset, deadline, server shutdown) through this
    // handler rather than by cancelling the task; ending the stream ends the loop.
    try await withRPCCancellationHandler {
      for await current in updates {
        try await response.write(.with { $0.status = current })
      }
    } onCancelRPC: {
      finish()
    }
  }
}
