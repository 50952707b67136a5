import MeshConfig
import NIOCore
import NIOHPACK

/// Everything a caller's sidecar routes calls to one service by, under one config: the
/// service's endpoints (their state kept across configs), its routes in order, and its
/// policies — balancing, outlier detection, the circuit breaker and the retry budget.
final class ServiceTarget: Sendable {
  let name: String
  let endpoints: [EndpointState]
  /// The service's routes, ending with the default route.
  let routes: [Route]
  let balancer: Balancer
  let outlier: OutlierDetection
  /// Whether a method (`package.Service/Method`) may be tried again after it reached the app.
  let idempotency: [String: Bool]
  let streaming: Set<String>
  let limit: ConcurrencyLimit
  /// Calls waiting for a connection to one of the service's endpoints, against
  /// `circuitBreaker.maxPendingRequests`.
  let pending: ConcurrencyLimit
  let budget: RetryBudgetWindow

  init(
    name: String, endpoints: [EndpointState], routes: [Route],
    service: MeshConfig.Service, limit: ConcurrencyLimit, pending: ConcurrencyLimit,
    budget: RetryBudgetWindow, roundRobin: RoundRobin
  ) {
    self.name = name
    self.endpoints = endpoints
    self.routes = routes
    self.balancer = Balancer(balancing: service.loadBalancing, roundRobin: roundRobin)
    self.outlier = service.outlierDetection
    self.idempotency = service.idempotency
    self.streaming = service.streaming
    self.limit = limit
    self.pending = pending
    self.budget = budget
  }

  /// The first route that matches a call to `path` with `headers`.
  func route(path: String, headers: HPACKHeaders) -> Route {
    for route in routes where route.match.matches(path: path, header: { headers.first(name: $0) }) {
      return route
    }
    return routes.last ?? Route(service: name, name: "default")
  }

  /// Whether the method of `path` (`/package.Service/Method`) may be retried once it may have
  /// reached the app: what the config or the service's descriptors say, else no.
  func isIdempotent(path: String) -> Bool {
    idempotency[String(path.dropFirst())] ?? false
  }

  /// Whether the method of `path` streams its responses, which puts it beyond route timeouts.
  func isStreaming(path: String) -> Bool {
    streaming.contains(String(path.dropFirst()))
  }

  /// The endpoints a call on `route` may go to: all of them, or the subset its traffic split
  /// draws (by weight) — nil with the subset's labels when no endpoint carries them.
  func candidates(
    for route: Route, draw: (Int) -> Int = { Int.random(in: 0..<$0) }
  )
    -> Result<[EndpointState], SubsetMissing>
  {
    guard !route.split.isEmpty else { return .success(endpoints) }
    let total = route.split.reduce(0) { $0 + $1.weight }
    var ticket = draw(total)
    var subset = route.split[route.split.count - 1]
    for candidate in route.split {
      if ticket < candidate.weight {
        subset = candidate
        break
      }
      ticket -= candidate.weight
    }
    let members = endpoints.filter { endpoint in
      subset.labels.allSatisfy { endpoint.labels[$0.key] == $0.value }
    }
    guard !members.isEmpty else { return .failure(SubsetMissing(labels: subset.labels)) }
    return .success(members)
  }

  struct SubsetMissing: Error {
    var labels: [String: String]
    var description: String {
      labels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
    }
  }

  /// An attempt on `endpoint` ended: the balancer learns its latency, and enough failures in a
  /// row eject it — unless that would take more than the service's maximum share out.
  /// Returns whether the endpoint was ejected.
  @discardableResult
  func attemptEnded(
    _ endpoint: EndpointState, latency: TimeAmount, failed: Bool, metrics: SidecarMetrics?
  ) -> Bool {
    let now = NIODeadline.now()
    guard endpoint.callEnded(latency: latency, failed: failed, now: now, outlier: outlier)
    else { return false }
    let ejected = endpoints.filter { $0.isEjected(now: now) }.count
    guard ejected + 1 <= endpoints.count * outlier.maxEjectionPercent / 100 else { return false }
    endpoint.eject(now: now, base: outlier.baseEjectionTime)
    metrics?.recordEjection(service: name, endpoint: "\(endpoint.endpoint)")
    return true
  }
}

/// What the caller's sidecar decided for one outbound call when it arrived: where its
/// attempts may go and under which route's policies. Lives with the call, on its event loop.
struct OutboundPlan {
  let target: ServiceTarget
  let route: Route
  let candidates: [EndpointState]
  var retry: RetryState
  /// Each attempt's own limit.
  let perTryTimeout: TimeAmount?
  /// An injected delay before the first attempt.
  let delay: TimeAmount?
  /// Endpoints earlier attempts went to, avoided by later ones where possible.
  var tried: [EndpointState] = []
  /// The endpoint of the attempt in flight.
  var current: EndpointState?
}

/// Whether a gRPC status says the endpoint failed (rather than the call): the codes a broken
/// or overloaded server answers with. They count towards outlier detection.
func isEndpointFailure(_ code: Int) -> Bool {
  code == 2 || code == 13 || code == 14 || code == 15
}
