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
}
