import Foundation
import TestSupport
import Testing

/// The caller's sidecar keeps one failing or overloaded service from taking the caller down.
@Suite(.serialized) struct ResilienceTests {
  let script = PythonInteropTests.python.appendingPathComponent("transparency.py").path

  /// Past `circuitBreaker.maxConcurrentRequests`, calls are answered UNAVAILABLE at once with
  /// the limit named, and counted; the places come back as calls end.
  @Test func theCircuitBreakerAnswersOverflowAtOnce() throws {
    let server = try ServiceProcess(try resolve("python3"), [script, "serve"])
    defer { server.stop() }
    let mesh = try MeshFixture("breaker", services: ["echo", "client"])
    let echo = try mesh.sidecar("echo", app: server.address)
    let config = try mesh.write(
      "client-mesh.yaml",
      """
      services:
        echo:
          endpoints:
            - address: \(echo.inbound)
          circuitBreaker: {maxConcurrentRequests: 5}
      """)
    let client = try mesh.sidecar("client", app: "127.0.0.1:1", mesh: config)
    defer {
      client.process.stop()
      echo.process.stop()
    }

    let started = Date()
    let result = try run(try resolve("python3"), [script, "burst", client.outbound, "12", "1500"])
    let summary = try #require(try jsonObjects(result.stdout).first, "\(result.stderr)")
    let codes = summary["codes"] as? [String: Int] ?? [:]
    #expect(codes["OK"] == 5, "\(summary)")
    #expect(codes["UNAVAILABLE"] == 7, "\(summary)")
    let message = (summary["details"] as? [String: String])?["UNAVAILABLE"] ?? ""
    #expect(
      message == "circuit breaker: 5 calls to 'echo' are in flight (maxConcurrentRequests)",
      "\(summary)")
    #expect(Date().timeIntervalSince(started) < 10)
    #expect(
      try client.metric(
        "trellis_circuit_breaker_overflows_total",
        ["service": "echo", "limit": "maxConcurrentRequests"]) == 7)

    // The places came back: the same burst is admitted the same way again.
    let again = try run(try resolve("python3"), [script, "burst", client.outbound, "5", "200"])
    let codesAgain = (try jsonObjects(again.stdout).first?["codes"] as? [String: Int]) ?? [:]
    #expect(codesAgain == ["OK": 5], "\(again.stdout)\(again.stderr)")
  }
}
