import Foundation
import TestSupport
import Testing

/// Retries, deadlines, fault injection and traffic split, each seen from both ends: what the
/// caller gets, and what the servers executed (counted in a log they append to as they go).
@Suite(.serialized) struct RetryAndDeadlineTests {
  /// Servers of `r.R` (`resilience.py`), each with a sidecar, and client sidecars routing
  /// `r` by the configs a test writes.
  final class Scene: @unchecked Sendable {
    let mesh: MeshFixture
    let log: String
    var processes: [ServiceProcess] = []

    init(_ name: String) throws {
      mesh = try MeshFixture(name, services: ["r", "client"])
      log = mesh.directory.appendingPathComponent("executions.jsonl").path
    }

    deinit { for process in processes.reversed() { process.stop() } }

    /// A server named `name` and its sidecar; returns the sidecar's inbound address.
    func server(_ name: String, _ flags: [String] = []) throws -> String {
      let app = try ServiceProcess(try resolve("python3"), [script, "serve", name, log] + flags)
      processes.append(app)
      let sidecar = try mesh.sidecar("r", app: app.address)
      processes.append(sidecar.process)
      return sidecar.inbound
    }

    /// A client sidecar whose mesh config is `config`.
    func client(_ config: String) throws -> RunningSidecar {
      let file = try mesh.write("client-\(processes.count).yaml", config)
      let sidecar = try mesh.sidecar("client", app: "127.0.0.1:1", mesh: file)
      processes.append(sidecar.process)
      return sidecar
    }

    /// Every execution the servers logged.
    func executions() throws -> [[String: Any]] {
      let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
      return try jsonObjects(text)
    }

    func executions(of key: String) throws -> [[String: Any]] {
      try executions().filter {
        $0["key"] as? String == key && $0["method"] as? String != "cancelled"
      }
    }
  }

  static let script = PythonInteropTests.python.appendingPathComponent("resilience.py").path
  var script: String { Self.script }

  func call(
    _ client: RunningSidecar, _ method: String, _ key: String, timeout: Double? = nil,
    headers: [String: String] = [:]
  ) throws -> [String: Any] {
    let extra = [timeout.map { "\($0)" } ?? "-"] + headers.map { "\($0.key)=\($0.value)" }
    let result = try run(
      try resolve("python3"), [script, "call", client.outbound, method, key] + extra)
    return try #require(try jsonObjects(result.stdout).first, "\(result.stderr)")
  }

  /// Calls back to back for `seconds`, or until `calls` are made.
  func load(
    _ client: RunningSidecar, _ method: String, seconds: Double = 0, calls: Int? = nil,
    concurrency: Int, headers: [String: String] = [:]
  ) throws -> [String: Any] {
    let extra = ["-"] + headers.map { "\($0.key)=\($0.value)" }
    let span = calls.map { "n\($0)" } ?? "\(seconds)"
    let result = try run(
      try resolve("python3"),
      [script, "load", client.outbound, method, span, "\(concurrency)"] + extra)
    return try #require(try jsonObjects(result.stdout).first, "\(result.stderr)")
  }

  static let idempotent = """
        methods:
          r.R/Get: {idempotent: true}
          r.R/Flaky: {idempotent: true}
          r.R/Sleep: {idempotent: true}
    """

  /// An idempotent method failing UNAVAILABLE is tried again (up to 3 attempts, each naming
  /// the ones before); a non-idempotent one that reached the app never is; one that never
  /// reached it (a refused connection) is, whatever its method.
  @Test func callsAreRetriedOnlyWhenThatIsSafe() throws {
    let scene = try Scene("retries")
    let healthy = try scene.server("a")
    let failing = try scene.server("b", ["--fail-all"])
    let toHealthy = try scene.client(
      """
      services:
        r:
          endpoints: [{address: \(healthy)}]
      \(Self.idempotent)
      """)
    let flaky = try call(toHealthy, "Flaky", "twice:2")
    #expect(flaky["code"] as? String == "OK", "\(flaky)")
    let attempts = try scene.executions(of: "twice:2").map { $0["attempt"] as? String ?? "" }
    #expect(attempts == ["0", "1", "2"])
    let hopeless = try call(toHealthy, "Flaky", "always:9")
    #expect(hopeless["code"] as? String == "UNAVAILABLE")
    #expect(try scene.executions(of: "always:9").count == 3)
    #expect(
      try toHealthy.metric("trellis_retries_total", ["service": "r", "reason": "UNAVAILABLE"])
        == 4)

    let toFailing = try scene.client(
      """
      services:
        r:
          endpoints: [{address: \(failing)}]
      \(Self.idempotent)
      """)
    let created = try call(toFailing, "Create", "order-1")
    #expect(created["code"] as? String == "UNAVAILABLE")
    #expect(created["details"] as? String == "b fails every call")
    #expect(try scene.executions(of: "order-1").count == 1)
    _ = try call(toFailing, "Get", "read-1")
    #expect(try scene.executions(of: "read-1").count == 3)

    // The server's pushback replaces the backoff; a negative one stops the retries.
    let pushing = try scene.server("p", ["--fail-all", "--pushback", "300"])
    let stopping = try scene.server("s", ["--fail-all", "--pushback", "-1"])
    for (address, key) in [(pushing, "pushed"), (stopping, "stopped")] {
      let pushed = try scene.client(
        """
        services:
          r:
            endpoints: [{address: \(address)}]
        \(Self.idempotent)
        """)
      let answer = try call(pushed, "Get", key)
      #expect(answer["code"] as? String == "UNAVAILABLE", "\(answer)")
      let ms = answer["ms"] as? Double ?? 0
      if key == "pushed" {
        #expect(try scene.executions(of: key).count == 3)
        #expect(ms >= 600 && ms < 2000, "\(answer)")
      } else {
        #expect(try scene.executions(of: key).count == 1)
        #expect(ms < 300, "\(answer)")
      }
    }

    // Half the first attempts go to a port nobody listens on: refused, so retried.
    let withDeadPort = try scene.client(
      """
      services:
        r:
          endpoints: [{address: "127.0.0.1:1"}, {address: \(healthy)}]
          loadBalancing: round-robin
      """)
    for index in 0..<10 {
      let answer = try call(withDeadPort, "Create", "dead-port-\(index)")
      #expect(answer["code"] as? String == "OK", "\(answer)")
      #expect(try scene.executions(of: "dead-port-\(index)").count == 1)
    }
    #expect(
      try withDeadPort.metric("trellis_retries_total", ["service": "r", "reason": "refused"]) >= 4)
  }

  /// The caller's grpc-timeout is honoured and forwarded minus the time spent; a route's
  /// timeout and per-try timeout apply too. Expiry answers DEADLINE_EXCEEDED (never
  /// UNAVAILABLE) and cancels the call upstream.
  @Test func deadlinesEndCallsAndCancelThemUpstream() throws {
    let scene = try Scene("deadlines")
    let server = try scene.server("a")
    let client = try scene.client(
      """
      services:
        r:
          endpoints: [{address: \(server)}]
      \(Self.idempotent)
      routes:
        - service: r
          match: {headers: {x-mode: route-timeout}}
          timeout: 300ms
        - service: r
          match: {headers: {x-mode: per-try}}
          timeout: 5s
          perTryTimeout: 200ms
        - service: r
          match: {headers: {x-mode: overall}}
          timeout: 800ms
          perTryTimeout: 400ms
      """)
    // The caller's 500 ms against a 2 s handler.
    let callerDeadline = try call(client, "Sleep", "2000", timeout: 0.5)
    #expect(callerDeadline["code"] as? String == "DEADLINE_EXCEEDED", "\(callerDeadline)")
    #expect((callerDeadline["ms"] as? Double ?? 0) < 750, "\(callerDeadline)")
    print("caller deadline 500 ms: DEADLINE_EXCEEDED after \(callerDeadline["ms"] ?? "") ms")
    let seen = try #require(try scene.executions(of: "2000").first)
    let forwarded = try #require(seen["remaining"] as? Double, "\(seen)")
    #expect(forwarded > 0.3 && forwarded <= 0.5, "\(seen)")
    try expectCancelled(scene, "2000")

    // 800 ms in all, 400 ms a try: the second try is cut short by the whole.
    let overall = try call(client, "Sleep", "2001", headers: ["x-mode": "overall"])
    #expect(overall["code"] as? String == "DEADLINE_EXCEEDED", "\(overall)")
    let overallMs = overall["ms"] as? Double ?? 0
    #expect(overallMs > 750 && overallMs < 1100, "\(overall)")
    #expect((overall["details"] as? String ?? "").contains("the route's timeout of 800 ms"))
    #expect(try scene.executions(of: "2001").count == 2)
    print("overall 800 ms, per try 400 ms: DEADLINE_EXCEEDED after \(overallMs) ms")

    let routeTimeout = try call(client, "Sleep", "3001", headers: ["x-mode": "route-timeout"])
    #expect(routeTimeout["code"] as? String == "DEADLINE_EXCEEDED")
    #expect((routeTimeout["details"] as? String ?? "").contains("the route's timeout of 300 ms"))
    let routeSeen = try #require(try scene.executions(of: "3001").first)
    #expect((routeSeen["remaining"] as? Double ?? 9) <= 0.3, "\(routeSeen)")
    try expectCancelled(scene, "3001")

    let perTry = try call(client, "Sleep", "3002", headers: ["x-mode": "per-try"])
    #expect(perTry["code"] as? String == "DEADLINE_EXCEEDED", "\(perTry)")
    #expect((perTry["ms"] as? Double ?? 9999) < 1500, "\(perTry)")
    #expect((perTry["details"] as? String ?? "").contains("per-try timeout of 200 ms"))
    let attempts = try scene.executions(of: "3002")
    #expect(attempts.count == 3, "\(attempts) \(perTry)")
    // The caller's own deadline is the caller's to keep first; the route's three are the
    // sidecar's.
    #expect(
      try client.metric(
        "trellis_deadline_exceeded_total", ["direction": "outbound", "service": "r"])
        >= 3)
  }

  func expectCancelled(_ scene: Scene, _ key: String) throws {
    let deadline = Date().addingTimeInterval(5)
    while Date() < deadline {
      if try scene.executions().contains(where: {
        $0["method"] as? String == "cancelled" && $0["key"] as? String == key
      }) {
        return
      }
      Thread.sleep(forTimeInterval: 0.1)
    }
    Issue.record("the server never saw call \(key) cancelled")
  }

  /// A route injects faults for chaos drills: aborts with a code for a share of calls, delays
  /// for a share of calls.
  @Test func faultsAreInjectedByRoute() throws {
    let scene = try Scene("faults")
    let server = try scene.server("a")
    let client = try scene.client(
      """
      services:
        r:
          endpoints: [{address: \(server)}]
      routes:
        - service: r
          name: drill
          match: {headers: {x-drill: abort}}
          fault: {abort: {code: RESOURCE_EXHAUSTED, percent: 100}}
        - service: r
          match: {headers: {x-drill: delay}}
          fault: {delay: {duration: 300ms, percent: 100}}
        - service: r
          match: {headers: {x-drill: tenth}}
          fault: {abort: {code: UNAVAILABLE, percent: 10}}
      """)
    let aborted = try call(client, "Get", "abort-1", headers: ["x-drill": "abort"])
    #expect(aborted["code"] as? String == "RESOURCE_EXHAUSTED")
    #expect(aborted["details"] as? String == "fault injected by route 'drill' of 'r'")
    #expect(try scene.executions(of: "abort-1").isEmpty)
    let delayed = try call(client, "Get", "delay-1", headers: ["x-drill": "delay"])
    #expect(delayed["code"] as? String == "OK")
    #expect((delayed["ms"] as? Double ?? 0) >= 300)
    // 10 % aborted, over 10,000 calls: within ±2 %.
    let tenth = try load(
      client, "Get", calls: 10_000, concurrency: 8, headers: ["x-drill": "tenth"])
    let codes = tenth["codes"] as? [String: Int] ?? [:]
    let total = Double((codes["OK"] ?? 0) + (codes["UNAVAILABLE"] ?? 0))
    let share = Double(codes["UNAVAILABLE"] ?? 0) / max(total, 1)
    #expect(total == 10_000 && share > 0.08 && share < 0.12, "\(codes)")
    print("fault abort 10 %: \(share * 100) % of \(Int(total)) calls")
    #expect(
      try client.metric("trellis_faults_injected_total", ["service": "r", "kind": "abort"])
        == 1 + Double(codes["UNAVAILABLE"] ?? 0))
  }

  /// Weights split a route's calls across endpoint subsets by label (a canary at 10 %), and
  /// a header match sends a call to a subset of its own.
  @Test func trafficIsSplitByWeightAndRoutedByHeader() throws {
    let scene = try Scene("split")
    let v1 = try scene.server("v1")
    let v2 = try scene.server("v2")
    let client = try scene.client(
      """
      services:
        r:
          endpoints:
            - {address: \(v1), labels: {version: v1}}
            - {address: \(v2), labels: {version: v2}}
      routes:
        - service: r
          match: {headers: {x-canary: "1"}}
          split: [{labels: {version: v2}, weight: 1}]
        - service: r
          split:
            - {labels: {version: v1}, weight: 90}
            - {labels: {version: v2}, weight: 10}
      """)
    // 90/10 over 10,000 calls: within ±2 %.
    let split = try load(client, "Get", calls: 10_000, concurrency: 8)
    let servers = split["servers"] as? [String: Int] ?? [:]
    let calls = Double((servers["v1"] ?? 0) + (servers["v2"] ?? 0))
    let canary = Double(servers["v2"] ?? 0) / max(calls, 1)
    #expect(calls == 10_000 && canary > 0.08 && canary < 0.12, "\(servers)")
    print("split 90/10: \(canary * 100) % to v2 of \(Int(calls)) calls")
    for index in 0..<10 {
      let answer = try call(client, "Get", "canary-\(index)", headers: ["x-canary": "1"])
      #expect(answer["server"] as? String == "v2", "\(answer)")
    }
  }
}
