import MeshConfig
import NIOConcurrencyHelpers
import NIOCore
import Synchronization

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

/// One endpoint of a service as a caller's sidecar sees it: where it is, its labels, and what
/// the balancer and outlier detection have learnt of it — calls in flight, a peak-EWMA of its
/// latency, failures in a row, ejections. Shared by the event loops and kept across config
/// changes (keyed by address), so a new config does not forget a bad endpoint.
final class EndpointState: Sendable {
  let endpoint: Endpoint
  let labels: [String: String]
  private let inFlight = Atomic<Int>(0)
  private let stats: NIOLockedValueBox<Stats>

  /// An endpoint with no measurement yet is taken to answer in this long: low enough to be
  /// tried, high enough that one that never answers does not draw every call.
  static let defaultLatency: Double = 5e6  // ns
  /// A failure counts as an answer at least this slow, so a peer that fails fast does not
  /// draw calls by its speed.
  static let failurePenalty: Double = 100e6  // ns
  /// The EWMA forgets with this time constant. Peak-EWMA believes a slow answer at once, so
  /// one hiccup of a fast endpoint makes it look slow until the estimate decays: with
  /// Linkerd's 10 s that lasted tens of seconds and sent a 100 ms-slower instance 0.6–1.9 % of
  /// the calls in `theDefaultBalancerAvoidsASlowInstance`; with 2 s it gets 0.1 %.
  static let decay: Double = 2e9  // ns

  struct Stats {
    var latency = EndpointState.defaultLatency
    var stamp = NIODeadline.now()
    var consecutiveFailures = 0
    var ejectedUntil: NIODeadline?
    var ejections = 0
    var calls = 0
    var failures = 0
  }

  init(endpoint: Endpoint, labels: [String: String], carrying previous: EndpointState? = nil) {
    self.endpoint = endpoint
    self.labels = labels
    // What was learnt carries over; calls in flight stay counted on the state they started on.
    stats = NIOLockedValueBox(previous?.stats.withLockedValue { $0 } ?? Stats())
  }

  /// Calls in flight to the endpoint.
  var load: Int { inFlight.load(ordering: .relaxed) }

  func callStarted() { inFlight.wrappingAdd(1, ordering: .relaxed) }

  /// An attempt ended without an answer worth learning from (the caller cancelled it).
  func callCancelled() { inFlight.wrappingSubtract(1, ordering: .relaxed) }

  /// Peak-EWMA's cost: the decayed latency estimate times the calls that would share it.
  func cost(now: NIODeadline) -> Double {
    let latency = stats.withLockedValue { Self.decayed($0, now: now) }
    return latency * Double(load + 1)
  }

  private static func decayed(_ stats: Stats, now: NIODeadline) -> Double {
    decayed(stats, weight: weight(stats, now: now))
  }

  /// Towards the default with time, so an endpoint slow long ago is tried again.
  private static func decayed(_ stats: Stats, weight: Double) -> Double {
    stats.latency * weight + defaultLatency * (1 - weight)
  }

  /// How much of the estimate still stands after the time since it was last updated.
  private static func weight(_ stats: Stats, now: NIODeadline) -> Double {
    exp(-Double(max(0, (now - stats.stamp).nanoseconds)) / decay)
  }

  /// Whether the endpoint is ejected at `now`.
  func isEjected(now: NIODeadline) -> Bool {
    stats.withLockedValue { stats in
      guard let until = stats.ejectedUntil else { return false }
      return now < until
    }
  }

  /// An attempt ended. `latency` is the time to its first response frame (or to its failure).
  /// True when the failures in a row have reached `outlier.consecutiveFailures` and the
  /// endpoint is not ejected already: the service then decides whether it may `eject` it.
  func callEnded(
    latency: TimeAmount, failed: Bool, now: NIODeadline, outlier: OutlierDetection
  )
    -> Bool
  {
    inFlight.wrappingSubtract(1, ordering: .relaxed)
    return stats.withLockedValue { stats in
      let observed = Double(latency.nanoseconds)
      let sample = failed ? max(observed, Self.failurePenalty) : observed
      let weight = Self.weight(stats, now: now)
      let current = Self.decayed(stats, weight: weight)
      // Peak: a slower answer is believed at once; a faster one only on average.
      stats.latency = sample > current ? sample : current * weight + sample * (1 - weight)
      stats.stamp = now
      stats.calls += 1
      guard failed else {
        stats.consecutiveFailures = 0
        return false
      }
      stats.failures += 1
      stats.consecutiveFailures += 1
      if let until = stats.ejectedUntil, now < until { return false }
      return stats.consecutiveFailures >= outlier.consecutiveFailures
    }
  }

  /// Leaves the endpoint out for `base` times the number of times it has been ejected.
  func eject(now: NIODeadline, base: Duration) {
    stats.withLockedValue { stats in
      stats.ejections += 1
      stats.consecutiveFailures = 0
      let time = TimeAmount(base).nanoseconds * Int64(stats.ejections)
      stats.ejectedUntil = now + .nanoseconds(time)
    }
  }

  /// What `/endpoints` shows of it.
  func report(now: NIODeadline) -> Report {
    stats.withLockedValue { stats in
      let ejected = stats.ejectedUntil.map { now < $0 } ?? false
      return Report(
        address: "\(endpoint)", labels: labels, ejected: ejected,
        ejectedForSeconds: ejected
          ? Double((stats.ejectedUntil! - now).nanoseconds) / 1e9 : 0,
        inFlight: load, latencyMilliseconds: Self.decayed(stats, now: now) / 1e6,
        consecutiveFailures: stats.consecutiveFailures, ejections: stats.ejections,
        calls: stats.calls, failures: stats.failures)
    }
  }

  /// `/endpoints`: one object per service, its endpoints in config order.
  static func json(_ services: [(service: String, endpoints: [EndpointState])]) -> String {
    let now = NIODeadline.now()
    let quoted = jsonString
    func number(_ value: Double) -> String {
      let rounded = (value * 1000).rounded() / 1000
      return rounded == rounded.rounded() ? "\(Int(rounded))" : "\(rounded)"
    }
    let entries = services.map { service in
      let endpoints = service.endpoints.map { state in
        let r = state.report(now: now)
        let labels = r.labels.sorted { $0.key < $1.key }
          .map { "\(quoted($0.key)):\(quoted($0.value))" }.joined(separator: ",")
        return "{\"address\":\(quoted(r.address)),\"labels\":{\(labels)},"
          + "\"state\":\"\(r.ejected ? "ejected" : "active")\","
          + "\"ejected_for_seconds\":\(number(r.ejectedForSeconds)),\"in_flight\":\(r.inFlight),"
          + "\"latency_ms\":\(number(r.latencyMilliseconds)),"
          + "\"consecutive_failures\":\(r.consecutiveFailures),\"ejections\":\(r.ejections),"
          + "\"calls\":\(r.calls),\"failures\":\(r.failures)}"
      }
      return
        "{\"service\":\(quoted(service.service)),\"endpoints\":[\(endpoints.joined(separator: ","))]}"
    }
    return "{\"services\":[\(entries.joined(separator: ","))]}\n"
  }

  struct Report {
    var address: String
    var labels: [String: String]
    var ejected: Bool
    var ejectedForSeconds: Double
    var inFlight: Int
    var latencyMilliseconds: Double
    var consecutiveFailures: Int
    var ejections: Int
    var calls: Int
    var failures: Int
  }
}

/// Picks an endpoint for an attempt among a route's candidates: ejected endpoints are left
/// out (unless every candidate is ejected — then all are used, as Envoy's panic threshold
/// does), endpoints an earlier attempt of the call used are avoided where another exists, and
/// the service's balancing picks among the rest.
struct Balancer {
  var balancing: LoadBalancing
  var roundRobin: RoundRobin

  func pick(
    _ candidates: [EndpointState], avoiding tried: [EndpointState], now: NIODeadline,
    random: (Int) -> Int = { Int.random(in: 0..<$0) }
  ) -> EndpointState? {
    guard !candidates.isEmpty else { return nil }
    // Ejections are rare: the common case copies nothing.
    var available = candidates
    if candidates.contains(where: { $0.isEjected(now: now) }) {
      available = candidates.filter { !$0.isEjected(now: now) }
      if available.isEmpty { available = candidates }
    }
    if !tried.isEmpty {
      let fresh = available.filter { endpoint in !tried.contains { $0 === endpoint } }
      if !fresh.isEmpty { available = fresh }
    }
    if available.count == 1 { return available[0] }
    switch balancing {
    case .roundRobin:
      return available[roundRobin.next(available.count)]
    case .leastRequest:
      let (a, b) = Self.two(available.count, random)
      return available[a].load <= available[b].load ? available[a] : available[b]
    case .p2cEWMA:
      let (a, b) = Self.two(available.count, random)
      return available[a].cost(now: now) <= available[b].cost(now: now)
        ? available[a] : available[b]
    }
  }

  /// Two different indexes below `count` (at least 2).
  private static func two(_ count: Int, _ random: (Int) -> Int) -> (Int, Int) {
    let a = random(count)
    let b = (a + 1 + random(count - 1)) % count
    return (a, b)
  }
}
