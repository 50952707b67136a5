import MeshConfig
import NIOConcurrencyHelpers
import NIOCore

/// A service's retry budget: over a sliding window, retries may add at most `percent` of the
/// calls made plus `minPerSecond` for each second of the window — so a failing service sees at
/// most that much extra load from retries, however many calls fail. Shared by the sidecar's
/// event loops; one uncontended lock per call.
final class RetryBudgetWindow: Sendable {
  /// One second of the window.
  private struct Bucket {
    var second: Int64 = -1
    var calls = 0
    var retries = 0
  }

  private struct State {
    var settings: RetryBudget
    var buckets: [Bucket]
  }

  private let state: NIOLockedValueBox<State>

  init(_ settings: RetryBudget) {
    state = NIOLockedValueBox(State(settings: settings, buckets: Self.buckets(for: settings)))
  }

  private static func buckets(for settings: RetryBudget) -> [Bucket] {
    [Bucket](repeating: Bucket(), count: max(1, Int(settings.window.components.seconds)))
  }

  /// New settings from a config; the counts so far are kept when the window is unchanged.
  func update(_ settings: RetryBudget) {
    state.withLockedValue { state in
      guard state.settings != settings else { return }
      if state.settings.window != settings.window {
        state.buckets = Self.buckets(for: settings)
      }
      state.settings = settings
    }
  }

  /// A call was made (its first attempt).
  func recordCall(now: NIODeadline = .now()) {
    state.withLockedValue { state in
      let index = Self.bucket(&state, now)
      state.buckets[index].calls += 1
    }
  }

  /// Takes a retry from the budget; false when the window's retries are used up.
  func withdraw(now: NIODeadline = .now()) -> Bool {
    state.withLockedValue { state in
      let index = Self.bucket(&state, now)
      let second = state.buckets[index].second
      var calls = 0
      var retries = 0
      for bucket in state.buckets where second - bucket.second < Int64(state.buckets.count) {
        calls += bucket.calls
        retries += bucket.retries
      }
      let allowed =
        Double(calls) * Double(state.settings.percent) / 100
        + Double(state.settings.minPerSecond * state.buckets.count)
      guard Double(retries) < allowed else { return false }
      state.buckets[index].retries += 1
      return true
    }
  }

  /// The bucket of `now`'s second, emptied if it last counted an older second.
  private static func bucket(_ state: inout State, _ now: NIODeadline) -> Int {
    let second = now.uptimeNanoseconds.quotientAndRemainder(dividingBy: 1_000_000_000).quotient
    let index = Int(second % UInt64(state.buckets.count))
    if state.buckets[index].second != Int64(second) {
      state.buckets[index] = Bucket(second: Int64(second))
    }
    return index
  }
}
