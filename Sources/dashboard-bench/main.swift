import Foundation
import Hummingbird
import Logging
import MeshDashboard
import MeshProtos

/// `dashboard-bench [--services N] [--traces N] [--port P] [--control-plane]`: serves the
/// dashboard over a fixed mesh — N services (a gateway, a ninth of them front services, the rest behind them, as the
/// layout's tests draw), live figures for every service and call between them, and N stored
/// traces of 8 spans — so that `scripts/dashboard-bench` can measure the page's first paint,
/// the time to a live graph, and this process's memory, without a mesh of that size. It prints
/// a JSON `listening` line with its address. With `--control-plane`, the same mesh is held by
/// a real control plane and served by `meshctl dashboard` (`RealMesh`); the line has that
/// dashboard's address and process id.
struct Fixed: DashboardSource {
  let services: [String]
  let edges: [(from: String, to: String)]
  let summaries: [Trellis_Mesh_V1_TraceSummary]

  init(services count: Int, traces: Int) {
    var names = ["gateway"]
    var edges: [(from: String, to: String)] = []
    let fronts = max(1, (count - 1) / 5)
    for front in 0..<fronts {
      names.append("frontend-\(front)")
      edges.append(("gateway", "frontend-\(front)"))
    }
    for back in 0..<(count - 1 - fronts) {
      names.append("backend-\(back)")
      edges.append(("frontend-\(back % fronts)", "backend-\(back)"))
    }
    services = names
    self.edges = edges
    let now = UInt64(Date().timeIntervalSince1970 * 1e9)
    summaries = (0..<traces).map { index in
      var summary = Trellis_Mesh_V1_TraceSummary()
      summary.traceID = Data((0..<16).map { UInt8(truncatingIfNeeded: index >> (($0 % 4) * 8)) })
      summary.rootService = "gateway"
      summary.rootName = "POST /v1/orders"
      summary.startUnixNano = now - UInt64(index) * 10_000_000
      summary.durationNanos = Int64(5_000_000 + (index % 97) * 100_000)
      summary.spanCount = 8
      summary.error = index % 50 == 0
      return summary
    }
  }

  func row(_ service: String, caller: String = "", seed: Int) -> Trellis_Mesh_V1_TopRow {
    var row = Trellis_Mesh_V1_TopRow()
    row.service = service
    row.caller = caller
    row.requests = UInt64(600 + seed % 400)
    row.failures = seed % 13 == 0 ? 20 : 0
    row.requestsPerSecond = Double(row.requests) / 60
    row.successRate = Double(row.requests - row.failures) / Double(row.requests)
    row.p50Ms = 2 + Double(seed % 7)
    row.p95Ms = row.p50Ms * 3
    row.p99Ms = row.p50Ms * 5
    row.instances = 2
    return row
  }

  func top(_ request: Trellis_Mesh_V1_TopRequest) async throws -> Trellis_Mesh_V1_TopResponse {
    var response = Trellis_Mesh_V1_TopResponse()
    response.windowSeconds = 60
    if request.byEdge {
      response.rows = edges.enumerated().map { row($1.to, caller: $1.from, seed: $0) }
    } else {
      response.rows = services.enumerated().map { row($1, seed: $0) }
    }
    if !request.service.isEmpty { response.rows.removeAll { $0.service != request.service } }
    return response
  }

  func status() async throws -> Trellis_Mesh_V1_StatusResponse {
    var status = Trellis_Mesh_V1_StatusResponse()
    status.currentVersion = 1
    status.sidecars = services.enumerated().map { index, service in
      var sidecar = Trellis_Mesh_V1_SidecarStatus()
      sidecar.node = "\(service)@10.0.\(index / 200).\(index % 200):7001"
      sidecar.spiffeID = "spiffe://trellis.local/svc/\(service)"
      sidecar.connected = true
      sidecar.version = 1
      return sidecar
    }
    return status
  }

  func endpoints(service: String) async throws -> Trellis_Mesh_V1_EndpointsResponse { .init() }
  func configVersions() async throws -> [Trellis_Mesh_V1_ConfigVersion] { [] }
  func config(version: Int64) async throws -> Trellis_Mesh_V1_ConfigVersion { .init() }
  func tap(
    _ request: Trellis_Mesh_V1_TapRequest,
    each: @escaping @Sendable (Trellis_Mesh_V1_TapEvent) async throws -> Void
  ) async throws {}

  func listTraces(
    _ filter: Trellis_Mesh_V1_TraceFilter
  ) async throws -> Trellis_Mesh_V1_ListTracesResponse {
    var response = Trellis_Mesh_V1_ListTracesResponse()
    response.traces = Array(
      summaries.filter {
        (!filter.errorsOnly || $0.error) && $0.durationNanos >= filter.minDurationNanos
      }.prefix(Int(filter.limit == 0 ? 20 : filter.limit)))
    response.storedSpans = Int64(summaries.count * 8)
    return response
  }

  func traces(ids: [String]) async throws -> [OTLPExportRequest] { [] }
}

var arguments = CommandLine.arguments.dropFirst()
var services = 50
var traces = 10_000
var port = 0
var real = false
while let argument = arguments.popFirst() {
  switch argument {
  case "--control-plane": real = true
  case "--services": services = Int(arguments.popFirst() ?? "") ?? services
  case "--traces": traces = Int(arguments.popFirst() ?? "") ?? traces
  case "--port": port = Int(arguments.popFirst() ?? "") ?? port
  default:
    FileHandle.standardError.write(
      Data(
        "usage: dashboard-bench [--services N] [--traces N] [--port P] [--control-plane]\n"
          .utf8))
    exit(2)
  }
}
if real {
  let work = FileManager.default.temporaryDirectory
    .appendingPathComponent("dashboard-bench-\(UUID().uuidString.prefix(8))").path
  let mesh = RealMesh(topology: Fixed(services: services, traces: 0), traces: traces, work: work)
  let running = try await mesh.start()
  FileHandle.standardOutput.write(
    Data(
      #"{"message":"listening","address":"\#(running.dashboardAddress)","pid":\#(running.dashboard.processIdentifier),"controlPlanePid":\#(running.controlPlane.processIdentifier)}"#
        .utf8 + [10]))
  // Until its input ends (scripts/dashboard-bench closes it; Ctrl-D at a terminal): then the
  // dashboard and the control plane stop too.
  while readLine() != nil {}
  for process in [running.dashboard, running.controlPlane] {
    process.terminate()
    process.waitUntilExit()
  }
  try? FileManager.default.removeItem(atPath: work)
  exit(0)
}
let chosenPort = port
let logger = Logger(label: "dashboard-bench")
let server = DashboardServer(source: Fixed(services: services, traces: traces), logger: logger)
let application = Application(
  router: server.router(),
  configuration: .init(address: .hostname("127.0.0.1", port: chosenPort), serverName: nil),
  onServerRunning: { channel in
    let bound = channel.localAddress?.port ?? chosenPort
    FileHandle.standardOutput.write(
      Data(#"{"message":"listening","address":"127.0.0.1:\#(bound)"}"#.utf8 + [10]))
  }, logger: logger)
try await application.runService()
