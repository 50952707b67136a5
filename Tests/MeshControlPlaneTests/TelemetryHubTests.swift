import Foundation
import MeshProtos
import Testing

@testable import MeshControlPlane

/// The live figures: per service from the inbound calls its sidecars report, and per edge of
/// the service graph from the outbound calls of the callers' sidecars.
@Suite struct TelemetryHubTests {
  func stats(
    _ direction: String, _ service: String, requests: UInt64, failures: UInt64 = 0,
    method: String = "/shop.v1.PaymentService/Charge"
  ) -> Trellis_Mesh_V1_CallStats {
    var stats = Trellis_Mesh_V1_CallStats()
    stats.direction = direction
    stats.service = service
    stats.method = method
    stats.requests = requests
    stats.failures = failures
    // Every call in bucket 60: 50 µs × 1.1^60, about 15 ms.
    stats.latencyBuckets = Array(repeating: 0, count: 60) + [UInt32(requests)]
    stats.intervalMs = 1000
    return stats
  }

  func report(
    _ instance: String, _ calls: [Trellis_Mesh_V1_CallStats]
  )
    -> Trellis_Mesh_V1_TelemetryReport
  {
    var report = Trellis_Mesh_V1_TelemetryReport()
    report.instance = instance
    report.calls = calls
    return report
  }

  @Test func edgesComeFromTheCallersOutboundCalls() {
    let hub = TelemetryHub()
    let start = Date(timeIntervalSince1970: 1_000_000)
    let (_, controls) = AsyncStream.makeStream(of: Trellis_Mesh_V1_TapControl.self)
    let orders = hub.connect(service: "orders", instance: "o1", controls: controls)
    let gateway = hub.connect(service: "gateway", instance: "g1", controls: controls)
    let payments = hub.connect(service: "payments", instance: "p1", controls: controls)
    for second in 0..<10 {
      let now = start.addingTimeInterval(Double(second))
      hub.receive(
        report("o1", [stats("outbound", "payments", requests: 10, failures: 1)]), from: orders,
        now: now)
      // A report names its own service as the caller, whatever it says of others.
      hub.receive(
        report(
          "g1",
          [
            stats("outbound", "orders", requests: 5, method: "/shop.v1.OrderService/CreateOrder"),
            stats("inbound", "payments", requests: 1000),
          ]), from: gateway, now: now)
      hub.receive(
        report("p1", [stats("inbound", "payments", requests: 10)]), from: payments, now: now)
    }
    let now = start.addingTimeInterval(10)
    let edges = hub.top(service: "", byMethod: false, byEdge: true, now: now).rows
    #expect(edges.map { "\($0.caller)→\($0.service)" } == ["gateway→orders", "orders→payments"])
    let charge = edges[1]
    #expect(charge.requests == 100)
    #expect(abs(charge.successRate - 0.9) < 1e-9)
    #expect(abs(charge.requestsPerSecond - 10) < 1e-9)
    #expect(charge.p99Ms > 10 && charge.p99Ms < 20, "\(charge.p99Ms)")
    // The service's own row is its sidecars' inbound calls: the gateway's claim is not there.
    let services = hub.top(service: "payments", byMethod: false, now: now).rows
    #expect(services.map(\.service) == ["payments"] && services[0].requests == 100)
    // One service's callers; by method.
    let toPayments = hub.top(service: "payments", byMethod: true, byEdge: true, now: now).rows
    #expect(toPayments.map(\.caller) == ["orders"])
    #expect(toPayments.first?.method == "/shop.v1.PaymentService/Charge")
    // A minute later, nothing is left of them.
    #expect(hub.top(service: "", byMethod: false, byEdge: true, now: now + 61).rows.isEmpty)
  }

  /// A service's endpoints as each caller's sidecar last reported them; a later report
  /// replaces the earlier, and one without endpoints keeps them.
  /// A service's history: its inbound calls added up in 10-second steps, kept 15 minutes
  /// and reported after the minute's window has passed.
  @Test func historyIsKeptInTenSecondStepsForFifteenMinutes() {
    let hub = TelemetryHub()
    let start = Date(timeIntervalSince1970: 1_000_000)  // a multiple of 10
    let (_, controls) = AsyncStream.makeStream(of: Trellis_Mesh_V1_TapControl.self)
    let payments = hub.connect(service: "payments", instance: "p1", controls: controls)
    // 25 s of calls, 4 a second: steps of 10, 10 and 5 reports; one failure in the second.
    for second in 0..<25 {
      hub.receive(
        report("p1", [stats("inbound", "payments", requests: 4, failures: second == 12 ? 1 : 0)]),
        from: payments, now: start.addingTimeInterval(Double(second)))
    }
    var history = hub.top(service: "", byMethod: false, history: true, now: start + 30).rows
    #expect(history.map(\.service) == ["payments"])
    var steps = history.first?.history ?? []
    #expect(steps.map(\.startUnix) == [1_000_000, 1_000_010, 1_000_020])
    #expect(steps.map(\.requests) == [40, 40, 20])
    #expect(steps.map(\.failures) == [0, 1, 0])
    #expect(steps.first?.latencyBuckets.count == 61 && steps.first?.latencyBuckets.last == 40)
    // Not asked for, or per method: no history.
    #expect(hub.top(service: "", byMethod: false, now: start + 30).rows.first?.history == [])
    #expect(
      hub.top(service: "", byMethod: true, history: true, now: start + 30).rows
        .allSatisfy { $0.history.isEmpty })

    // Ten minutes on, the minute's window is empty but the history is still there.
    history = hub.top(service: "payments", byMethod: false, history: true, now: start + 600).rows
    #expect(history.count == 1 && history.first?.requests == 0)
    #expect(history.first?.history.count == 3)
    #expect(hub.top(service: "orders", byMethod: false, history: true, now: start + 600).rows == [])

    // A call 15 minutes after the first step began: that step is 15 minutes old and goes.
    hub.receive(
      report("p1", [stats("inbound", "payments", requests: 1)]), from: payments,
      now: start.addingTimeInterval(905))
    steps =
      hub.top(service: "", byMethod: false, history: true, now: start + 906).rows.first?
      .history ?? []
    #expect(steps.map(\.startUnix) == [1_000_010, 1_000_020, 1_000_900])
  }

  @Test func endpointsAreWhatTheCallersLastReported() {
    let hub = TelemetryHub()
    let (_, controls) = AsyncStream.makeStream(of: Trellis_Mesh_V1_TapControl.self)
    let orders = hub.connect(service: "orders", instance: "10.0.0.1:7001", controls: controls)
    func endpoint(_ address: String, ejected: Bool = false) -> Trellis_Mesh_V1_EndpointStatus {
      var endpoint = Trellis_Mesh_V1_EndpointStatus()
      endpoint.service = "payments"
      endpoint.address = address
      endpoint.ejected = ejected
      endpoint.inFlight = 2
      endpoint.latencyMs = 3.5
      return endpoint
    }
    let now = Date()
    var first = report("10.0.0.1:7001", [])
    first.endpoints = [endpoint("10.0.0.2:7002"), endpoint("10.0.0.3:7002")]
    hub.receive(first, from: orders, now: now)
    var second = report("10.0.0.1:7001", [])
    second.endpoints = [endpoint("10.0.0.2:7002", ejected: true), endpoint("10.0.0.3:7002")]
    hub.receive(second, from: orders, now: now + 5)
    hub.receive(report("10.0.0.1:7001", []), from: orders, now: now + 6)
    let seen = hub.endpoints(service: "payments", now: now + 7).callers
    #expect(seen.map(\.caller) == ["orders"] && seen.first?.instance == "10.0.0.1:7001")
    #expect(seen.first?.endpoints.map(\.ejected) == [true, false])
    #expect(hub.endpoints(service: "users", now: now + 7).callers.isEmpty)
    // A caller that stopped reporting them for a minute is no longer shown.
    #expect(hub.endpoints(service: "payments", now: now + 70).callers.isEmpty)
  }
}
