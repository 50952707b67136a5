import Foundation
import TestSupport
import Testing

/// grpcio on both ends — client → sidecar → sidecar → server — observes exactly what it
/// observes without the mesh: every RPC kind, text and binary metadata, trailers, Trailers-Only
/// answers, every status code and message byte for byte, cancellation, deadlines, flow control
/// with a slow reader, 4 MiB messages and 1,000 concurrent calls on one connection. The
/// checks themselves are in `Inputs/python/transparency.py`, which runs each one directly and
/// through the mesh and compares.
@Suite(.serialized) struct TransparencyTests {
  @Test func grpcioSeesTheSameCallsThroughTheMeshAsWithout() throws {
    let script = PythonInteropTests.python.appendingPathComponent("transparency.py").path
    let server = try ServiceProcess(try resolve("python3"), [script, "serve"])
    defer { server.stop() }
    let mesh = try MeshFixture("transparency", services: ["echo", "client"])
    let (serverSidecar, clientSidecar) = try mesh.pair(app: server.address)
    defer {
      clientSidecar.process.stop()
      serverSidecar.process.stop()
    }

    let result = try run(
      try resolve("python3"),
      [
        script, "check", server.address, clientSidecar.outbound,
        "\(serverSidecar.process.pid)", "\(clientSidecar.process.pid)",
      ])
    #expect(result.status == 0, "\(result.stdout)\(result.stderr)")
    #expect(result.stdout.contains("same: 1,000 concurrent calls on one connection"))
    #expect(result.stdout.contains("mesh: messages over 4 MiB are refused"), "\(result.stdout)")
  }

  /// A peer that allows few concurrent streams gets more connections, not refused calls: 40
  /// calls that the server answers only once all are in flight at once pass through a server
  /// sidecar that advertises a limit of 8, over at least 5 mesh connections.
  @Test func callsBeyondThePeersStreamLimitGoOnAnotherConnection() throws {
    let script = PythonInteropTests.python.appendingPathComponent("transparency.py").path
    let server = try ServiceProcess(try resolve("python3"), [script, "serve"])
    defer { server.stop() }
    let mesh = try MeshFixture("stream-limit", services: ["echo", "client"])
    let (serverSidecar, clientSidecar) = try mesh.pair(
      app: server.address, serverLimits: "  maxConcurrentStreams: 8")
    defer {
      clientSidecar.process.stop()
      serverSidecar.process.stop()
    }
    // One call first, so the client sidecar knows the server's limit.
    let first = try run(
      try resolve("python3"), [script, "call", clientSidecar.outbound, "Unary", "hello"])
    #expect(first.stdout.contains(#""code": "OK""#), "\(first.stdout)\(first.stderr)")

    let result = try run(try resolve("python3"), [script, "gather", clientSidecar.outbound, "40"])
    let summary = try #require(try jsonObjects(result.stdout).first, "\(result.stderr)")
    #expect(summary["ok"] as? Int == 40, "\(summary)")
    let opened = try clientSidecar.metric("trellis_connections_opened_total", ["kind": "mesh"])
    let page = try clientSidecar.adminPage("/metrics").body
    #expect(opened >= 5, "\(page)")
    let accepted = try serverSidecar.metric(
      "trellis_connections_opened_total", ["kind": "inbound"])
    #expect(accepted == opened)
  }
}
