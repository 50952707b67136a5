import MeshProtos

/// What the dashboard reads, asked afresh for every view: the control plane's replicas as an
/// operator sees them (`meshctl dashboard` answers with its connections to them; a test may
/// answer with fixed figures).
public protocol DashboardSource: Sendable {
  /// The last minute's figures: per service (or method) from the inbound calls its sidecars
  /// took, or per caller and service called (`byEdge`) from the callers' outbound calls.
  func top(_ request: Trellis_Mesh_V1_TopRequest) async throws -> Trellis_Mesh_V1_TopResponse
  /// The sidecars the control plane knows (their service is their SPIFFE ID's), and the
  /// config and trust it runs.
  func status() async throws -> Trellis_Mesh_V1_StatusResponse
  /// The endpoints of `service` as the sidecars that call it last reported them.
  func endpoints(service: String) async throws -> Trellis_Mesh_V1_EndpointsResponse
  /// Every config version, oldest first (their YAML may be left out: `config(version:)` has it).
  func configVersions() async throws -> [Trellis_Mesh_V1_ConfigVersion]
  /// One config version, with its YAML (0: the running one).
  func config(version: Int64) async throws -> Trellis_Mesh_V1_ConfigVersion
  /// The calls `request` taps, each as it ends, until the task is cancelled.
  func tap(
    _ request: Trellis_Mesh_V1_TapRequest,
    each: @escaping @Sendable (Trellis_Mesh_V1_TapEvent) async throws -> Void
  ) async throws
  /// The newest traces that match, newest first.
  func listTraces(
    _ filter: Trellis_Mesh_V1_TraceFilter
  ) async throws
    -> Trellis_Mesh_V1_ListTracesResponse
  /// Whole traces, by hex id.
  func traces(ids: [String]) async throws -> [OTLPExportRequest]
}
