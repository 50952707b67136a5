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
      app: server.address, clientLimits: "  idleTimeout: 2s\n  handshakeTimeout: 1s")
  }

  deinit {
    clientSidecar.process.stop()
    serverSidecar.process.stop()
    server.stop()
  }

  /// Runs one case against the outbound listener (h2c), or against the server sidecar's
  /// inbound listener (mutual TLS, as the `client` service); returns what the sidecar did.
  func attack(_ name: String, inbound: Bool = false) throws -> [String: Any] {
    let certs = mesh.certs
    let environment =
      inbound
      ? [
        "H2_ABUSE_CERT": "\(certs)/client.pem", "H2_ABUSE_KEY": "\(certs)/client-key.pem",
        "H2_ABUSE_CA": "\(certs)/bundle.pem",
      ] : [:]
    let target = inbound ? serverSidecar.inbound : clientSidecar.outbound
    let result = try run(try resolve("python3"), [abuse, target, name], environment: environment)
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

  /// Streams the sidecar resets for the client's errors count as the client's own resets
  /// (CVE-2025-8671): they were accepted and forwarded without end.
  @Test func resetsTheClientProvokesEndTheConnectionWithEnhanceYourCalm() throws {
    let result = try attack("made-you-reset")
    #expect(result["goaway"] as? [String] == ["ENHANCE_YOUR_CALM"], "\(result)")
    #expect(result["closed"] as? Bool == true)
    try expectHealthy()
  }

  /// Cancels are judged against completed calls: 300 cancels, each after a call answered,
  /// are what an app cancelling by deadline does, and the connection serves on.
  @Test func cancelsAmongCompletedCallsAreNotAResetLoop() throws {
    let result = try attack("cancels-among-calls")
    #expect(result["goaway"] as? [String] == [], "\(result)")
    #expect(result["answered"] as? Int == 300, "\(result)")
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

  /// RFC 9113 §5.1.2: each stream over the advertised 1,024 is refused on its own (the
  /// connection ended, before); the refusals count toward the reset budget.
  @Test func streamsOverTheAdvertisedLimitAreRefused() throws {
    let result = try attack("too-many-streams")
    #expect(result["resets"] as? [String: Int] == ["REFUSED_STREAM": 76], "\(result)")
    #expect(result["goaway"] as? [String] == [], "\(result)")
    #expect(result["closed"] as? Bool == false, "\(result)")
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

  /// Runs a held case against the client sidecar, whose RSS the script samples.
  func hold(_ name: String) throws -> [String: Any] {
    let result = try run(
      try resolve("python3"),
      [abuse, clientSidecar.outbound, name, "\(clientSidecar.process.pid)"])
    guard result.status == 0, let object = try jsonObjects(result.stdout).first else {
      throw HarnessError("h2_abuse.py \(name): \(result.stdout)\(result.stderr)")
    }
    print("h2_abuse.py \(name): \(result.stdout)", terminator: "")
    return object
  }

  /// What a well-behaved caller on another connection saw during the hold: every call answered
  /// OK, none slower than `slowest` milliseconds.
  func expectServedDuring(_ result: [String: Any], slowest: Double = 2_000) {
    let calls = result["calls"] as? [String: [String: Any]] ?? [:]
    let during = calls["during"] ?? [:]
    #expect((during["ok"] as? Int ?? 0) >= 5, "\(result)")
    #expect(during["failed"] as? Int == 0, "\(result)")
    #expect((during["p99_ms"] as? Double ?? .infinity) < slowest, "\(result)")
  }

  /// The sidecar's RSS grew by less than `mebibytes` during the hold.
  func expectGrowthUnder(_ mebibytes: Int, _ result: [String: Any]) {
    let before = result["rss_before_kib"] as? Int ?? 0
    let peak = result["rss_peak_kib"] as? Int ?? .max
    #expect(peak - before < mebibytes * 1024, "grew \((peak - before) / 1024) MiB: \(result)")
  }

  /// Eight connections that ask for 64 MiB server streams, open their windows wide and never
  /// read their sockets: the sidecar writes no more than the sockets take and holds a stream
  /// window per stream (it held everything the windows allowed: 1.6 GB).
  @Test func callersThatNeverReadCostABoundedBuffer() throws {
    let result = try hold("unread-streams")
    expectGrowthUnder(48, result)
    expectServedDuring(result)
    try expectHealthy()
  }

  /// Eight calls that keep their stream windows at 0 on 64 MiB server streams: the pooled
  /// connection to the app keeps flowing for everyone else (its window was held by the
  /// stalled streams, and other callers waited forever).
  @Test func streamsHeldAtAZeroWindowHoldBackNoOtherCaller() throws {
    let result = try hold("zero-window")
    expectGrowthUnder(48, result)
    expectServedDuring(result)
    try expectHealthy()
  }

  /// PING and SETTINGS floods whose acknowledgements are never read: past the control-frame
  /// rate the flooder is sent away (it was read, and answered into a growing buffer, for as
  /// long as it flooded).
  @Test func controlFrameFloodsCostABoundedBuffer() throws {
    for flood in ["ping-flood", "settings-flood"] {
      let result = try hold(flood)
      #expect((result["closed_after_s"] as? Double ?? .infinity) < 1, "\(result)")
      expectGrowthUnder(16, result)
      expectServedDuring(result)
    }
    try expectHealthy()
  }

  /// Empty and padding-only DATA frames on a request are never forwarded, and a run of them
  /// costs the sender its connection.
  @Test func aRunOfEmptyDataFramesEndsTheConnection() throws {
    let result = try attack("empty-data")
    #expect(result["goaway"] as? [String] == ["ENHANCE_YOUR_CALM"], "\(result)")
    #expect(result["closed"] as? Bool == true, "\(result)")
    try expectHealthy()
  }

  /// RFC 9113 §8.2.1 and §8.1.1: malformed fields in headers and trailers, and a
  /// content-length the DATA disagrees with, are each a stream reset — never forwarded — and
  /// the connection serves a good request after them.
  @Test func malformedFieldsAndContentLengthAreResetOneStreamAtATime() throws {
    let result = try attack("bad-fields")
    let streams = Array(stride(from: 1, through: 23, by: 2))
    #expect(result["resets"] as? [String: Int] == ["PROTOCOL_ERROR": 12], "\(result)")
    #expect(result["reset_streams"] as? [Int] == streams, "\(result)")
    #expect(result["answered_streams"] as? [Int] == [25], "\(result)")
    #expect(result["goaway"] as? [String] == [], "\(result)")
    try expectHealthy()
  }

  /// SETTINGS_INITIAL_WINDOW_SIZE that takes an open stream's window past 2^31-1 on the way
  /// (its frame's last entry would not) is a connection FLOW_CONTROL_ERROR (RFC 9113 §6.9.2).
  @Test func aWindowPushedPastTheMaximumEndsTheConnection() throws {
    let result = try attack("window-overflow")
    #expect(result["goaway"] as? [String] == ["FLOW_CONTROL_ERROR"], "\(result)")
    try expectHealthy()
  }

  /// 300 SETTINGS frames of 2,730 INITIAL_WINDOW_SIZE entries over 1,000 open streams cost one
  /// pass over the streams per frame: other callers are not held up (each entry walked every
  /// stream, seconds of waiting).
  @Test func aSettingsStormHoldsUpNoOtherCaller() throws {
    let result = try hold("settings-storm")
    expectServedDuring(result, slowest: 1_000)
  }

  /// RFC 9113 §5.3.1 and §6.3: a stream depending on itself is reset; PRIORITY on stream 0
  /// ends the connection.
  @Test func priorityOnItselfOrStreamZeroIsAnError() throws {
    let result = try attack("priority")
    let itself = result["self_dependency"] as? [String: Any] ?? [:]
    #expect(itself["resets"] as? [String: Int] == ["PROTOCOL_ERROR": 1], "\(result)")
    #expect(itself["goaway"] as? [String] == [], "\(result)")
    let zero = result["stream_zero"] as? [String: Any] ?? [:]
    #expect(zero["goaway"] as? [String] == ["PROTOCOL_ERROR"], "\(result)")
    try expectHealthy()
  }

  /// `handshakeTimeout` (1 s here) runs from the TCP connection to the caller's first
  /// SETTINGS, on the h2c listener too: a connection that says nothing, or trickles its
  /// preface, is closed then (it was kept for the idle timeout, 5 minutes by default).
  @Test func aConnectionThatDoesNotStartHTTP2InTimeIsClosed() throws {
    for name in ["no-preface", "slow-preface"] {
      let result = try attack(name)
      let seconds = result["closed_after_s"] as? Double ?? .infinity
      #expect(seconds >= 0.9 && seconds < 1.9, "\(name): \(result)")
    }
    try expectHealthy()
  }

  /// gRPC's HTTP/2 protocol: a request that is not gRPC is answered HTTP 415 (an HTTP client
  /// sees an HTTP status, not a bare reset), on both listeners.
  @Test func aRequestThatIsNotGRPCIsAnswered415() throws {
    for inbound in [false, true] {
      let result = try attack("not-grpc", inbound: inbound)
      #expect(result["http_status"] as? [String] == ["415"], "inbound \(inbound): \(result)")
      // Answered before the request ended: RST_STREAM NO_ERROR asks the client to stop
      // sending (RFC 9113 §8.1), after the answer.
      let resets = result["resets"] as? [String: Int] ?? ["?": 1]
      #expect(resets.keys.allSatisfy { $0 == "NO_ERROR" }, "inbound \(inbound): \(result)")
    }
  }

  /// `:authority` is optional in HTTP/2: the inbound side serves its app without it; the
  /// outbound side, which routes by it, answers INVALID_ARGUMENT naming it.
  @Test func aRequestWithoutAuthority() throws {
    let inbound = try attack("no-authority", inbound: true)
    #expect(inbound["grpc_status"] as? [String: Int] == ["0": 1], "\(inbound)")
    let outbound = try attack("no-authority")
    #expect(outbound["grpc_status"] as? [String: Int] == ["3": 1], "\(outbound)")
    #expect(
      (outbound["grpc_message"] as? [String])?.first?.contains(":authority") == true,
      "\(outbound)")
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
