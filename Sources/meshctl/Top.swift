import ArgumentParser
import Foundation
import GRPCCore
import MeshDashboard
import MeshProtos

/// `meshctl top`: each service's success rate, request rate and latency over the last minute,
/// from the inbound calls its sidecars saw — refreshed every second, like `linkerd viz stat`.
struct Top: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Live success rate, RPS and p50/p95/p99 latency per service over the last minute.",
    usage: "meshctl top [<options>] [<service>]",
    discussion: """
      The figures come from the inbound calls each service's sidecars saw, reported to the \
      control plane every second; they work across hosts. Ctrl-C stops.
      """)

  @Argument(help: "Only this service.") var service: String?
  @Flag(help: "A row per method.") var methods = false
  @Flag(help: "Print once and exit.") var once = false
  @Option(name: .short, help: "Output: table or json (json implies --once).")
  var output: OutputFormat = .table
  @OptionGroup var controlPlane: ControlPlaneOptions

  func run() async throws {
    var request = Trellis_Mesh_V1_TopRequest()
    request.service = service ?? ""
    request.byMethod = methods
    let single = once || output != .table
    let interactive = isatty(STDOUT_FILENO) == 1 && !single
    // Each replica has the figures of the sidecars connected to it: every one is asked.
    let controlPlane = controlPlane
    do {
      while true {
        let answers = try await controlPlane.withEveryReplicaClient { [request] in
          try await Trellis_Mesh_V1_Telemetry.Client(wrapping: $0).top(request)
        }
        let answered = answers.compactMap { try? $0.result.get() }
        if answered.isEmpty, let failure = answers.first { _ = try failure.result.get() }
        let response = ReplicaMerge.top(answered)
        if output != .table {
          try printStructured(response.rows.map(Self.object), output)
          return
        }
        if interactive { print("\u{1B}[H\u{1B}[2J", terminator: "") }
        Self.printRows(response, methods: methods)
        if single { return }
        print("")
        try await Task.sleep(for: .seconds(1))
      }
    }
  }

  static func printRows(_ response: Trellis_Mesh_V1_TopResponse, methods: Bool) {
    guard !response.rows.isEmpty else {
      print("no calls in the last \(response.windowSeconds) s")
      return
    }
    var rows = [
      (methods ? ["SERVICE", "METHOD"] : ["SERVICE"])
        + ["SUCCESS", "RPS", "P50", "P95", "P99", "REQUESTS", "INSTANCES"]
    ]
    for row in response.rows {
      rows.append(
        (methods ? [row.service, row.method] : [row.service]) + [
          String(format: "%.2f%%", row.successRate * 100),
          String(format: "%.1f", row.requestsPerSecond), milliseconds(row.p50Ms),
          milliseconds(row.p95Ms), milliseconds(row.p99Ms), "\(row.requests)", "\(row.instances)",
        ])
    }
    printTable(rows)
  }

  static func milliseconds(_ value: Double) -> String {
    value < 10 ? String(format: "%.2fms", value) : String(format: "%.0fms", value)
  }

  static func object(_ row: Trellis_Mesh_V1_TopRow) -> [String: Any] {
    var object: [String: Any] = [
      "service": row.service, "successRate": row.successRate, "rps": row.requestsPerSecond,
      "p50Ms": row.p50Ms, "p95Ms": row.p95Ms, "p99Ms": row.p99Ms, "requests": Int(row.requests),
      "instances": Int(row.instances),
    ]
    if !row.method.isEmpty { object["method"] = row.method }
    return object
  }
}

/// `meshctl tap SERVICE`: the calls a service's sidecars see, as they end, like
/// `linkerd viz tap`.
struct Tap: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Stream the calls a service's sidecars see: method, peer, status, latency.",
    usage: "meshctl tap [<options>] <service>",
    discussion: "Rate-limited per sidecar (--max-rps). Ctrl-C stops; the sidecars stop tapping.")

  @Argument(help: "The service.") var service: String
  @Option(help: "Only this method: package.Service/Method or package.Service/*.") var method:
    String?
  @Option(help: "At most this many calls a second from each sidecar.") var maxRps = 20
  @Option(help: "Stop after this many calls.") var count: Int?
  @Option(name: .short, help: "Output: table (a line per call) or json (an object per line).")
  var output: OutputFormat = .table
  @OptionGroup var controlPlane: ControlPlaneOptions

  func run() async throws {
    guard (1...1000).contains(maxRps) else { throw ValidationError("--max-rps: 1 to 1000") }
    var request = Trellis_Mesh_V1_TapRequest()
    request.service = service
    request.method = method.map { $0.hasPrefix("/") ? String($0.dropFirst()) : $0 } ?? ""
    request.maxPerSecond = UInt32(maxRps)
    try await controlPlane.withClient { [request, count, output] client in
      try await Trellis_Mesh_V1_Telemetry.Client(wrapping: client).tap(request) { response in
        var seen = 0
        if output == .table {
          Self.write(Self.line(["TIME", "DIR", "METHOD", "PEER", "STATUS", "LATENCY", "TRACE"]))
        }
        for try await event in response.messages {
          Self.show(event, output)
          seen += 1
          if let count, seen >= count { return }
        }
      }
    }
  }

  /// A line on standard output at once, unbuffered: a tap is watched live, often through a
  /// pipe.
  static func write(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
  }

  /// Columns of a fixed width (a stream cannot be measured first); a longer cell pushes the
  /// rest along.
  static func line(_ cells: [String]) -> String {
    let widths = [24, 3, 36, 36, 17, 9]
    return cells.enumerated().map { index, cell in
      index < widths.count
        ? cell.padding(toLength: max(widths[index], cell.count), withPad: " ", startingAt: 0) : cell
    }.joined(separator: "  ")
  }

  static func show(_ event: Trellis_Mesh_V1_TapEvent, _ output: OutputFormat) {
    let time = Trace.List.time(event.timeUnixNano)
    if output != .table {
      let object: [String: Any] = [
        "time": time, "direction": event.direction, "service": event.service,
        "method": event.method, "peer": event.peer, "status": event.status,
        "latencyMs": Double(event.durationNanos) / 1e6, "traceId": event.traceID,
        "instance": event.instance, "attempts": Int(event.attempts),
      ]
      if let data = try? JSONSerialization.data(
        withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
      {
        write(String(decoding: data, as: UTF8.self))
      }
    } else {
      write(
        line([
          time, event.direction == "inbound" ? "in" : "out", event.method,
          event.peer.isEmpty ? "-" : event.peer, event.status,
          formatNanos(UInt64(max(0, event.durationNanos))),
          event.traceID.isEmpty ? "-" : event.traceID,
        ]))
    }
  }
}
