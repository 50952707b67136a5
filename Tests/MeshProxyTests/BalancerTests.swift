import MeshConfig
import NIOCore
import Testing

@testable import MeshProxy

/// Which endpoint an attempt goes to, and when one is left out.
@Suite struct BalancerTests {
  func endpoints(_ count: Int, labels: [[String: String]] = []) -> [EndpointState] {
    (0..<count).map { index in
      EndpointState(
        endpoint: Endpoint(host: "10.0.0.\(index + 1)", port: 7000),
        labels: index < labels.count ? labels[index] : [:])
    }
  }

  func target(_ endpoints: [EndpointState], service: MeshConfig.Service = .init()) -> ServiceTarget
  {
    ServiceTarget(
      name: "orders", endpoints: endpoints, routes: [Route(service: "orders", name: "default")],
      service: service, limit: ConcurrencyLimit(maximum: 10),
      pending: ConcurrencyLimit(maximum: 10),
      budget: RetryBudgetWindow(RetryBudget()), roundRobin: RoundRobin())
  }

  @Test func peakEWMAPrefersTheFasterOfTheTwoItDraws() {
    let all = endpoints(2)
    let outlier = OutlierDetection()
    let now = NIODeadline.now()
    for _ in 0..<3 {
      all[0].callStarted()
      _ = all[0].callEnded(latency: .milliseconds(50), failed: false, now: now, outlier: outlier)
      all[1].callStarted()
      _ = all[1].callEnded(latency: .milliseconds(1), failed: false, now: now, outlier: outlier)
    }
    let balancer = Balancer(balancing: .p2cEWMA, roundRobin: RoundRobin())
    for draw in 0..<2 {
      let picked = balancer.pick(all, avoiding: [], now: now, random: { _ in draw })
      #expect(picked === all[1])
    }
  }

  @Test func aSlowAnswerIsBelievedAtOnceAFastOneOnAverage() {
    let endpoint = endpoints(1)[0]
    let outlier = OutlierDetection()
    let now = NIODeadline.now()
    endpoint.callStarted()
    _ = endpoint.callEnded(latency: .milliseconds(100), failed: false, now: now, outlier: outlier)
    #expect(abs(endpoint.cost(now: now) - 100e6) < 1e5)
    endpoint.callStarted()
    _ = endpoint.callEnded(latency: .milliseconds(1), failed: false, now: now, outlier: outlier)
    // No time passed: the fast answer does not yet lower the estimate.
    #expect(endpoint.cost(now: now) > 99e6)
    // Calls in flight multiply the cost.
    endpoint.callStarted()
    #expect(endpoint.cost(now: now) > 199e6)
  }

  @Test func leastRequestPicksTheLessLoaded() {
    let all = endpoints(2)
    all[0].callStarted()
    all[0].callStarted()
    let balancer = Balancer(balancing: .leastRequest, roundRobin: RoundRobin())
    #expect(balancer.pick(all, avoiding: [], now: .now(), random: { _ in 0 }) === all[1])
  }

  @Test func roundRobinTakesEachInTurn() {
    let all = endpoints(3)
    let balancer = Balancer(balancing: .roundRobin, roundRobin: RoundRobin())
    let picks = (0..<6).map { _ in balancer.pick(all, avoiding: [], now: .now())! }
    for endpoint in all { #expect(picks.filter { $0 === endpoint }.count == 2) }
  }

  @Test func aRetryAvoidsTheEndpointsAlreadyTried() {
    let all = endpoints(3)
    let balancer = Balancer(balancing: .p2cEWMA, roundRobin: RoundRobin())
    for _ in 0..<20 {
      let picked = balancer.pick(all, avoiding: [all[0], all[1]], now: .now())
      #expect(picked === all[2])
    }
    // With nothing else left, a tried endpoint is used again.
    #expect(balancer.pick([all[0]], avoiding: [all[0]], now: .now()) === all[0])
  }

  @Test func consecutiveFailuresEjectAtMostTheMaximumShare() {
    let all = endpoints(3)
    let service = target(all)
    for endpoint in all {
      for _ in 0..<5 {
        endpoint.callStarted()
        service.attemptEnded(endpoint, latency: .milliseconds(1), failed: true, metrics: nil)
      }
    }
    let now = NIODeadline.now()
    // 50 % of three endpoints: one ejected, the others stay however they fail.
    #expect(all.filter { $0.isEjected(now: now) }.count == 1)
    #expect(all[0].isEjected(now: now))
    // For 30 s, then back.
    #expect(!all[0].isEjected(now: now + .seconds(31)))
    let balancer = Balancer(balancing: .roundRobin, roundRobin: RoundRobin())
    for _ in 0..<6 { #expect(balancer.pick(all, avoiding: [], now: now) !== all[0]) }
  }

  @Test func aSuccessResetsTheFailuresInARow() {
    let all = endpoints(2)
    let service = target(all)
    for failed in [true, true, true, true, false, true, true, true, true] {
      all[0].callStarted()
      service.attemptEnded(all[0], latency: .milliseconds(1), failed: failed, metrics: nil)
    }
    #expect(!all[0].isEjected(now: .now()))
  }

  @Test func theSecondEjectionLastsTwiceAsLong() {
    let endpoint = endpoints(1)[0]
    let now = NIODeadline.now()
    endpoint.eject(now: now, base: .seconds(30))
    #expect(!endpoint.isEjected(now: now + .seconds(31)))
    endpoint.eject(now: now + .seconds(31), base: .seconds(30))
    #expect(endpoint.isEjected(now: now + .seconds(31 + 59)))
    #expect(!endpoint.isEjected(now: now + .seconds(31 + 61)))
  }

  @Test func aSplitDrawsASubsetByWeight() throws {
    let all = endpoints(3, labels: [["version": "v1"], ["version": "v1"], ["version": "v2"]])
    let service = target(all)
    let route = Route(
      service: "orders",
      split: [
        WeightedSubset(labels: ["version": "v1"], weight: 90),
        WeightedSubset(labels: ["version": "v2"], weight: 10),
      ])
    #expect(try service.candidates(for: route, draw: { _ in 0 }).get().count == 2)
    #expect(try service.candidates(for: route, draw: { _ in 89 }).get().count == 2)
    let canary = try service.candidates(for: route, draw: { _ in 90 }).get()
    #expect(canary.count == 1 && canary[0] === all[2])
    let missing = Route(
      service: "orders", split: [WeightedSubset(labels: ["version": "v3"], weight: 1)])
    guard case .failure(let error) = service.candidates(for: missing) else {
      Issue.record("a subset without endpoints was drawn")
      return
    }
    #expect(error.description == "version=v3")
  }
}
