import Foundation
import MeshDashboard
import Testing

/// The mesh's log lines gathered from files as they grow: parsed (JSON lines, PostgreSQL's
/// text), followed past partial lines and truncation, and searched in time order.
@Suite struct LogCollectorTests {
  let trace = "4bf92f3577b34da6a3ce929d0e0e4736"

  @Test func linesAreReadAsTheMeshWritesThem() throws {
    let json = try #require(
      LogLine.parse(
        #"{"time":"2026-12-07T11:30:13.158Z","level":"info","message":"rpc","trace_id":"4BF92F3577B34DA6A3CE929D0E0E4736"}"#,
        process: "orders", service: "orders", previous: 0))
    #expect(json.level == "info" && json.message == "rpc" && json.traceId == trace)
    #expect(json.unixNano == 1_796_643_013_158_000_000)
    let postgres = try #require(
      LogLine.parse(
        "2026-12-07 11:29:39.074 UTC [26196] LOG:  listening on IPv4 address",
        process: "postgres", service: "postgres", previous: 0))
    #expect(postgres.unixNano == 1_796_642_979_074_000_000 && postgres.level == "info")
    let bare = try #require(
      LogLine.parse("no time here", process: "x", service: "x", previous: 42))
    #expect(bare.unixNano == 42 && bare.traceId == nil)
    #expect(LogLine.parse("   ", process: "x", service: "x", previous: 0) == nil)
  }

  @Test func filesAreFollowedAndSearchedInTimeOrder() throws {
    let folder = FileManager.default.temporaryDirectory
      .appendingPathComponent("logs-\(UUID().uuidString.prefix(8))")
    try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
    let orders = folder.appendingPathComponent("orders.log")
    let sidecar = folder.appendingPathComponent("orders-sidecar.log")
    func line(_ second: Int, _ level: String, _ message: String, trace: String? = nil) -> String {
      let id = trace.map { #","trace_id":"\#($0)""# } ?? ""
      return
        #"{"time":"2026-12-07T10:00:0\#(second).000Z","level":"\#(level)","message":"\#(message)"\#(id)}"#
    }
    try
      (line(1, "info", "rpc", trace: trace) + "\n" + line(3, "error", "failed")
      + "\n" + #"{"time":"2026-12-07T10:00:0"#).write(to: orders, atomically: true, encoding: .utf8)
    try (line(2, "info", "call", trace: trace) + "\n").write(
      to: sidecar, atomically: true, encoding: .utf8)
    let collector = LogCollector {
      [
        .init(process: "orders", service: "orders", path: orders.path),
        .init(process: "orders-sidecar", service: "orders", path: sidecar.path),
      ]
    }
    let traced = collector.search(trace: trace)
    #expect(traced.map(\.process) == ["orders", "orders-sidecar"])
    #expect(traced.map(\.message) == ["rpc", "call"], "in time order across files")
    #expect(collector.search(level: "error").map(\.message) == ["failed"])
    #expect(collector.search(service: "orders-sidecar").count == 1)
    #expect(collector.search(text: "CALL").count == 1, "text is matched without case")

    // The partial line is completed by the next write; new lines are found.
    let handle = try FileHandle(forWritingTo: orders)
    try handle.seekToEnd()
    try handle.write(contentsOf: Data("4.000Z\",\"level\":\"info\",\"message\":\"later\"}\n".utf8))
    try handle.close()
    #expect(
      collector.search(service: "orders").map(\.message) == ["rpc", "call", "failed", "later"])
    // A file replaced by a shorter one is read again from its start.
    try (line(5, "info", "fresh") + "\n").write(to: sidecar, atomically: true, encoding: .utf8)
    #expect(collector.search(text: "fresh").count == 1)
  }
}
