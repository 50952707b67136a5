import ArgumentParser
import Foundation
import GRPCCore
import MeshConfig
import MeshDashboard
import MeshProtos

/// `meshctl trace`: the traces the control plane's collector keeps.
struct Trace: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Find, draw and dump traces.",
    subcommands: [List.self, Show.self, Dump.self, View.self])

  /// Which traces: the conditions `list` and `dump` share.
  struct Filters: ParsableArguments {
    @Option(help: "Traces with a span of this service.") var service: String?
    @Option(help: "Traces with a call of this method: package.Service/Method or package.Service/*.")
    var method: String?
    @Option(help: "Traces that took at least this long: 50ms, 2s.") var minDuration: String?
    @Flag(help: "Only traces with a span that ended in error.") var errors = false
    @Option(help: "Traces that started since: a duration ago (10m, 2h) or a time (RFC 3339).")
    var since: String?
    @Option(help: "At most this many traces.") var limit = 20

    func filter() throws -> Trellis_Mesh_V1_TraceFilter {
      var filter = Trellis_Mesh_V1_TraceFilter()
      filter.service = service ?? ""
      if let method {
        let path = method.hasPrefix("/") ? String(method.dropFirst()) : method
        let parts = path.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
          throw ValidationError(
            "--method \(method): expected package.Service/Method or package.Service/*")
        }
        filter.method = path
      }
      if let minDuration {
        guard let duration = parseDuration(minDuration) else {
          throw ValidationError(
            "--min-duration \(minDuration): expected a duration such as 50ms or 2s")
        }
        filter.minDurationNanos = Int64(duration.timeInterval * 1e9)
      }
      filter.errorsOnly = errors
      if let since {
        if let duration = parseDuration(since) {
          filter.sinceUnixNano = UInt64(
            (Date().timeIntervalSince1970 - duration.timeInterval) * 1e9)
        } else if let date = ISO8601DateFormatter().date(from: since) {
          filter.sinceUnixNano = UInt64(max(0, date.timeIntervalSince1970) * 1e9)
        } else {
          throw ValidationError(
            """
            --since \(since): expected a duration ago (10m, 2h) or a time such as \
            2026-12-01T17:00:00Z
            """
          )
        }
      }
      guard (1...10_000).contains(limit) else {
        throw ValidationError("--limit \(limit): expected 1 to 10000")
      }
      filter.limit = UInt32(limit)
      return filter
    }
  }

  struct List: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Recent traces, newest first: root service and method, duration, spans, status.",
      usage: "meshctl trace list [<options>]")

    @OptionGroup var filters: Filters
    @Option(name: .short, help: "Output: table or json.") var output: OutputFormat = .table
    @OptionGroup var controlPlane: ControlPlaneOptions

    func run() async throws {
      var request = Trellis_Mesh_V1_ListTracesRequest()
      request.filter = try filters.filter()
      let response = try await controlPlane.withClient { [request] in
        try await Trellis_Mesh_V1_Traces.Client(wrapping: $0).listTraces(request)
      }
      switch output {
      case .json, .yaml:
        let objects: [[String: Any]] = response.traces.map { trace in
          [
            "traceId": hex(trace.traceID), "rootService": trace.rootService,
            "rootName": trace.rootName, "start": Self.time(trace.startUnixNano),
            "durationMs": Double(trace.durationNanos) / 1e6, "spans": Int(trace.spanCount),
            "error": trace.error, "status": trace.status,
          ]
        }
        try printStructured(objects, output)
      case .table:
        guard !response.traces.isEmpty else {
          print("no traces match (\(response.storedSpans) spans stored)")
          return
        }
        var rows = [["TRACE ID", "START", "ROOT", "DURATION", "SPANS", "STATUS"]]
        for trace in response.traces {
          rows.append([
            hex(trace.traceID), Self.time(trace.startUnixNano),
            "\(trace.rootService) \(trace.rootName)",
            formatNanos(UInt64(max(0, trace.durationNanos))),
            "\(trace.spanCount)",
            (trace.status.isEmpty ? (trace.error ? "ERROR" : "-") : trace.status)
              + (trace.error && trace.status == "OK" ? " (errors below)" : ""),
          ])
        }
        printTable(rows)
      }
    }

    static func time(_ nanos: UInt64) -> String {
      let formatter = ISO8601DateFormatter()
      formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
      return formatter.string(from: Date(timeIntervalSince1970: Double(nanos) / 1e9))
    }
  }

  struct Show: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      abstract:
        "A trace as a waterfall: one row per span, indented by parent, on a common time axis.",
      usage: "meshctl trace show [<options>] <trace-id>")

    @Argument(help: "The trace id (32 hex digits).") var traceID: String
    @OptionGroup var controlPlane: ControlPlaneOptions

    func run() async throws {
      let requests = try await fetch(ids: [traceID], filter: .init(), controlPlane)
      guard let tree = TraceTree.trees(requests).first else {
        throw MeshctlFailure("no trace \(traceID) is stored")
      }
      print(TerminalWaterfall.render(tree), terminator: "")
    }
  }

  struct Dump: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Traces as OTLP JSON: one ExportTraceServiceRequest per line, one line per trace.",
      usage: "meshctl trace dump [<options>] [<trace-id> ...]")

    @Argument(
      help: ArgumentHelp(
        "Trace ids; none: the traces the filters match.", valueName: "trace-id"))
    var traceIDs: [String] = []
    @OptionGroup var filters: Filters
    @Option(help: "Write to this file instead of standard output.") var file: String?
    @OptionGroup var controlPlane: ControlPlaneOptions

    func run() async throws {
      let requests = try await fetch(ids: traceIDs, filter: try filters.filter(), controlPlane)
      var text = ""
      for request in requests { text += try OTLPJSON.encode(request) + "\n" }
      if let file {
        do {
          try Data(text.utf8).write(to: URL(fileURLWithPath: file))
        } catch {
          throw MeshctlFailure("cannot write \(file): \(error.localizedDescription)")
        }
        FileHandle.standardError.write(Data("wrote \(requests.count) traces to \(file)\n".utf8))
      } else {
        print(text, terminator: "")
      }
    }
  }

  struct View: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Draw the traces of a dump file: in the terminal, or as a self-contained HTML page."
    )

    @Argument(help: "A file from `meshctl trace dump` (OTLP JSON lines).") var file: String
    @Option(help: "Write an HTML page here instead of drawing in the terminal.") var html: String?
    @Option(help: "Only this trace.") var trace: String?

    func run() async throws {
      let text: String
      do {
        text = try String(contentsOfFile: file, encoding: .utf8)
      } catch {
        throw MeshctlFailure("cannot read \(file): \(error.localizedDescription)")
      }
      var requests: [OTLPExportRequest] = []
      for (index, line) in text.split(separator: "\n", omittingEmptySubsequences: false)
        .enumerated()
      where !line.trimmingCharacters(in: .whitespaces).isEmpty {
        do {
          requests.append(try OTLPJSON.decode(String(line), line: index + 1))
        } catch let failure as MeshctlFailure {
          throw MeshctlFailure("\(file): \(failure.message)")
        }
      }
      var trees = TraceTree.trees(requests)
      if let trace {
        trees = trees.filter { $0.traceID == trace.lowercased() }
        guard !trees.isEmpty else { throw MeshctlFailure("\(file) has no trace \(trace)") }
      }
      guard !trees.isEmpty else { throw MeshctlFailure("\(file) holds no spans") }
      if let html {
        let page = TraceHTML.page(
          trees, title: "Trellis traces from \((file as NSString).lastPathComponent)")
        do {
          try Data(page.utf8).write(to: URL(fileURLWithPath: html))
        } catch {
          throw MeshctlFailure("cannot write \(html): \(error.localizedDescription)")
        }
        FileHandle.standardError.write(Data("wrote \(trees.count) traces to \(html)\n".utf8))
        return
      }
      print(trees.map(TerminalWaterfall.render).joined(separator: "\n"), terminator: "")
    }
  }
}

/// Whole traces from the control plane.
private func fetch(
  ids: [String], filter: Trellis_Mesh_V1_TraceFilter, _ controlPlane: ControlPlaneOptions
) async throws -> [OTLPExportRequest] {
  for id in ids where id.count != 32 || id.contains(where: { !$0.isHexDigit }) {
    throw ValidationError("'\(id)' is not a trace id: expected 32 hex digits")
  }
  var request = Trellis_Mesh_V1_GetTracesRequest()
  request.traceIds = ids.map { $0.lowercased() }
  request.filter = filter
  return try await controlPlane.withClient { [request] client in
    try await Trellis_Mesh_V1_Traces.Client(wrapping: client).getTraces(request) { response in
      var all: [OTLPExportRequest] = []
      for try await message in response.messages { all.append(message) }
      return all
    }
  }
}
