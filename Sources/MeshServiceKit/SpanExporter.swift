import Logging
import MeshProtos
import MeshTracing
import ServiceLifecycle
import Synchronization

/// Sends what a process records over OTLP in batches: every half second, or sooner when a
/// batch is full. It runs beside the data path, never in it: spans wait in a bounded
/// `SpanQueue`, and when the collector is slow or down they are dropped there and counted,
/// never waited for. An export that fails is dropped too (the next batch is tried afresh).
public struct SpanExporter: Service {
  /// Sends one request to the collector; throws when it was not accepted.
  public typealias Send = @Sendable (OTLPExportRequest) async throws -> Void

  public let queue: SpanQueue
  private let resource: [Attribute]
  private let send: Send
  private let relayed: RelayQueue
  private let logger: Logger
  private let interval: Duration
  public static let batchSize = 512

  public init(
    queue: SpanQueue, resource: [Attribute], interval: Duration = .milliseconds(500),
    logger: Logger, send: @escaping Send
  ) {
    self.queue = queue
    self.resource = resource
    self.send = send
    self.interval = interval
    self.logger = logger
    self.relayed = RelayQueue(capacity: queue.capacity)
  }

  /// Spans of other processes (the app beside a sidecar) sent on with this process's own; when
  /// the queue is full they are dropped and counted. False when dropped.
  @discardableResult
  public func relay(_ request: OTLPExportRequest) -> Bool {
    let accepted = relayed.add(request.resourceSpans)
    if !accepted { queue.countDropped(request.resourceSpans.reduce(0) { $0 + $1.spanCount }) }
    return accepted
  }

  /// Exports made and failed, for metrics.
  public var failures: Int { relayed.failures }

  public func run() async throws {
    var lastWarning = ContinuousClock.now - .seconds(60)
    while true {
      let stopping = Task.isShuttingDownGracefully || Task.isCancelled
      if !stopping, queue.count < Self.batchSize {
        try? await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
      }
      await exportPending { error, lost in
        relayed.countFailure()
        queue.countDropped(lost)
        // One warning per minute at most: a collector that is down is not news every batch.
        if ContinuousClock.now - lastWarning > .seconds(60) {
          lastWarning = .now
          logger.warning(
            "cannot export spans; dropping them",
            metadata: ["error": "\(error)", "spans": "\(lost)"])
        }
      }
      if stopping { return }
    }
  }

  /// Sends everything waiting now, one batch after another.
  private func exportPending(failed: (any Error, Int) -> Void) async {
    while true {
      let own = queue.take(Self.batchSize)
      let others = relayed.take()
      if own.isEmpty && others.isEmpty { return }
      var request = OTLPExportRequest()
      if !own.isEmpty { request.resourceSpans.append(OTLPResourceSpans(resource: resource, spans: own)) }
      request.resourceSpans += others
      do {
        try await send(request)
      } catch {
        failed(error, request.resourceSpans.reduce(0) { $0 + $1.spanCount })
        return
      }
    }
  }
}

/// Resource spans waiting to be sent on, bounded by their span count.
private final class RelayQueue: Sendable {
  private struct State {
    var waiting: [OTLPResourceSpans] = []
    var spans = 0
    var failures = 0
  }
  private let state = Mutex(State())
  private let capacity: Int

  init(capacity: Int) { self.capacity = capacity }

  func add(_ resourceSpans: [OTLPResourceSpans]) -> Bool {
    let count = resourceSpans.reduce(0) { $0 + $1.spanCount }
    return state.withLock { state in
      guard state.spans + count <= capacity else { return false }
      state.waiting += resourceSpans
      state.spans += count
      return true
    }
  }

  func take() -> [OTLPResourceSpans] {
    state.withLock { state in
      defer {
        state.waiting = []
        state.spans = 0
      }
      return state.waiting
    }
  }

  func countFailure() { state.withLock { $0.failures += 1 } }
  var failures: Int { state.withLock { $0.failures } }
}
