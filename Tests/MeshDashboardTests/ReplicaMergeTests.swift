import Foundation
import MeshDashboard
import MeshProtos
import Testing

/// Several replicas' answers as one: each knows only the sidecars connected to it.
@Suite struct ReplicaMergeTests {
  func row(
    _ service: String, requests: UInt64, failures: UInt64, bucket: Int, rps: Double,
    caller: String = ""
  ) -> Trellis_Mesh_V1_TopRow {
    var row = Trellis_Mesh_V1_TopRow()
    row.service = service
    row.caller = caller
    row.requests = requests
    row.failures = failures
    row.requestsPerSecond = rps
    row.instances = 1
    row.latencyBuckets = Array(repeating: 0, count: bucket) + [requests]
    return row
  }

  @Test func liveFiguresAddUpAndPercentilesAreReadFromTheSum() {
    var first = Trellis_Mesh_V1_TopResponse()
    first.windowSeconds = 60
    first.rows = [row("orders", requests: 90, failures: 0, bucket: 10, rps: 1.5)]
    var second = Trellis_Mesh_V1_TopResponse()
    second.windowSeconds = 60
    second.rows = [
      row("orders", requests: 10, failures: 5, bucket: 50, rps: 0.5),
      row("payments", requests: 4, failures: 0, bucket: 20, rps: 0.1, caller: "orders"),
    ]
    let merged = ReplicaMerge.top([first, second])
    #expect(merged.rows.map { "\($0.caller)/\($0.service)" } == ["/orders", "orders/payments"])
    let orders = merged.rows[0]
    #expect(orders.requests == 100 && orders.failures == 5 && orders.instances == 2)
    #expect(abs(orders.successRate - 0.95) < 1e-9 && abs(orders.requestsPerSecond - 2) < 1e-9)
    // 90 calls in bucket 10, 10 in bucket 50: the median from the first, the p99 from the
    // second's (slower) bucket.
    // (bucket i holds calls up to 50 µs × 1.1^i: bucket 10 up to 0.13 ms, 50 up to 5.9 ms)
    #expect(orders.p50Ms > 0.1 && orders.p50Ms <= 0.13, "\(orders.p50Ms)")
    #expect(orders.p99Ms > 5.3 && orders.p99Ms <= 5.9, "\(orders.p99Ms)")
  }

  /// Each replica keeps the history of the calls reported to it: steps at the same time add
  /// up, the others are kept, in time order.
  @Test func historiesAddUpStepByStep() {
    func step(_ start: Int64, _ requests: UInt64, bucket: Int) -> Trellis_Mesh_V1_HistoryStep {
      var step = Trellis_Mesh_V1_HistoryStep()
      step.startUnix = start
      step.requests = requests
      step.failures = 1
      step.latencyBuckets = Array(repeating: 0, count: bucket) + [requests]
      return step
    }
    var first = Trellis_Mesh_V1_TopResponse()
    first.rows = [row("orders", requests: 0, failures: 0, bucket: 0, rps: 0)]
    first.rows[0].history = [step(100, 5, bucket: 3), step(110, 2, bucket: 1)]
    var second = Trellis_Mesh_V1_TopResponse()
    second.rows = [row("orders", requests: 0, failures: 0, bucket: 0, rps: 0)]
    second.rows[0].history = [step(90, 1, bucket: 0), step(110, 3, bucket: 4)]
    let history = ReplicaMerge.top([first, second]).rows.first?.history ?? []
    #expect(history.map(\.startUnix) == [90, 100, 110])
    #expect(history.map(\.requests) == [1, 5, 5])
    #expect(history.map(\.failures) == [1, 1, 2])
    #expect(history.last?.latencyBuckets == [0, 2, 0, 0, 3])
  }

  @Test func aTraceSplitAcrossReplicasIsOneSummary() {
    func summary(
      _ id: UInt8, start: UInt64, nanos: Int64, spans: UInt32, root: String
    )
      -> Trellis_Mesh_V1_TraceSummary
    {
      var summary = Trellis_Mesh_V1_TraceSummary()
      summary.traceID = Data(repeating: id, count: 16)
      summary.startUnixNano = start
      summary.durationNanos = nanos
      summary.spanCount = spans
      summary.rootService = root
      return summary
    }
    var first = Trellis_Mesh_V1_ListTracesResponse()
    first.traces = [summary(1, start: 100, nanos: 50, spans: 4, root: "gateway")]
    var second = Trellis_Mesh_V1_ListTracesResponse()
    second.traces = [
      summary(1, start: 120, nanos: 60, spans: 4, root: "payments"),
      summary(2, start: 500, nanos: 10, spans: 2, root: "users"),
    ]
    let merged = ReplicaMerge.traces([first, second], limit: 10).traces
    #expect(merged.map(\.rootService) == ["users", "gateway"], "newest first")
    #expect(merged[1].spanCount == 8 && merged[1].durationNanos == 80)
    #expect(ReplicaMerge.traces([first, second], limit: 1).traces.count == 1)
  }

  @Test func aSidecarIsAsTheReplicaItIsConnectedToSays() {
    func status(_ connected: Bool, version: Int64) -> Trellis_Mesh_V1_StatusResponse {
      var sidecar = Trellis_Mesh_V1_SidecarStatus()
      sidecar.node = "orders@10.0.0.1:7001"
      sidecar.connected = connected
      sidecar.version = version
      var status = Trellis_Mesh_V1_StatusResponse()
      status.currentVersion = 3
      status.sidecars = [sidecar]
      status.issuer = connected ? "CN=issuer b" : "CN=issuer a"
      return status
    }
    let (merged, replicaOf) = ReplicaMerge.status([
      ("cp1", status(false, version: 1)), ("cp2", status(true, version: 3)),
    ])
    #expect(merged.sidecars.count == 1 && merged.sidecars[0].version == 3)
    #expect(replicaOf["orders@10.0.0.1:7001"] == "cp2")
    #expect(merged.issuer == "CN=issuer a; CN=issuer b")
  }
}
