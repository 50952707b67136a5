import Foundation
import MeshProtos
import MeshTracing

/// What several control plane replicas answer, as one: each replica knows the sidecars
/// connected to it (their live figures, their spans, their endpoints' states), so a view of the
/// whole mesh asks every replica and merges.
public enum ReplicaMerge {
  /// Rows of one service (method, edge) added up: calls, failures, rates and latency
  /// histograms, the percentiles read again from the sum; the steps of their histories too.
  public static func top(_ answers: [Trellis_Mesh_V1_TopResponse]) -> Trellis_Mesh_V1_TopResponse {
    var merged = Trellis_Mesh_V1_TopResponse()
    merged.windowSeconds = answers.map(\.windowSeconds).max() ?? 0
    var rows: [String: Trellis_Mesh_V1_TopRow] = [:]
    for row in answers.flatMap(\.rows) {
      let key = "\(row.caller)\u{0}\(row.service)\u{0}\(row.method)"
      guard var sum = rows[key] else {
        rows[key] = row
        continue
      }
      sum.requests += row.requests
      sum.failures += row.failures
      sum.requestsPerSecond += row.requestsPerSecond
      sum.instances += row.instances
      sum.latencyBuckets = added(sum.latencyBuckets, row.latencyBuckets)
      var steps = Dictionary(uniqueKeysWithValues: sum.history.map { ($0.startUnix, $0) })
      for step in row.history {
        guard var other = steps[step.startUnix] else {
          steps[step.startUnix] = step
          continue
        }
        other.requests += step.requests
        other.failures += step.failures
        other.latencyBuckets = added(other.latencyBuckets, step.latencyBuckets)
        steps[step.startUnix] = other
      }
      sum.history = steps.values.sorted { $0.startUnix < $1.startUnix }
      rows[key] = sum
    }
    merged.rows = rows.values.map { row in
      var row = row
      row.successRate =
        row.requests == 0
        ? 1
        : Double(row.requests - min(row.failures, row.requests))
          / Double(row.requests)
      if !row.latencyBuckets.isEmpty {
        row.p50Ms = (LatencyBuckets.quantile(0.50, of: row.latencyBuckets) ?? 0) * 1000
        row.p95Ms = (LatencyBuckets.quantile(0.95, of: row.latencyBuckets) ?? 0) * 1000
        row.p99Ms = (LatencyBuckets.quantile(0.99, of: row.latencyBuckets) ?? 0) * 1000
      }
      return row
    }.sorted { ($0.caller, $0.service, $0.method) < ($1.caller, $1.service, $1.method) }
    return merged
  }

  /// Two latency histograms added up, bucket by bucket.
  static func added(_ one: [UInt64], _ other: [UInt64]) -> [UInt64] {
    var sum = one
    if sum.count < other.count { sum += [UInt64](repeating: 0, count: other.count - sum.count) }
    for (index, count) in other.enumerated() { sum[index] += count }
    return sum
  }

  /// Every sidecar once (the answer of the replica it is connected to, where one says so),
  /// the newest config version and trust generation, every replica's issuer and running
  /// rotation step; and which replica (by its name in `answers`) each sidecar uses.
  public static func status(
    _ answers: [(replica: String, status: Trellis_Mesh_V1_StatusResponse)]
  ) -> (status: Trellis_Mesh_V1_StatusResponse, replicaOf: [String: String]) {
    var merged = Trellis_Mesh_V1_StatusResponse()
    var replicaOf: [String: String] = [:]
    var byNode: [String: Trellis_Mesh_V1_SidecarStatus] = [:]
    var issuers: [String] = []
    for (replica, answer) in answers {
      merged.currentVersion = max(merged.currentVersion, answer.currentVersion)
      if answer.trustGeneration > merged.trustGeneration {
        merged.trustGeneration = answer.trustGeneration
        merged.roots = answer.roots
      }
      // Each replica signs with an issuer of its own.
      if !answer.issuer.isEmpty, !issuers.contains(answer.issuer) { issuers.append(answer.issuer) }
      if !merged.hasDiscovery { merged.discovery = answer.discovery }
      // A rotation step runs at the replica it was asked of.
      merged.rotations += answer.rotations
      for sidecar in answer.sidecars
      where byNode[sidecar.node] == nil || (sidecar.connected && !byNode[sidecar.node]!.connected) {
        byNode[sidecar.node] = sidecar
        replicaOf[sidecar.node] = replica
      }
    }
    merged.sidecars = byNode.values.sorted { $0.node < $1.node }
    merged.issuer = issuers.joined(separator: "; ")
    return (merged, replicaOf)
  }

  /// One summary per trace (its spans may be stored at several replicas: their counts add up,
  /// the earliest start and latest end bound it, the root span's replica names it), newest
  /// first, at most `limit`.
  public static func traces(
    _ answers: [Trellis_Mesh_V1_ListTracesResponse], limit: Int
  ) -> Trellis_Mesh_V1_ListTracesResponse {
    var merged = Trellis_Mesh_V1_ListTracesResponse()
    var byID: [Data: Trellis_Mesh_V1_TraceSummary] = [:]
    for answer in answers {
      merged.storedSpans += answer.storedSpans
      merged.maximumSpans += answer.maximumSpans
      for summary in answer.traces {
        guard var sum = byID[summary.traceID] else {
          byID[summary.traceID] = summary
          continue
        }
        let end = max(
          sum.startUnixNano + UInt64(max(0, sum.durationNanos)),
          summary.startUnixNano + UInt64(max(0, summary.durationNanos)))
        if summary.startUnixNano < sum.startUnixNano {
          sum.startUnixNano = summary.startUnixNano
          sum.rootService = summary.rootService
          sum.rootName = summary.rootName
          sum.status = summary.status
        }
        sum.durationNanos = Int64(end - sum.startUnixNano)
        sum.spanCount += summary.spanCount
        sum.error = sum.error || summary.error
        byID[summary.traceID] = sum
      }
    }
    merged.traces = Array(
      byID.values.sorted { $0.startUnixNano > $1.startUnixNano }.prefix(limit))
    return merged
  }

  /// Every replica's callers' reports together.
  public static func endpoints(
    _ answers: [Trellis_Mesh_V1_EndpointsResponse]
  ) -> Trellis_Mesh_V1_EndpointsResponse {
    var merged = Trellis_Mesh_V1_EndpointsResponse()
    merged.callers = answers.flatMap(\.callers).sorted {
      ($0.caller, $0.instance) < ($1.caller, $1.instance)
    }
    return merged
  }
}
