import MeshTracing
import NIOConcurrencyHelpers
import NIOCore

/// The sidecar's counters, rendered in Prometheus's text format on the admin port: calls by
/// direction, service, method and gRPC status, their latency, connections by kind, and TLS
/// handshake failures by reason. Recorded once per call (not per frame), under one lock.
final class SidecarMetrics: Sendable {
  struct CallKey: Hashable {
    var direction: String
    var service: String
    var method: String
    var code: String
  }

  private struct Series {
    var count = 0
    var sum = 0.0
    var buckets = [Int](repeating: 0, count: SidecarMetrics.bounds.count)
  }

  private struct State {
    var calls: [CallKey: Series] = [:]
    var tlsFailures: [String: Int] = [:]
    var connectionsOpened: [String: Int] = [:]
    var connectionsOpen: [String: Int] = [:]
    /// The resilience policies' decisions, by counter and labels.
    var decisions: [PolicyCounter: [String: Int]] = [:]
  }

  /// Counters of what the resilience policies decided.
  enum PolicyCounter: String, CaseIterable {
    case overflows = "trellis_circuit_breaker_overflows_total"
    case retries = "trellis_retries_total"
    case budgetExhausted = "trellis_retry_budget_exhausted_total"
    case ejections = "trellis_outlier_ejections_total"
    case deadlines = "trellis_deadline_exceeded_total"
    case faults = "trellis_faults_injected_total"

    var help: String {
      switch self {
      case .overflows:
        "Calls answered UNAVAILABLE at once by a circuit breaker, by service and limit."
      case .retries: "Attempts after the first, by service and what ended the one before."
      case .budgetExhausted: "Retries not made because the service's retry budget was spent."
      case .ejections: "Endpoints ejected by outlier detection, by service and endpoint."
      case .deadlines: "Calls ended DEADLINE_EXCEEDED by the sidecar, by direction and service."
      case .faults: "Faults injected by a route, by service and kind (abort, delay)."
      }
    }
  }

  private func count(_ counter: PolicyCounter, _ labels: [(String, String)]) {
    let key = labels.map { "\($0.0)=\"\(escape($0.1))\"" }.joined(separator: ",")
    state.withLockedValue { $0.decisions[counter, default: [:]][key, default: 0] += 1 }
  }

  func recordRetry(service: String, reason: String) {
    count(.retries, [("service", service), ("reason", reason)])
  }

  func recordRetryBudgetExhausted(service: String) {
    count(.budgetExhausted, [("service", service)])
  }

  func recordEjection(service: String, endpoint: String) {
    count(.ejections, [("service", service), ("endpoint", endpoint)])
  }

  func recordDeadlineExceeded(direction: String, service: String) {
    count(.deadlines, [("direction", direction), ("service", service)])
  }

  func recordFault(service: String, kind: String) {
    count(.faults, [("service", service), ("kind", kind)])
  }

  /// Latency bucket bounds in seconds.
  static let bounds: [Double] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
  ]
  /// More distinct methods than this (a caller inventing paths) are counted as "other".
  static let maximumSeries = 2_000

  private let state = NIOLockedValueBox(State())

  func recordCall(
    direction: String, service: String, method: String, code: String, seconds: Double
  ) {
    state.withLockedValue { state in
      var key = CallKey(direction: direction, service: service, method: method, code: code)
      if state.calls[key] == nil, state.calls.count >= Self.maximumSeries { key.method = "other" }
      var series = state.calls[key] ?? Series()
      series.count += 1
      series.sum += seconds
      if let index = Self.bounds.firstIndex(where: { seconds <= $0 }) { series.buckets[index] += 1 }
      state.calls[key] = series
    }
  }

  /// A connection of `kind` opened: `inbound` or `outbound` (accepted), `mesh` (to a peer
  /// sidecar) or `app` (to the local app).
  func connectionOpened(kind: String) {
    state.withLockedValue {
      $0.connectionsOpened[kind, default: 0] += 1
      $0.connectionsOpen[kind, default: 0] += 1
    }
  }

  func connectionClosed(kind: String) {
    state.withLockedValue { $0.connectionsOpen[kind, default: 0] -= 1 }
  }

  func recordOverflow(service: String, limit: String) {
    count(.overflows, [("service", service), ("limit", limit)])
  }

  func recordTLSFailure(reason: String) {
    state.withLockedValue { $0.tlsFailures[reason, default: 0] += 1 }
  }

  func requests(direction: String, code: String) -> Int {
    state.withLockedValue { state in
      state.calls.filter { $0.key.direction == direction && $0.key.code == code }
        .reduce(0) { $0 + $1.value.count }
    }
  }

  /// The Prometheus text exposition; `extra` appends gauges owned elsewhere.
  func render(extra: String = "") -> String {
    let snapshot = state.withLockedValue { $0 }
    var out = ""
    out +=
      """
      # HELP trellis_requests_total Calls handled, by direction, service, method and gRPC \
      status.\n
      """
    out += "# TYPE trellis_requests_total counter\n"
    let keys = snapshot.calls.keys.sorted {
      ($0.direction, $0.service, $0.method, $0.code) < (
        $1.direction, $1.service, $1.method, $1.code
      )
    }
    for key in keys {
      out += "trellis_requests_total{\(labels(key))} \(snapshot.calls[key]!.count)\n"
    }
    out +=
      "# HELP trellis_request_duration_seconds Time from a call's request headers to its end.\n"
    out += "# TYPE trellis_request_duration_seconds histogram\n"
    for key in keys {
      let series = snapshot.calls[key]!
      var cumulative = 0
      for (index, bound) in Self.bounds.enumerated() {
        cumulative += series.buckets[index]
        out +=
          "trellis_request_duration_seconds_bucket{\(labels(key)),le=\"\(bound)\"} \(cumulative)\n"
      }
      out += "trellis_request_duration_seconds_bucket{\(labels(key)),le=\"+Inf\"} \(series.count)\n"
      out += "trellis_request_duration_seconds_sum{\(labels(key))} \(series.sum)\n"
      out += "trellis_request_duration_seconds_count{\(labels(key))} \(series.count)\n"
    }
    out +=
      "# HELP trellis_tls_handshake_failures_total Refused or failed TLS handshakes, by reason.\n"
    out += "# TYPE trellis_tls_handshake_failures_total counter\n"
    for (reason, count) in snapshot.tlsFailures.sorted(by: { $0.key < $1.key }) {
      out += "trellis_tls_handshake_failures_total{reason=\"\(escape(reason))\"} \(count)\n"
    }
    out +=
      """
      # HELP trellis_connections_opened_total Connections opened: inbound and outbound (accepted), \
      mesh (to peer sidecars), app (to the local app).\n
      """
    out += "# TYPE trellis_connections_opened_total counter\n"
    for (kind, count) in snapshot.connectionsOpened.sorted(by: { $0.key < $1.key }) {
      out += "trellis_connections_opened_total{kind=\"\(kind)\"} \(count)\n"
    }
    out += "# HELP trellis_connections_open Connections open now, by kind.\n"
    out += "# TYPE trellis_connections_open gauge\n"
    for (kind, count) in snapshot.connectionsOpen.sorted(by: { $0.key < $1.key }) {
      out += "trellis_connections_open{kind=\"\(kind)\"} \(count)\n"
    }
    for counter in PolicyCounter.allCases {
      out += "# HELP \(counter.rawValue) \(counter.help)\n"
      out += "# TYPE \(counter.rawValue) counter\n"
      for (labels, count) in (snapshot.decisions[counter] ?? [:]).sorted(by: { $0.key < $1.key }) {
        out += "\(counter.rawValue){\(labels)} \(count)\n"
      }
    }
    return out + extra
  }

  private func labels(_ key: CallKey) -> String {
    """
    direction=\"\(key.direction)\",service=\"\(escape(key.service))\",method=\"\(escape(key.method))\",grpc_code=\"\(key.code)\"
    """
  }

  private func escape(_ value: String) -> String {
    var out = ""
    for character in value {
      switch character {
      case "\\": out += "\\\\"
      case "\"": out += "\\\""
      case "\n": out += "\\n"
      default: out.append(character)
      }
    }
    return out
  }
}

/// gRPC status codes by number, named as in the protocol (`grpc_code` labels).
func grpcCodeName(_ value: Substring) -> String {
  Int(value).map(GRPCStatusName.of) ?? "UNKNOWN"
}
