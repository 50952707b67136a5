import MeshProtos

/// What the dashboard reads, asked afresh for every view: the control plane's replicas as an
/// operator sees them (`meshctl dashboard` answers with its connections to them; a test may
/// answer with fixed figures).
public protocol DashboardSource: Sendable {
  /// The last minute's figures: per service (or method) from the inbound calls its sidecars
  /// took, or per caller and service called (`byEdge`) from the callers' outbound calls.
  func top(_ request: Trellis_Mesh_V1_TopRequest) async throws -> Trellis_Mesh_V1_TopResponse
  /// Every service with a sidecar connected to the control plane.
  func services() async throws -> [String]
  /// The newest traces that match, newest first.
  func listTraces(
    _ filter: Trellis_Mesh_V1_TraceFilter
  ) async throws
    -> Trellis_Mesh_V1_ListTracesResponse
  /// Whole traces, by hex id.
  func traces(ids: [String]) async throws -> [OTLPExportRequest]
}
