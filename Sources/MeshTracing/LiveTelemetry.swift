import Synchronization

/// What the sidecar tells the control plane live: each second's calls by direction, service
/// and method (count, failures, a latency histogram), and — while an operator taps this
/// service — the calls themselves as they end, at most so many a second per tap.
///
/// The sidecar's engine records into it and the sidecar's link to the control plane drains it,
/// so it lives here, below both.
public final class LiveTelemetry: Sendable {
  public struct Stats: Sendable {
    public var direction: String
    public var service: String
    public var method: String
    public var requests: UInt64 = 0
    public var failures: UInt64 = 0
    public var buckets = [UInt32](repeating: 0, count: LatencyBuckets.count)
  }

  public struct Tap: Sendable, Equatable {
    public var id: String
    /// `package.Service/Method`, `package.Service/*`, or empty for every method.
    public var method: String
    public var maxPerSecond: Int

    public init(id: String, method: String, maxPerSecond: Int) {
      self.id = id
      self.method = method
      self.maxPerSecond = maxPerSecond
    }

    func matches(_ path: String) -> Bool {
      guard !method.isEmpty else { return true }
      let name = path.dropFirst()
      return method.hasSuffix("/*") ? name.hasPrefix(method.dropLast()) : name == method
    }
  }

  public struct TappedCall: Sendable {
    public var tap: String
    public var time: UInt64
    public var direction: String
    public var service: String
    public var method: String
    public var peer: String
    public var status: String
    public var durationNanos: Int64
    public var traceID: String
    public var attempts: Int
  }

  private struct Key: Hashable {
    var direction: String
    var service: String
    var method: String
  }

  private struct State {
    var stats: [Key: Stats] = [:]
    var taps: [Tap] = []
    var tapped: [TappedCall] = []
    /// Calls sent per tap in the current second.
    var sent: [String: Int] = [:]
    var second: UInt64 = 0
  }

  /// More distinct methods than this in one interval are counted as "other".
  static let maximumSeries = 2_000
  /// Tapped calls waiting to be sent at most.
  static let maximumTapped = 1_000

  private let state = Mutex(State())
  private let tapping = Atomic<Bool>(false)

  public init() {}

  /// Counts a call that ended (and queues it for the taps that match it).
  package func record(
    direction: String, service: String, method: String, code: String, seconds: Double,
    peer: String?, traceID: String?, attempts: Int
  ) {
    let isTapping = tapping.load(ordering: .relaxed)
    state.withLock { state in
      var key = Key(direction: direction, service: service, method: method)
      if state.stats[key] == nil, state.stats.count >= Self.maximumSeries { key.method = "other" }
      var stats =
        state.stats[key] ?? Stats(direction: direction, service: service, method: key.method)
      stats.requests += 1
      if code != "OK" { stats.failures += 1 }
      stats.buckets[LatencyBuckets.index(seconds: seconds)] += 1
      state.stats[key] = stats
      guard isTapping else { return }
      let now = WallClock.now()
      if now / 1_000_000_000 != state.second {
        state.second = now / 1_000_000_000
        state.sent = [:]
      }
      for tap in state.taps where tap.matches(method) {
        guard state.sent[tap.id, default: 0] < tap.maxPerSecond,
          state.tapped.count < Self.maximumTapped
        else { continue }
        state.sent[tap.id, default: 0] += 1
        state.tapped.append(
          TappedCall(
            tap: tap.id, time: now, direction: direction, service: service, method: method,
            peer: peer ?? "", status: code, durationNanos: Int64(seconds * 1e9),
            traceID: traceID ?? "", attempts: attempts))
      }
    }
  }

  /// The calls counted since the last drain, and the tapped calls waiting.
  public func drain() -> (stats: [Stats], tapped: [TappedCall]) {
    state.withLock { state in
      defer {
        state.stats = [:]
        state.tapped = []
      }
      return (Array(state.stats.values), state.tapped)
    }
  }

  /// Only the tapped calls waiting (between reports).
  public func drainTapped() -> [TappedCall] {
    state.withLock { state in
      defer { state.tapped = [] }
      return state.tapped
    }
  }

  /// The taps open on this service, as the control plane last said.
  public func setTaps(_ taps: [Tap]) {
    state.withLock { $0.taps = taps }
    tapping.store(!taps.isEmpty, ordering: .relaxed)
  }

  public var isTapping: Bool { tapping.load(ordering: .relaxed) }
}
