import MeshConfig
import MeshTracing
import NIOConcurrencyHelpers
import NIOCore
import Synchronization

/// The parts of the mesh config calls are routed and authorized by: for each service, its
/// endpoints, routes and policies (a `ServiceTarget`), and this service's authorization. A new
/// config replaces them whole; a call reads them once, when it starts. What the sidecar has
/// learnt — each endpoint's state, each service's circuit breaker and retry budget — is kept
/// across configs, so calls in flight stay counted and a bad endpoint stays known.
public final class MeshRouting: Sendable {
  /// What an outbound call is routed by.
  struct Outbound {
    var targets: [String: ServiceTarget]
  }

  private struct Table {
    var outbound: Outbound
    var policy: Authorization
  }

  /// What outlives a config, per service.
  private struct Learnt {
    var limits: [String: ConcurrencyLimit] = [:]
    var pending: [String: ConcurrencyLimit] = [:]
    var budgets: [String: RetryBudgetWindow] = [:]
    var endpoints: [String: [Address: EndpointState]] = [:]
    var roundRobin: [String: RoundRobin] = [:]
  }

  private let table: NIOLockedValueBox<Table>
  private let learnt = NIOLockedValueBox(Learnt())
  private let service: String

  init(_ mesh: MeshConfig, service: String) {
    self.service = service
    table = NIOLockedValueBox(
      Table(outbound: Outbound(targets: [:]), policy: mesh.policy(for: service)))
    apply(mesh)
  }

  /// Routes and authorizes by `mesh` from now on; calls in flight are not affected.
  public func apply(_ mesh: MeshConfig) {
    let targets = learnt.withLockedValue { learnt in
      var targets: [String: ServiceTarget] = [:]
      var endpointsKept: [String: [Address: EndpointState]] = [:]
      for (name, service) in mesh.services {
        let maximum = service.circuitBreaker.maxConcurrentRequests
        let limit = learnt.limits[name] ?? ConcurrencyLimit(maximum: maximum)
        limit.setMaximum(maximum)
        learnt.limits[name] = limit
        let waiting = service.circuitBreaker.maxPendingRequests
        let pending = learnt.pending[name] ?? ConcurrencyLimit(maximum: waiting)
        pending.setMaximum(waiting)
        learnt.pending[name] = pending
        let budget = learnt.budgets[name] ?? RetryBudgetWindow(service.retryBudget)
        budget.update(service.retryBudget)
        learnt.budgets[name] = budget
        let roundRobin = learnt.roundRobin[name] ?? RoundRobin()
        learnt.roundRobin[name] = roundRobin

        let identity = "spiffe://\(mesh.trustDomain)/svc/\(name)"
        var kept: [Address: EndpointState] = [:]
        let endpoints = service.endpoints.map { configured in
          let endpoint = Endpoint(
            host: configured.address.host, port: configured.address.port,
            expectedIdentity: identity)
          let previous = learnt.endpoints[name]?[configured.address]
          let state =
            previous.flatMap {
              $0.endpoint == endpoint && $0.labels == configured.labels ? $0 : nil
            }
            ?? EndpointState(endpoint: endpoint, labels: configured.labels, carrying: previous)
          kept[configured.address] = state
          return state
        }
        endpointsKept[name] = kept
        targets[name] = ServiceTarget(
          name: name, endpoints: endpoints, routes: mesh.effectiveRoutes(for: name),
          service: service, limit: limit, pending: pending, budget: budget,
          roundRobin: roundRobin)
      }
      learnt.endpoints = endpointsKept
      return targets
    }
    let new = Table(outbound: Outbound(targets: targets), policy: mesh.policy(for: service))
    table.withLockedValue { $0 = new }
  }

  var outbound: Outbound { table.withLockedValue { $0.outbound } }
  var policy: Authorization { table.withLockedValue { $0.policy } }

  /// Every service's endpoints and what is known of them, for the admin port's `/endpoints`.
  func endpointReports() -> [(service: String, endpoints: [EndpointState])] {
    outbound.targets.sorted { $0.key < $1.key }.map { ($0.key, $0.value.endpoints) }
  }

  /// The same, as values: what the sidecar reports to the control plane for the dashboard.
  public func endpointSnapshots() -> [EndpointSnapshot] {
    let now = NIODeadline.now()
    return endpointReports().flatMap { service in
      service.endpoints.map { state in
        let r = state.report(now: now)
        return EndpointSnapshot(
          service: service.service, address: r.address, labels: r.labels, ejected: r.ejected,
          ejectedForSeconds: r.ejectedForSeconds, inFlight: r.inFlight,
          latencyMilliseconds: r.latencyMilliseconds, consecutiveFailures: r.consecutiveFailures,
          ejections: r.ejections, calls: r.calls, failures: r.failures)
      }
    }
  }
}

/// The calls in flight to one service, against its circuit breaker's maximum.
final class ConcurrencyLimit: Sendable {
  private let inFlight = Synchronization.Atomic<Int>(0)
  private let limit: Synchronization.Atomic<Int>

  init(maximum: Int) { limit = Synchronization.Atomic(maximum) }

  var maximum: Int { limit.load(ordering: .relaxed) }

  func setMaximum(_ value: Int) { limit.store(value, ordering: .relaxed) }

  /// Takes a place; false when `maximum` calls are in flight already.
  func acquire() -> Bool {
    let now = inFlight.wrappingAdd(1, ordering: .relaxed).newValue
    guard now <= maximum else {
      inFlight.wrappingSubtract(1, ordering: .relaxed)
      return false
    }
    return true
  }

  func release() { inFlight.wrappingSubtract(1, ordering: .relaxed) }
}

/// Spreads calls over endpoints in turn.
final class RoundRobin: Sendable {
  private let counter = Synchronization.Atomic<Int>(0)

  func next(_ count: Int) -> Int {
    let turn = UInt(bitPattern: counter.wrappingAdd(1, ordering: .relaxed).newValue)
    return Int(turn % UInt(count))
  }
}
