/// Parent-based sampling: a trace that arrives with a decision keeps it; the rate decides only
/// for traces that start here.
public struct Sampler: Sendable, Equatable {
  /// The share of new traces recorded, 0 to 1.
  public var rate: Double

  public init(rate: Double) {
    self.rate = min(max(rate, 0), 1)
  }

  /// Whether a new trace is recorded; `random` is uniform in [0, 1).
  public func samplesNewTrace(random: Double) -> Bool {
    rate >= 1 || random < rate
  }
}

/// Fast ids for spans and traces: xoshiro256** seeded from the system's generator. One per
/// thread or event loop; it is not shared.
public struct IDGenerator {
  private var state: (UInt64, UInt64, UInt64, UInt64)

  public init() {
    var system = SystemRandomNumberGenerator()
    state = (system.next(), system.next(), system.next(), system.next())
    if state == (0, 0, 0, 0) { state.0 = 1 }
  }

  public mutating func next() -> UInt64 {
    let result = rotate(state.1 &* 5, 7) &* 9
    let t = state.1 << 17
    state.2 ^= state.0
    state.3 ^= state.1
    state.1 ^= state.2
    state.0 ^= state.3
    state.2 ^= t
    state.3 = rotate(state.3, 45)
    return result
  }

  public mutating func spanID() -> SpanID {
    while true {
      let value = next()
      if value != 0 { return SpanID(value) }
    }
  }

  /// A new trace's id: its first 6 bytes are when it began (the Unix time in seconds, 4 bytes,
  /// then the fraction of the second in 1/65536ths), the other 10 random. AWS X-Ray's ids begin
  /// with the second the same way; W3C's "random" flag asks for the right-most 7 bytes only.
  /// Traces begun close in time sort close together, so the trace store's indexes by trace id
  /// grow at one end rather than on a random page for every span.
  public mutating func traceID(now: UInt64 = WallClock.now()) -> TraceID {
    let seconds = UInt64(UInt32(truncatingIfNeeded: now / 1_000_000_000))
    let fraction = (now % 1_000_000_000) * 65536 / 1_000_000_000
    return TraceID(high: seconds << 32 | fraction << 16 | next() >> 48, low: next() | 1)
  }

  /// Uniform in [0, 1).
  public mutating func unit() -> Double {
    Double(next() >> 11) * 0x1.0p-53
  }

  private func rotate(_ x: UInt64, _ k: UInt64) -> UInt64 { (x << k) | (x >> (64 - k)) }
}
