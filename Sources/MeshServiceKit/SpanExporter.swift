import Logging
import MeshProtos
import MeshTracing
import ServiceLifecycle
import Synchronization

/// Sends what a process records over OTLP in batches: every half second, or sooner when a
/// batch is full. It runs beside the data path, never in it: spans wait in a bounded
/// `SpanQueue`, and when the collector is slow or down they are dropped there and counted,
/// never waited for. An export that fails is dropped too (the next batch is tried afresh).
/// Requests are written by `OTLPEncoder`, straight from the span model.
public struct SpanExporter: Service {
  /// Sends one `ExportTraceServiceRequest` (its protobuf bytes) to the collector; throws when
  /// it was not accepted.
  public typealias Send = @Sendable ([UInt8]) async throws -> Void

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

  /// Spans of another process (the app beside a sidecar), as it posted them: an
  /// `ExportTraceServiceRequest`, checked here and sent on with this process's own. False when
  /// the queue is full (they are dropped and counted); throws when the bytes are not a request.
  @discardableResult
  public func relay(_ request: [UInt8]) throws -> Bool {
    // Walked, not decoded: only the spans are counted.
    var spans = 0
    try OTLPReader.forEachSpan(in: request) { _, _ in spans += 1 }
    let accepted = relayed.add(request, spans: spans)
    if !accepted { queue.countDropped(spans) }
    return accepted
  }

  /// Exports the collector did not take.
  public var failures: Int { relayed.failures }

  public func run() async throws {
    var lastWarning = ContinuousClock.now - .seconds(60)
    while true {
      let stopping = Task.isShuttingDownGracefully || Task.isCancelled
      if !stopping, queue.count < Self.batchSize {
        try? await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
      }
      await exportPending(all: stopping) { error, lost in
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

  /// Sends what is waiting: a batch, then more only while a full batch waits (or, with `all`,
  /// until nothing does). Calls that go on meanwhile must not make a stream of small batches
  /// out of the spans that arrive while one is being sent.
  private func exportPending(all: Bool, failed: (any Error, Int) -> Void) async {
    var first = true
    while first || all || queue.count >= Self.batchSize {
      first = false
      let own = queue.take(Self.batchSize)
      let (others, otherSpans) = relayed.take()
      if own.isEmpty && others.isEmpty { return }
      // Serialized requests concatenated are one request with all their spans.
      var request = others.flatMap { $0 }
      if !own.isEmpty {
        request += OTLPEncoder.exportRequest([
          OTLPEncoder.resourceSpans(resource: resource, spans: own)
        ])
      }
      do {
        try await send(request)
      } catch {
        failed(error, own.count + otherSpans)
        return
      }
    }
  }
}

/// Posted requests waiting to be sent on, bounded by their span count.
private final class RelayQueue: Sendable {
  private struct State {
    var waiting: [[UInt8]] = []
    var spans = 0
    var failures = 0
  }
  private let state = Mutex(State())
  private let capacity: Int

  init(capacity: Int) { self.capacity = capacity }

  func add(_ request: [UInt8], spans: Int) -> Bool {
    state.withLock { state in
      guard state.spans + spans <= capacity else { return false }
      state.waiting.append(request)
      state.spans += spans
      return true
    }
  }

  func take() -> ([[UInt8]], Int) {
    state.withLock { state in
      defer {
        state.waiting = []
        state.spans = 0
      }
      return (state.waiting, state.spans)
    }
  }

  func countFailure() { state.withLock { $0.failures += 1 } }
  var failures: Int { state.withLock { $0.failures } }
}
