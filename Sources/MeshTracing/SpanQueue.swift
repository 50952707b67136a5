import Synchronization

/// A bounded queue of finished spans between the data path and an exporter. `record` never
/// waits: when the queue is full the span is dropped and counted, so a slow or absent
/// collector costs the calls nothing.
public final class SpanQueue: SpanSink {
  private struct State {
    var spans: [Span] = []
    var dropped = 0
    var recorded = 0
  }

  public let capacity: Int
  private let state = Mutex(State())

  public init(capacity: Int = 4096) {
    self.capacity = capacity
  }

  public func record(_ span: Span) {
    state.withLock { state in
      if state.spans.count >= capacity {
        state.dropped += 1
      } else {
        state.spans.append(span)
        state.recorded += 1
      }
    }
  }

  /// Takes up to `maximum` spans, oldest first.
  public func take(_ maximum: Int) -> [Span] {
    state.withLock { state in
      guard state.spans.count > maximum else {
        defer { state.spans.removeAll(keepingCapacity: true) }
        return state.spans
      }
      let batch = Array(state.spans.prefix(maximum))
      state.spans.removeFirst(maximum)
      return batch
    }
  }

  public var count: Int { state.withLock { $0.spans.count } }

  /// Spans dropped because the queue was full, and the exporter's own losses reported with
  /// `countDropped`.
  public var dropped: Int { state.withLock { $0.dropped } }

  /// Spans accepted into the queue since the start.
  public var recorded: Int { state.withLock { $0.recorded } }

  /// Counts spans lost after they left the queue (an export that failed).
  public func countDropped(_ count: Int) {
    state.withLock { $0.dropped += count }
  }
}
