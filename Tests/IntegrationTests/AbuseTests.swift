import Foundation
import TestSupport
import Testing

/// HTTP/2 abuse against both listeners, frame by frame (`Inputs/python/h2_abuse.py`): the
/// outbound one (h2c, as the local app) and the inbound one (mutual TLS, as a workload of the
/// mesh). Each attack costs the attacker its connection, and the sidecar keeps serving everyone
/// else.
@Suite(.serialized) final class AbuseTests {
  enum Listener: String, CaseIterable, CustomTestStringConvertible {
    case outbound
    case inbound

    var testDescription: String { rawValue }
  }

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
    let limits = "  idleTimeout: 2s\n  handshakeTimeout: 1s"
    (serverSidecar, clientSidecar) = try mesh.pair(
      app: server.address, serverLimits: limits, clientLimits: limits)
  }

  deinit {
    clientSidecar.process.stop()
    serverSidecar.process.stop()
    server.stop()
  }

  /// Runs one case against the outbound listener (h2c), or against the server sidecar's
  /// inbound listener (mutual TLS, as the `client` service); returns what the sidecar did.
  func attack(_ name: String, inbound: Bool = false) throws -> [String: Any] {
    try attack(name, on: inbound ? .inbound : .outbound)
  }

  /// The address a listener is on, the sidecar behind it, and what the script needs to speak
  /// to it (a client certificate of the mesh, for the inbound one).
  func endpoint(
    _ listener: Listener
  ) -> (
    target: String, sidecar: RunningSidecar, environment: [String: String]
  ) {
    let certs = mesh.certs
    switch listener {
    case .outbound:
      return (clientSidecar.outbound, clientSidecar, [:])
    case .inbound:
      return (
        serverSidecar.inbound, serverSidecar,
        [
          "H2_ABUSE_CERT": "\(certs)/client.pem", "H2_ABUSE_KEY": "\(certs)/client-key.pem",
          "H2_ABUSE_CA": "\(certs)/bundle.pem",
        ]
      )
    }
  }

  func attack(_ name: String, on listener: Listener) throws -> [String: Any] {
    let (target, _, environment) = endpoint(listener)
    let result = try run(try resolve("python3"), [abuse, target, name], environment: environment)
    guard result.status == 0, let object = try jsonObjects(result.stdout).first else {
      throw HarnessError("h2_abuse.py \(name): \(result.stdout)\(result.stderr)")
    }
    return object
  }

  /// After every attack a well-behaved caller is served.
  func expectHealthy(on listener: Listener = .outbound) throws {
    let healthy = try attack("then-healthy", on: listener)
    #expect(healthy["grpc_status"] as? [String: Int] == ["0": 1], "\(healthy)")
  }

  @Test(arguments: Listener.allCases)
  func rapidResetEndsTheConnectionWithEnhanceYourCalm(_ listener: Listener) throws {
    let result = try attack("rapid-reset", on: listener)
    #expect(result["goaway"] as? [String] == ["ENHANCE_YOUR_CALM"], "\(result)")
    #expect(result["closed"] as? Bool == true)
    try expectHealthy(on: listener)
  }

  /// Streams the sidecar resets for the client's errors count as the client's own resets
  /// (CVE-2025-8671): they were accepted and forwarded without end.
  @Test(arguments: Listener.allCases)
  func resetsTheClientProvokesEndTheConnectionWithEnhanceYourCalm(_ listener: Listener) throws {
    let result = try attack("made-you-reset", on: listener)
    #expect(result["goaway"] as? [String] == ["ENHANCE_YOUR_CALM"], "\(result)")
    #expect(result["closed"] as? Bool == true)
    try expectHealthy(on: listener)
  }

  /// Cancels are judged against completed calls: 300 cancels, each after a call answered,
  /// are what an app cancelling by deadline does, and the connection serves on.
  @Test(arguments: Listener.allCases)
  func cancelsAmongCompletedCallsAreNotAResetLoop(_ listener: Listener) throws {
    let result = try attack("cancels-among-calls", on: listener)
    #expect(result["goaway"] as? [String] == [], "\(result)")
    #expect(result["answered"] as? Int == 300, "\(result)")
  }

  @Test(arguments: Listener.allCases)
  func aContinuationFloodEndsTheConnection(_ listener: Listener) throws {
    let result = try attack("continuation-flood", on: listener)
    #expect(result["goaway"] as? [String] == ["ENHANCE_YOUR_CALM"], "\(result)")
    #expect(result["closed"] as? Bool == true)
    try expectHealthy(on: listener)
  }

  @Test(arguments: Listener.allCases)
  func anOversizedHeaderListEndsTheConnection(_ listener: Listener) throws {
    let result = try attack("big-headers", on: listener)
    #expect(result["goaway"] as? [String] == ["PROTOCOL_ERROR"], "\(result)")
    #expect(result["closed"] as? Bool == true)
    try expectHealthy(on: listener)
  }

  /// RFC 9113 §5.1.2: each stream over the advertised 1,024 is refused on its own (the
  /// connection ended, before); the refusals count toward the reset budget.
  @Test(arguments: Listener.allCases)
  func streamsOverTheAdvertisedLimitAreRefused(_ listener: Listener) throws {
    // The sidecar's connection upstream made first: while it is being made, calls past
    // `maxPendingRequests` are answered UNAVAILABLE, which is right but not what this tests.
    try expectHealthy(on: listener)
    let result = try attack("too-many-streams", on: listener)
    #expect(result["resets"] as? [String: Int] == ["REFUSED_STREAM": 76], "\(result)")
    #expect(result["goaway"] as? [String] == [], "\(result)")
    #expect(result["closed"] as? Bool == false, "\(result)")
    try expectHealthy(on: listener)
  }

  @Test(arguments: Listener.allCases)
  func idleAndSlowConnectionsAreClosedAfterTheIdleTimeout(_ listener: Listener) throws {
    let idle = try attack("idle", on: listener)
    #expect(idle["goaway"] as? [String] == ["NO_ERROR"], "\(idle)")
    #expect(idle["closed"] as? Bool == true)
    #expect((idle["seconds"] as? Double ?? 99) < 4)
    let slow = try attack("slowloris", on: listener)
    #expect(slow["closed"] as? Bool == true, "\(slow)")
    #expect((slow["seconds"] as? Double ?? 99) < 5)
    try expectHealthy(on: listener)
  }

  /// A caller of the mesh that goes silent with a call open (its host lost: nothing answers)
  /// is PINGed after 5 s of silence and dropped when the PING goes unanswered, so its calls
  /// end at the app too. A local app (outbound) is not PINGed: its own calls' deadlines
  /// bound it.
  @Test func aSilentCallerOfTheMeshIsPingedAndDropped() throws {
    let inbound = try attack("silent-caller", on: .inbound)
    #expect(inbound["pings"] as? Int == 1, "\(inbound)")
    #expect(inbound["closed"] as? Bool == true, "\(inbound)")
    let seconds = inbound["seconds"] as? Double ?? 99
    #expect(seconds >= 5 && seconds < 9, "\(inbound)")
    let outbound = try attack("silent-caller", on: .outbound)
    #expect(outbound["pings"] as? Int == 0, "\(outbound)")
    #expect(outbound["closed"] as? Bool == false, "\(outbound)")
    try expectHealthy(on: .inbound)
  }

  /// Malformed requests (RFC 9113 §8.2–8.3) are refused one stream at a time, and a request
  /// with allowed headers of the same lengths as the refused names is served on the same
  /// connection.
  @Test(arguments: Listener.allCases)
  func malformedRequestsAreResetAndTheConnectionServesOn(_ listener: Listener) throws {
    let result = try attack("malformed", on: listener)
    #expect(result["resets"] as? [String: Int] == ["PROTOCOL_ERROR": 8], "\(result)")
    #expect(result["reset_streams"] as? [Int] == [1, 3, 5, 7, 9, 11, 13, 15], "\(result)")
    #expect(result["grpc_status"] as? [String: Int] == ["0": 1], "\(result)")
    #expect(result["answered_streams"] as? [Int] == [17], "\(result)")
    #expect(result["goaway"] as? [String] == [], "\(result)")
    try expectHealthy(on: listener)
  }

  /// Runs a held case against a listener; the script samples its sidecar's RSS.
  func hold(_ name: String, on listener: Listener) throws -> [String: Any] {
    let (target, sidecar, environment) = endpoint(listener)
    let result = try run(
      try resolve("python3"), [abuse, target, name, "\(sidecar.process.pid)"],
      environment: environment)
    guard result.status == 0, let object = try jsonObjects(result.stdout).first else {
      throw HarnessError("h2_abuse.py \(name): \(result.stdout)\(result.stderr)")
    }
    print("h2_abuse.py \(name) (\(listener)): \(result.stdout)", terminator: "")
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
  @Test(arguments: Listener.allCases)
  func callersThatNeverReadCostABoundedBuffer(_ listener: Listener) throws {
    let result = try hold("unread-streams", on: listener)
    expectGrowthUnder(48, result)
    expectServedDuring(result)
    try expectHealthy(on: listener)
  }

  /// Eight calls that keep their stream windows at 0 on 64 MiB server streams: the pooled
  /// connection to the app keeps flowing for everyone else (its window was held by the
  /// stalled streams, and other callers waited forever).
  @Test(arguments: Listener.allCases)
  func streamsHeldAtAZeroWindowHoldBackNoOtherCaller(_ listener: Listener) throws {
    let result = try hold("zero-window", on: listener)
    expectGrowthUnder(48, result)
    expectServedDuring(result)
    try expectHealthy(on: listener)
  }

  /// PING and SETTINGS floods whose acknowledgements are never read: past the control-frame
  /// rate the flooder is sent away (it was read, and answered into a growing buffer, for as
  /// long as it flooded).
  @Test(arguments: Listener.allCases)
  func controlFrameFloodsCostABoundedBuffer(_ listener: Listener) throws {
    for flood in ["ping-flood", "settings-flood"] {
      let result = try hold(flood, on: listener)
      #expect((result["closed_after_s"] as? Double ?? .infinity) < 1, "\(result)")
      expectGrowthUnder(16, result)
      expectServedDuring(result)
    }
    try expectHealthy(on: listener)
  }

  /// Empty and padding-only DATA frames on a request are never forwarded, and a run of them
  /// costs the sender its connection.
  @Test(arguments: Listener.allCases)
  func aRunOfEmptyDataFramesEndsTheConnection(_ listener: Listener) throws {
    let result = try attack("empty-data", on: listener)
    #expect(result["goaway"] as? [String] == ["ENHANCE_YOUR_CALM"], "\(result)")
    #expect(result["closed"] as? Bool == true, "\(result)")
    try expectHealthy(on: listener)
  }

  /// RFC 9113 §8.2.1 and §8.1.1: malformed fields in headers and trailers, and a
  /// content-length the DATA disagrees with, are each a stream reset — never forwarded — and
  /// the connection serves a good request after them.
  @Test(arguments: Listener.allCases)
  func malformedFieldsAndContentLengthAreResetOneStreamAtATime(_ listener: Listener) throws {
    let result = try attack("bad-fields", on: listener)
    let streams = Array(stride(from: 1, through: 23, by: 2))
    #expect(result["resets"] as? [String: Int] == ["PROTOCOL_ERROR": 12], "\(result)")
    #expect(result["reset_streams"] as? [Int] == streams, "\(result)")
    #expect(result["answered_streams"] as? [Int] == [25], "\(result)")
    #expect(result["goaway"] as? [String] == [], "\(result)")
    try expectHealthy(on: listener)
  }

  /// The empty-DATA, header and content-length rows again with a grpc-swift app behind
  /// (relay-service), which closes its whole connection — every other caller's calls on it —
  /// after a run of empty DATA frames: none of it reaches the app, a call after each case is
  /// answered, and eight callers stalled on its large server streams hold back nobody.
  @Test(arguments: Listener.allCases)
  func aGRPCSwiftAppBehindSeesNoneOfIt(_ listener: Listener) throws {
    let relay = try ServiceProcess(
      binary("relay-service"), ["--name", "echo", "--listen", "127.0.0.1:0"])
    defer { relay.stop() }
    let (server, client) = try mesh.pair(app: relay.address)
    defer {
      client.process.stop()
      server.process.stop()
    }
    var (target, _, environment) = endpoint(listener)
    let sidecar = listener == .inbound ? server : client
    target = listener == .inbound ? server.inbound : client.outbound
    environment["H2_ABUSE_APP"] = "relay"
    func run(_ arguments: [String]) throws -> [String: Any] {
      let result = try TestSupport.run(
        try resolve("python3"), [abuse, target] + arguments, environment: environment)
      guard result.status == 0, let object = try jsonObjects(result.stdout).first else {
        throw HarnessError("h2_abuse.py \(arguments): \(result.stdout)\(result.stderr)")
      }
      return object
    }
    let empty = try run(["empty-data"])
    #expect(empty["goaway"] as? [String] == ["ENHANCE_YOUR_CALM"], "\(empty)")
    #expect(try run(["then-healthy"])["grpc_status"] as? [String: Int] == ["0": 1])
    let fields = try run(["bad-fields"])
    #expect(fields["resets"] as? [String: Int] == ["PROTOCOL_ERROR": 12], "\(fields)")
    #expect(fields["answered_streams"] as? [Int] == [25], "\(fields)")
    #expect(fields["grpc_status"] as? [String: Int] == ["0": 1], "\(fields)")
    let stalled = try run(["zero-window", "\(sidecar.process.pid)"])
    expectGrowthUnder(48, stalled)
    expectServedDuring(stalled)
    #expect(try run(["then-healthy"])["grpc_status"] as? [String: Int] == ["0": 1])
    // The app's connection from its sidecar was never closed under the calls.
    #expect(!relay.log.contains("Too many zero length"), "\(relay.log.suffix(2_000))")
  }

  /// SETTINGS_INITIAL_WINDOW_SIZE that takes an open stream's window past 2^31-1 on the way
  /// (its frame's last entry would not) is a connection FLOW_CONTROL_ERROR (RFC 9113 §6.9.2).
  @Test(arguments: Listener.allCases)
  func aWindowPushedPastTheMaximumEndsTheConnection(_ listener: Listener) throws {
    let result = try attack("window-overflow", on: listener)
    #expect(result["goaway"] as? [String] == ["FLOW_CONTROL_ERROR"], "\(result)")
    try expectHealthy(on: listener)
  }

  /// 300 SETTINGS frames of 2,730 INITIAL_WINDOW_SIZE entries over 1,000 open streams cost one
  /// pass over the streams per frame: other callers are not held up (each entry walked every
  /// stream, seconds of waiting).
  @Test(arguments: Listener.allCases)
  func aSettingsStormHoldsUpNoOtherCaller(_ listener: Listener) throws {
    let result = try hold("settings-storm", on: listener)
    expectServedDuring(result, slowest: 1_000)
  }

  /// RFC 9113 §5.3.1 and §6.3: a stream depending on itself is reset; PRIORITY on stream 0
  /// ends the connection.
  @Test(arguments: Listener.allCases)
  func priorityOnItselfOrStreamZeroIsAnError(_ listener: Listener) throws {
    let result = try attack("priority", on: listener)
    let itself = result["self_dependency"] as? [String: Any] ?? [:]
    #expect(itself["resets"] as? [String: Int] == ["PROTOCOL_ERROR": 1], "\(result)")
    #expect(itself["goaway"] as? [String] == [], "\(result)")
    let zero = result["stream_zero"] as? [String: Any] ?? [:]
    #expect(zero["goaway"] as? [String] == ["PROTOCOL_ERROR"], "\(result)")
    try expectHealthy(on: listener)
  }

  /// RFC 9113 §5.1 on closed streams: DATA after the caller's own RST_STREAM is a stream
  /// error STREAM_CLOSED; DATA on a stream the sidecar reset is dropped while it may have been
  /// in flight, and ends the connection (PROTOCOL_ERROR) once the caller has acknowledged a
  /// PING sent after the reset — no timer decides.
  @Test(arguments: Listener.allCases)
  func framesOnClosedStreamsAreJudgedByHowTheyClosed(_ listener: Listener) throws {
    let result = try attack("closed-streams", on: listener)
    let own = result["after_own_reset"] as? [String: Any] ?? [:]
    #expect(own["resets"] as? [String: Int] == ["STREAM_CLOSED": 1], "\(result)")
    #expect(own["goaway"] as? [String] == [], "\(result)")
    let inFlight = result["in_flight"] as? [String: Any] ?? [:]
    #expect(inFlight["resets"] as? [String: Int] == ["PROTOCOL_ERROR": 1], "\(result)")
    #expect(inFlight["goaway"] as? [String] == [], "\(result)")
    #expect((result["pings"] as? Int ?? 0) >= 1, "\(result)")
    let afterAck = result["after_ack"] as? [String: Any] ?? [:]
    #expect(afterAck["goaway"] as? [String] == ["PROTOCOL_ERROR"], "\(result)")
    try expectHealthy(on: listener)
  }

  /// `handshakeTimeout` (1 s here) runs from the TCP connection to the caller's first
  /// SETTINGS, on the h2c listener too: a connection that says nothing, or trickles its
  /// preface, is closed then (it was kept for the idle timeout, 5 minutes by default).
  @Test(arguments: Listener.allCases)
  func aConnectionThatDoesNotStartHTTP2InTimeIsClosed(_ listener: Listener) throws {
    for name in ["no-preface", "slow-preface"] {
      let result = try attack(name, on: listener)
      let seconds = result["closed_after_s"] as? Double ?? .infinity
      #expect(seconds >= 0.9 && seconds < 1.9, "\(name): \(result)")
    }
    try expectHealthy(on: listener)
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
