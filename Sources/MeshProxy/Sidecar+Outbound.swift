import MeshConfig
import NIOCore
import NIOHPACK

extension Sidecar {
  /// Where an outbound call goes, decided once when its request headers arrive. The steps run
  /// top to bottom; what the call holds (its place in the circuit breaker) is taken last, so a
  /// call refused earlier holds nothing. What happens afterwards — the deadline, the attempts,
  /// the balancer's pick for each — is `ForwardedCall`'s, under the plan made here.
  static func routeOutbound(
    _ request: HTTP2Request, table: MeshRouting.Outbound, pool: PoolSet.Pools,
    metrics: SidecarMetrics, chance: (Double) -> Bool = { Double.random(in: 0..<100) < $0 }
  ) -> CallRoute {
    // Only `/package.Service/Method`: no spelling of a path slips past a rule.
    let path = request.path
    if let rejection = checkPath(path) { return rejection }

    // The service, named by `:authority`.
    guard let authority = request.authority else {
      return .reject(
        .invalidArgument, "the request has no :authority, which names the service to call")
    }
    let service = authority.split(separator: ":").first.map(String.init) ?? ""
    guard let target = table.targets[service], !target.endpoints.isEmpty else {
      return .reject(.unavailable, "no route to '\(service)'")
    }

    // The first of the service's routes that matches the call's method and headers.
    let route = target.route(path: path, headers: request.headers)
    let routeName = route.name ?? "default"

    // Fault injection, as a chaos drill asks: an abort is answered before anything is taken.
    if let abort = route.fault?.abort, chance(abort.percent) {
      metrics.recordFault(service: service, kind: "abort")
      return .reject(
        ProxyStatus(rawValue: abort.code), "fault injected by route '\(routeName)' of '\(service)'",
        fault: "abort")
    }
    let delay = route.fault?.delay.flatMap { chance($0.percent) ? TimeAmount($0.duration) : nil }

    // The traffic split: the subset of the service's endpoints this call may go to.
    let candidates: [EndpointState]
    switch target.candidates(for: route) {
    case .success(let endpoints): candidates = endpoints
    case .failure(let missing):
      return .reject(
        .unavailable,
        "no endpoint of '\(service)' carries \(missing.description) (route '\(routeName)')")
    }

    // The circuit breaker: past the limit a call is answered at once, not queued.
    guard target.limit.acquire() else {
      metrics.recordOverflow(service: service, limit: "maxConcurrentRequests")
      return .reject(
        .unavailable,
        """
        circuit breaker: \(target.limit.maximum) calls to '\(service)' are in flight \
        (maxConcurrentRequests)
        """
      )
    }

    // Every admitted call adds to the service's retry budget.
    target.budget.recordCall()
    let plan = OutboundPlan(
      target: target, route: route, candidates: candidates,
      retry: RetryState(policy: route.retries, idempotent: target.isIdempotent(path: path)),
      perTryTimeout: route.perTryTimeout.map(TimeAmount.init), delay: delay)
    return .outbound(plan, pool.mesh, limit: target.limit)
  }
}
