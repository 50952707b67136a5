import Foundation
import TestSupport
import Testing

/// HTTP/2 abuse against the outbound listener, frame by frame (`Inputs/python/h2_abuse.py`):
/// each attack costs the attacker its connection, and the sidecar keeps serving everyone else.
@Suite(.serialized) final class AbuseTests {
  let mesh: MeshFixture
  let server: ServiceProcess
  let serverSidecar: RunningSidecar
  let clientSidecar: RunningSidecar
  let abuse = PythonInteropTests.python.appendingPathComponent("h2_abuse.py").path

  init() throws {
    mesh = try MeshFixture("abuse", services: ["echo", "client"])
    server = try ServiceProcess(
      try resolve("python3"),
      [PythonInteropTests.python.appendingPathComponent("transparency.py").path, "serve"])
    // Short enough for the idle cases to be quick, long enough that an attacker's first bytes
    // arrive before it on a loaded machine.
    (serverSidecar, clientSidecar) = try mesh.pair(
      app: server.address, clientLimits: "  idleTimeout: 2s")
  }

  deinit {
    clientSidecar.process.stop()
    serverSidecar.process.stop()
    server.stop()
  }

  /// Runs one case; returns what the sidecar did.
  func attack(_ name: String) throws -> [String: Any] {
    let result = try run(try resolve("python3"), [abuse, clientSidecar.outbound, name])
    guard result.status == 0, let object = try jsonObjects(result.stdout).first else {
      throw HarnessError("h2_abuse.py \(name): \(result.stdout)\(result.stderr)")
    }
    return object
  }

  /// After every attack a well-behaved caller is served.
  func expectHealthy() throws {
    let healthy = try attack("then-healthy")
    #expect(healthy["grpc_status"] as? [String: Int] == ["0": 1], "\(healthy)")
  }

  @Test func rapidResetEndsTheConnectionWithEnhanceYourCalm() throws {
    let result = try attack("rapid-reset")
    #expect(result["goaway"] as? [String] == ["ENHANCE_YOUR_CALM"], "\(result)")
    #expect(result["closed"] as? Bool == true)
    try expectHealthy()
  }

  @Test func aContinuationFloodEndsTheConnection() throws {
    let result = try attack("continuation-flood")
    #expect(result["goaway"] as? [String] == ["ENHANCE_YOUR_CALM"], "\(result)")
    #expect(result["closed"] as? Bool == true)
    try expectHealthy()
  }

  @Test func anOversizedHeaderListEndsTheConnection() throws {
    let result = try attack("big-headers")
    #expect(result["goaway"] as? [String] == ["PROTOCOL_ERROR"], "\(result)")
    #expect(result["closed"] as? Bool == true)
    try expectHealthy()
  }

  @Test func exceedingTheAdvertisedStreamLimitEndsTheConnection() throws {
    let result = try attack("too-many-streams")
    #expect(result["goaway"] as? [String] == ["PROTOCOL_ERROR"], "\(result)")
    #expect(result["closed"] as? Bool == true)
    try expectHealthy()
  }

  @Test func idleAndSlowConnectionsAreClosedAfterTheIdleTimeout() throws {
    let idle = try attack("idle")
    #expect(idle["goaway"] as? [String] == ["NO_ERROR"], "\(idle)")
    #expect(idle["closed"] as? Bool == true)
    #expect((idle["seconds"] as? Double ?? 99) < 4)
    let slow = try attack("slowloris")
    #expect(slow["closed"] as? Bool == true, "\(slow)")
    #expect((slow["seconds"] as? Double ?? 99) < 5)
    try expectHealthy()
  }

  /// Malformed requests (RFC 9113 §8.2–8.3) are refused one stream at a time, and a request
  /// with allowed headers of the same lengths as the refused names is served on the same
  /// connection.
  @Test func malformedRequestsAreResetAndTheConnectionServesOn() throws {
    let result = try attack("malformed")
    #expect(result["resets"] as? [String: Int] == ["PROTOCOL_ERROR": 8], "\(result)")
    #expect(result["reset_streams"] as? [Int] == [1, 3, 5, 7, 9, 11, 13, 15], "\(result)")
    #expect(result["grpc_status"] as? [String: Int] == ["0": 1], "\(result)")
    #expect(result["answered_streams"] as? [Int] == [17], "\(result)")
    #expect(result["goaway"] as? [String] == [], "\(result)")
    try expectHealthy()
  }

  /// An app that answers with GOAWAY carrying an error, naming every stream as taken and never
  /// closing: the sidecar ends that connection itself, and the call gets UNAVAILABLE at once
  /// rather than waiting forever.
  @Test func anUpstreamGoAwayWithAnErrorEndsItsCallsAtOnce() throws {
    let bad = try ServiceProcess(
      try resolve("python3"),
      [PythonInteropTests.python.appendingPathComponent("h2_bad_server.py").path, "goaway-error"])
    defer { bad.stop() }
    let (badServer, badClient) = try mesh.pair(app: bad.address)
    defer {
      badClient.process.stop()
      badServer.process.stop()
    }
    let script = PythonInteropTests.python.appendingPathComponent("transparency.py").path
    let started = Date()
    let result = try run(
      try resolve("python3"), [script, "call", badClient.outbound, "Unary", "x"])
    let answer = try #require(try jsonObjects(result.stdout).first, "\(result.stderr)")
    #expect(answer["code"] as? String == "UNAVAILABLE", "\(answer)")
    #expect(
      (answer["details"] as? String ?? "").contains("went away (PROTOCOL_ERROR)"), "\(answer)")
    #expect(Date().timeIntervalSince(started) < 5)
  }
}
