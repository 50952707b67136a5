import Foundation
import TestSupport
import Testing

/// Traces as a user finds them: sidecars and apps export spans to the control plane's
/// collector, and `meshctl trace` lists, draws and dumps them. Everything runs as real
/// processes joined through a control plane, with every new trace sampled.
@Suite(.serialized) final class TracingTests {
  let mesh: MeshFixture
  let plane: ServiceProcess
  var processes: [ServiceProcess] = []
  static let resilience = PythonInteropTests.python.appendingPathComponent("resilience.py").path

  init() throws {
    mesh = try MeshFixture("tracing", services: [])
    plane = try mesh.controlPlane()
  }

  deinit {
    for process in processes.reversed() { process.stop() }
    plane.stop()
  }

  /// Applies `config` with every new trace sampled and access logs on.
  func apply(_ config: String = "") throws {
    let file = try mesh.write(
      "mesh-\(processes.count).yaml", "tracing: {sampling: 1.0, accessLog: true}\n" + config)
    try mesh.meshctl(["apply", "-f", file], plane: plane)
  }

  /// A sidecar joined through the control plane, not registered (its app is not a gRPC
  /// health server, or it has none).
  func sidecar(
    _ service: String, app: String = "127.0.0.1:1", register: Bool = false
  ) throws
    -> RunningSidecar
  {
    let sidecar = try mesh.joiningSidecar(
      service, app: app, plane: plane, instance: "\(service)-\(processes.count)",
      extra: register ? "" : "register: false\n")
    processes.append(sidecar.process)
    return sidecar
  }

  /// A `relay-service` named `name` behind its own sidecar, exporting its spans to it.
  func relay(_ name: String) throws -> (sidecar: RunningSidecar, app: ServiceProcess) {
    let port = try freeLoopbackPort()
    let sidecar = try self.sidecar(name, app: "127.0.0.1:\(port)", register: true)
    let app = try ServiceProcess(
      binary("relay-service"),
      ["--name", name, "--listen", "127.0.0.1:\(port)", "--sidecar", sidecar.outbound],
      environment: ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://\(sidecar.admin)/v1/traces"])
    processes.append(app)
    return (sidecar, app)
  }

  /// A `resilience.py` server named `name` behind a sidecar of service `r`.
  func resilienceServer(_ name: String, _ flags: [String] = []) throws -> RunningSidecar {
    let log = mesh.directory.appendingPathComponent("executions.jsonl").path
    let app = try ServiceProcess(
      try resolve("python3"), [Self.resilience, "serve", name, log] + flags)
    processes.append(app)
    return try sidecar("r", app: app.address)
  }

  /// One `resilience.py` call of `r` through `client`.
  func call(
    _ client: RunningSidecar, _ method: String, _ key: String, timeout: Double? = nil,
    headers: [String: String] = [:]
  ) throws -> [String: Any] {
    let extra = [timeout.map { "\($0)" } ?? "-"] + headers.map { "\($0.key)=\($0.value)" }
    let result = try run(
      try resolve("python3"), [Self.resilience, "call", client.outbound, method, key] + extra)
    return try #require(try jsonObjects(result.stdout).first, "\(result.stderr)")
  }

  /// `meshctl trace list -o json` with `filters`.
  func list(_ filters: [String]) throws -> [[String: Any]] {
    let text = try mesh.meshctl(["trace", "list", "-o", "json"] + filters, plane: plane)
    return try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [[String: Any]] ?? []
  }

  /// The spans of the one trace `filters` match, once `count` of them are stored (spans
  /// reach the collector within a second or so); read back from `meshctl trace dump`.
  func trace(
    _ filters: [String], spans count: Int, timeout: TimeInterval = 20
  ) throws
    -> [DumpedSpan]
  {
    let deadline = Date().addingTimeInterval(timeout)
    var last: [[String: Any]] = []
    while Date() < deadline {
      last = try list(filters)
      if let trace = last.first, trace["spans"] as? Int ?? 0 >= count,
        let id = trace["traceId"] as? String
      {
        // A moment more: a straggler would show as a span too many.
        Thread.sleep(forTimeInterval: 1)
        let text = try mesh.meshctl(["trace", "dump", id], plane: plane)
        return try DumpedSpan.parse(text)
      }
      Thread.sleep(forTimeInterval: 0.3)
    }
    throw HarnessError("no trace with \(count) spans for \(filters): \(last)")
  }

  // MARK: Tests

  /// One call through a chain of three services, each calling the next through its sidecar:
  /// one trace holding every sidecar's span (client and server) and every app's (its server
  /// span and the span its handler made), each under the right parent, nested in time; drawn
  /// by `trace show`, dumped, and rendered as HTML by `trace view`.
  @Test func aCallThroughThreeServicesIsOneTrace() throws {
    try apply()
    let edge = try sidecar("edge")
    let (aSidecar, a) = try relay("a")
    let (bSidecar, b) = try relay("b")
    let (cSidecar, c) = try relay("c")
    try waitForRegistrations(["a", "b", "c"])
    let request = #"{"next":["b","c"],"workMs":2,"payload":"chain"}"#
    let called = try rpc([
      "call", "--plaintext", "--authority", "a", edge.outbound, "trellis.demo.v1.Relay/Hop", "-d",
      request,
    ])
    #expect(called.status == 0, "\(called.stderr)")
    #expect(called.stdout.contains("\"c\""), "\(called.stdout)")

    let spans = try trace(["--method", "trellis.demo.v1.Relay/Hop"], spans: 12)
    // edge's client span; then, for each of a, b and c: its sidecar's server span, its app's
    // server span and `work`, and (a and b) its sidecar's client span to the next.
    #expect(spans.count == 12, "\(spans.map(\.label))")
    let root = try #require(spans.first { $0.parent == nil }, "\(spans.map(\.label))")
    #expect(root.label == "edge sidecar client")
    var parent = root
    for (index, service) in ["a", "b", "c"].enumerated() {
      let inbound = try #require(spans.first { $0.label == "\(service) sidecar server" })
      #expect(inbound.parent == parent.id, "\(service)'s inbound span is not under \(parent.label)")
      let app = try #require(spans.first { $0.label == "\(service) app server" })
      #expect(app.parent == inbound.id)
      let work = try #require(spans.first { $0.label == "\(service) app internal" })
      #expect(work.parent == app.id && work.name == "work")
      for (outer, inner) in [(parent, inbound), (inbound, app), (app, work)] {
        #expect(
          inner.start >= outer.start && inner.end <= outer.end,
          """
          \(inner.label) [\(inner.start), \(inner.end)] is not within \(outer.label) \
          [\(outer.start), \(outer.end)]
          """
        )
      }
      #expect(
        inbound.attributes["trellis.peer.identity"] as? String
          == "spiffe://trellis.local/svc/\(index == 0 ? "edge" : ["a", "b"][index - 1])")
      if index < 2 {
        let onward = try #require(spans.first { $0.label == "\(service) sidecar client" })
        #expect(onward.parent == app.id)
        #expect(onward.attributes["rpc.service"] as? String == "trellis.demo.v1.Relay")
        #expect(onward.attributes["rpc.method"] as? String == "Hop")
        #expect(onward.attributes["rpc.grpc.status_code"] as? String == "0")
        parent = onward
      }
    }
    #expect(Set(spans.map(\.trace)).count == 1)

    // The app's log lines of the call carry its trace and span.
    let appLine = try #require(
      try jsonObjects(b.log).first {
        $0["message"] as? String == "rpc" && $0["method"] as? String == "/trellis.demo.v1.Relay/Hop"
      })
    #expect(appLine["trace_id"] as? String == root.trace, "\(appLine)")
    #expect(appLine["span_id"] as? String == spans.first { $0.label == "b app server" }?.id)
    _ = (a, c)

    // The waterfall in the terminal: every span a row, children indented under parents.
    let shown = try mesh.meshctl(["trace", "show", root.trace], plane: plane)
    let rows = shown.split(separator: "\n").filter { $0.contains("|") && !$0.hasPrefix("SPAN") }
    #expect(rows.count == 12, "\(shown)")
    #expect(rows.first?.hasPrefix("trellis.demo.v1.Relay/Hop") == true, "\(shown)")
    #expect(rows.contains { $0.hasPrefix("                  work") }, "\(shown)")
    print(shown)

    // Dumped to a file and drawn from it, in the terminal and as an HTML page.
    let dump = mesh.directory.appendingPathComponent("dump.jsonl").path
    try mesh.meshctl(["trace", "dump", root.trace, "--file", dump], plane: plane)
    let viewed = try run(binary("meshctl"), ["trace", "view", dump])
    #expect(viewed.status == 0 && viewed.stdout == shown, "\(viewed.stderr)")
    let html = mesh.directory.appendingPathComponent("trace.html").path
    let page = try run(binary("meshctl"), ["trace", "view", dump, "--html", html])
    #expect(page.status == 0, "\(page.stderr)")
    try TraceViewPage.check(html, rows: 12, traceID: root.trace)

    // Every sidecar reached the control plane over one connection: its config stream, its
    // telemetry stream and its spans.
    let port = try #require(Int(plane.address.split(separator: ":").last ?? ""))
    for sidecar in [edge, aSidecar, bSidecar, cSidecar] {
      var held = 0
      let one = try waitFor(seconds: 5) {
        held = try establishedConnections(of: sidecar.process.pid, toPort: port)
        return held == 1
      }
      #expect(one, "\(sidecar.process.log)\nholds \(held) connections to the control plane")
    }
  }

  /// A retried call shows both attempts — the client span counts them and records the retry,
  /// and each attempt's server span is under it — and a deadline shows its expiry.
  @Test func retriesAndDeadlinesShowInTheTrace() throws {
    let server = try resilienceServer("one")
    try apply(
      """
      services:
        r:
          endpoints: [{address: \(server.inbound)}]
          methods:
            r.R/Flaky: {idempotent: true}
      routes:
        - service: r
          match: {methods: [r.R/Sleep]}
          timeout: 300ms
      """)
    let client = try sidecar("client")
    try waitForConfig(client)
    let flaky = try call(client, "Flaky", "once:1")
    #expect(flaky["code"] as? String == "OK", "\(flaky)")
    let spans = try trace(["--method", "r.R/Flaky"], spans: 3)
    let root = try #require(spans.first { $0.parent == nil })
    #expect(root.label == "client sidecar client")
    #expect(root.attributes["trellis.attempts"] as? String == "2", "\(root.attributes)")
    let retry = try #require(root.events.first { $0.name == "retry" }, "\(root.events)")
    #expect(retry.attributes["reason"] as? String == "UNAVAILABLE")
    #expect(retry.attributes["attempt"] as? String == "2")
    let attempts = spans.filter { $0.label == "r sidecar server" }
    #expect(attempts.count == 2)
    #expect(attempts.allSatisfy { $0.parent == root.id })
    #expect(
      attempts.sorted { $0.start < $1.start }.map { $0.attributes["trellis.attempt"] as? String }
        == ["1", "2"])
    #expect(
      attempts.sorted { $0.start < $1.start }.first?.status == 2, "the failed attempt is an error")

    let slow = try call(client, "Sleep", "2000")
    #expect(slow["code"] as? String == "DEADLINE_EXCEEDED", "\(slow)")
    let expired = try trace(["--method", "r.R/Sleep", "--errors"], spans: 2)
    let caller = try #require(expired.first { $0.parent == nil })
    let event = try #require(
      caller.events.first { $0.name == "deadline_exceeded" }, "\(caller.events)")
    #expect(
      (event.attributes["cause"] as? String)?.contains("300 ms") == true, "\(event.attributes)")
    #expect(caller.attributes["rpc.grpc.status_code"] as? String == "4")
    #expect(caller.status == 2)
    let shown = try mesh.meshctl(["trace", "show", caller.trace], plane: plane)
    #expect(shown.contains("deadline_exceeded at +"), "\(shown)")
    #expect(shown.contains("DEADLINE_EXCEEDED"), "\(shown)")
    // The filters: a minimum duration and a time window.
    #expect(try list(["--method", "r.R/Sleep", "--min-duration", "250ms"]).count == 1)
    #expect(try list(["--method", "r.R/Sleep", "--min-duration", "5s"]).isEmpty)
    #expect(try list(["--service", "r", "--since", "10m"]).count == 2)
    #expect(try list(["--service", "nobody"]).isEmpty)
  }

  /// W3C context is passed on with the sidecar's span as the parent; B3, single or multi, is
  /// translated to W3C; a malformed `traceparent` is replaced by a new trace, never forwarded;
  /// an unsampled trace is passed on untouched and records nothing.
  @Test func traceHeadersArePassedOnTranslatedOrReplaced() throws {
    let server = try resilienceServer("h")
    try apply("services:\n  r:\n    endpoints: [{address: \(server.inbound)}]\n")
    let client = try sidecar("client")
    try waitForConfig(client)
    func seen(_ headers: [String: String]) throws -> [String: String] {
      let answer = try call(client, "Headers", "h", headers: headers)
      let text = try #require(answer["server"] as? String, "\(answer)")
      return try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: String] ?? [:]
    }
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    let w3c = try seen([
      "traceparent": "00-\(trace)-00f067aa0ba902b7-01", "tracestate": "vendor=opaque",
    ])
    let forwarded = try #require(w3c["traceparent"])
    #expect(forwarded.hasPrefix("00-\(trace)-") && forwarded.hasSuffix("-01"), "\(w3c)")
    #expect(!forwarded.contains("00f067aa0ba902b7"), "the parent is the server sidecar's span")
    #expect(w3c["tracestate"] == "vendor=opaque")

    let b3Trace = "80f198ee56343ba864fe8b2a57d3eff7"
    let multi = try seen([
      "x-b3-traceid": b3Trace, "x-b3-spanid": "e457b5a2e4d86bd1", "x-b3-sampled": "1",
    ])
    #expect(multi["traceparent"]?.hasPrefix("00-\(b3Trace)-") == true, "\(multi)")
    #expect(multi.keys.allSatisfy { !$0.hasPrefix("x-b3-") }, "\(multi)")
    let single = try seen(["b3": "a3ce929d0e0e47364bf92f3577b34da6-a2fb4a1d1a96d312-1"])
    #expect(
      single["traceparent"]?.hasPrefix("00-a3ce929d0e0e47364bf92f3577b34da6-") == true, "\(single)")
    #expect(single["b3"] == nil)

    for malformed in [
      "ff-\(trace)-00f067aa0ba902b7-01",  // version ff
      "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  // zero trace id
      "00-\(trace)-0000000000000000-01",  // zero parent id
      "00-\(trace)-00f067aa0ba902b7-1",  // wrong length
      "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  // uppercase
    ] {
      let replaced = try seen(["traceparent": malformed])
      let fresh = try #require(replaced["traceparent"], "\(malformed): \(replaced)")
      #expect(
        fresh != malformed && !fresh.contains(trace)
          && !fresh.contains("00000000000000000000000000000000"))
      #expect(fresh.count == 55 && fresh.hasPrefix("00-"), "\(fresh)")
    }
    let replacedTrace = try self.trace(["--method", "r.R/Headers", "--limit", "1"], spans: 2)
    let replacing = try #require(replacedTrace.first { $0.parent == nil })
    #expect(replacing.events.contains { $0.name == "trace_header_replaced" }, "\(replacing.events)")

    // Not sampled upstream: passed on as it came, and nothing recorded.
    let unsampledTrace = "0af7651916cd43dd8448eb211c80319c"
    let unsampled = try seen(["traceparent": "00-\(unsampledTrace)-b7ad6b7169203331-00"])
    #expect(unsampled["traceparent"] == "00-\(unsampledTrace)-b7ad6b7169203331-00")
    Thread.sleep(forTimeInterval: 1.5)
    let shown = try run(
      binary("meshctl"),
      ["trace", "show", unsampledTrace, "--control-plane", plane.address, "--certs", mesh.certs])
    #expect(shown.status == 1 && shown.stderr.contains("NOT_FOUND"), "\(shown.stdout)")
  }

  /// The collector stopped for a minute under load: every call still succeeds, without
  /// waiting on it; the spans that could not be sent are dropped and counted; once it is back,
  /// new traces arrive again. Each sidecar logs every call as one JSON line meanwhile.
  @Test func aCollectorDownUnderLoadCostsNoCalls() throws {
    let server = try resilienceServer("load")
    try apply("services:\n  r:\n    endpoints: [{address: \(server.inbound)}]\n")
    let client = try sidecar("client")
    try waitForConfig(client)
    let before = try call(client, "Get", "before")
    #expect(before["code"] as? String == "OK")
    _ = try trace(["--service", "client"], spans: 2)

    let load = try BackgroundLoad(
      python: [Self.resilience, "load", client.outbound, "Get", "70", "4", "-"])
    Thread.sleep(forTimeInterval: 5)
    #expect(sendSignal(SIGSTOP, to: plane.pid) == 0)
    Thread.sleep(forTimeInterval: 60)
    let droppedWhileDown = try client.metric("trellis_spans_dropped_total", [:])
    #expect(sendSignal(SIGCONT, to: plane.pid) == 0)
    let summary = try load.finish()
    let codes = summary["codes"] as? [String: Int] ?? [:]
    #expect(codes.keys.sorted() == ["OK"], "\(summary)")
    #expect((codes["OK"] ?? 0) > 1000, "\(summary)")
    print(
      "collector stopped 60 s under load: \(codes["OK"] ?? 0) calls OK, p50 \(summary["p50_ms"] ?? "") ms, p99 \(summary["p99_ms"] ?? "") ms, \(Int(droppedWhileDown)) spans dropped"
    )
    #expect(droppedWhileDown > 0, "spans not sent while the collector was stopped are counted")

    // Back: a new call's trace arrives.
    let after = try call(client, "Get", "after")
    #expect(after["code"] as? String == "OK")
    let since = ISO8601DateFormatter().string(from: Date().addingTimeInterval(-2))
    _ = try trace(["--service", "client", "--since", since], spans: 2, timeout: 30)

    // The access log: one JSON line per call, with its trace.
    let lines = try jsonObjects(client.process.log).filter {
      $0["direction"] as? String == "outbound"
    }
    #expect(lines.count >= (codes["OK"] ?? 0), "one access-log line per call")
    let line = try #require(lines.last)
    for key in [
      "time", "trace_id", "span_id", "method", "peer", "grpc_code", "duration_ms", "attempts",
    ] {
      #expect(line[key] != nil, "access log lacks \(key): \(line)")
    }
    #expect(line["peer"] as? String == "spiffe://trellis.local/svc/r")
  }

  /// `/metrics` under load is valid Prometheus text as `promtool check metrics` (Debian's
  /// `prometheus` package) lints it, and has the golden metrics with their labels.
  @Test func metricsPassPromtoolUnderLoad() throws {
    let server = try resilienceServer("metrics")
    try apply(
      """
      services:\n  r:\n    endpoints: [{address: \(server.inbound)}]\n    methods:\n      \
      r.R/Flaky: {idempotent: true}\n
      """
    )
    let client = try sidecar("client")
    try waitForConfig(client)
    _ = try call(client, "Flaky", "m:1")  // a retry, counted
    let load = try BackgroundLoad(
      python: [Self.resilience, "load", client.outbound, "Get", "4", "4", "-"])
    defer { _ = try? load.finish() }
    Thread.sleep(forTimeInterval: 2)
    let promtool = try resolve("promtool")
    for page in [try client.adminPage("/metrics").body, try server.adminPage("/metrics").body] {
      let checked = try run(promtool, ["check", "metrics"], stdin: Data((page + "\n").utf8))
      #expect(checked.status == 0, "promtool: \(checked.stdout) \(checked.stderr)")
      for name in [
        "trellis_requests_total", "trellis_request_duration_seconds_bucket",
        "trellis_certificate_expiry_timestamp_seconds", "trellis_config_version",
        "trellis_tls_handshake_failures_total", "trellis_spans_dropped_total",
      ] {
        #expect(
          page.contains("# TYPE \(name.replacingOccurrences(of: "_bucket", with: ""))"),
          "no \(name)")
      }
    }
    let page = try client.adminPage("/metrics").body
    #expect(
      page.contains(
        #"trellis_requests_total{direction="outbound",service="r",method="/r.R/Get",grpc_code="OK"}"#
      ))
    #expect(page.contains(#"trellis_retries_total{service="r",reason="UNAVAILABLE"} 1"#), "\(page)")
  }

  /// `meshctl top` counts every call a service's sidecar saw in the last minute, with its
  /// success rate and latency; `meshctl tap` streams the calls as they end, only those asked
  /// for, at most `--max-rps` a second.
  @Test func topAndTapShowLiveCalls() throws {
    let server = try resilienceServer("live")
    try apply("services:\n  r:\n    endpoints: [{address: \(server.inbound)}]\n")
    let client = try sidecar("client")
    try waitForConfig(client)
    let load = try BackgroundLoad(
      python: [Self.resilience, "load", client.outbound, "Get", "n300", "2", "-"])
    let summary = try load.finish()
    let calls = (summary["codes"] as? [String: Int])?["OK"] ?? 0
    #expect(calls == 300, "\(summary)")
    for index in 0..<5 {
      let failed = try call(client, "Flaky", "bad-\(index):9")
      #expect(failed["code"] as? String == "UNAVAILABLE")
    }
    Thread.sleep(forTimeInterval: 2.5)  // the last second's report
    func top(_ flags: [String]) throws -> [[String: Any]] {
      let text = try mesh.meshctl(["top", "r", "--once", "-o", "json"] + flags, plane: plane)
      return try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [[String: Any]] ?? []
    }
    let rows = try top([])
    let row = try #require(rows.first, "\(rows)")
    #expect(rows.count == 1 && row["service"] as? String == "r")
    #expect(row["requests"] as? Int == 305, "\(row)")
    let rate = row["successRate"] as? Double ?? 0
    #expect(abs(rate - 300.0 / 305.0) < 1e-9, "\(row)")
    let p50 = row["p50Ms"] as? Double ?? 0
    let p99 = row["p99Ms"] as? Double ?? 0
    #expect(p50 > 0 && p99 >= p50 && p99 < 5_000, "\(row)")
    #expect(row["instances"] as? Int == 1)
    let byMethod = try top(["--methods"])
    #expect(byMethod.compactMap { $0["method"] as? String }.sorted() == ["/r.R/Flaky", "/r.R/Get"])
    #expect(
      byMethod.first { $0["method"] as? String == "/r.R/Flaky" }?["successRate"] as? Double == 0)
    let table = try mesh.meshctl(["top", "--once"], plane: plane)
    #expect(table.contains("SUCCESS") && table.contains("98.36%"), "\(table)")
    print(table)

    // A tap of one method: only its calls, as they end.
    let tap = try BackgroundLoad(
      command: binary("meshctl"),
      [
        "tap", "r", "--method", "r.R/Flaky", "--count", "2", "-o", "json", "--control-plane",
        plane.address, "--certs", mesh.certs,
      ])
    Thread.sleep(forTimeInterval: 1.5)  // the sidecar hears of the tap
    _ = try call(client, "Get", "not-tapped")
    for index in 0..<3 { _ = try call(client, "Flaky", "tapped-\(index):9") }
    let tapped = try jsonObjects(try tap.finishText())
    #expect(tapped.count == 2, "\(tapped)")
    for event in tapped {
      #expect(event["method"] as? String == "/r.R/Flaky")
      #expect(event["status"] as? String == "UNAVAILABLE")
      #expect(event["peer"] as? String == "spiffe://trellis.local/svc/client")
      #expect((event["traceId"] as? String)?.count == 32)
    }

    // Rate-limited: at most --max-rps calls a second from each sidecar, under load.
    let limited = try BackgroundLoad(
      command: binary("meshctl"),
      [
        "tap", "r", "--max-rps", "5", "-o", "json", "--control-plane", plane.address, "--certs",
        mesh.certs,
      ])
    Thread.sleep(forTimeInterval: 1.5)
    let busy = try BackgroundLoad(
      python: [Self.resilience, "load", client.outbound, "Get", "3", "4", "-"])
    let busySummary = try busy.finish()
    limited.process.terminate()
    let seen = try jsonObjects(try limited.finishText()).count
    let made = (busySummary["codes"] as? [String: Int])?["OK"] ?? 0
    print("tap at --max-rps 5 during \(made) calls in 3 s: \(seen) calls shown")
    #expect(made > 200 && seen >= 5 && seen <= 25, "\(seen) of \(made)")
  }

  /// A shop service beside its own registered sidecar, exporting its spans to it (and, with
  /// `callsOut`, calling other services through it).
  func shopService(
    _ service: String, _ executable: String, callsOut: Bool = true
  ) throws
    -> RunningSidecar
  {
    let port = try freeLoopbackPort()
    let sidecar = try self.sidecar(service, app: "127.0.0.1:\(port)", register: true)
    let app = try ServiceProcess(
      binary(executable),
      [
        "--listen", "127.0.0.1:\(port)", "--db",
        mesh.directory.appendingPathComponent("\(service).sqlite").path,
      ] + (callsOut ? ["--sidecar", sidecar.outbound] : []),
      environment: [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://\(sidecar.admin)/v1/traces",
        "OTEL_SERVICE_NAME": service,
      ])
    processes.append(app)
    return sidecar
  }

  /// A user created through the mesh becomes a customer in orders — `user.created` goes from
  /// users' outbox through the events service to orders' consumer — and the trace of the
  /// CreateUser call holds the asynchronous hop: the publication and orders' handling.
  @Test func aUserCreatedBecomesACustomerAndTheEventHopIsTraced() throws {
    try apply()
    _ = try shopService("events", "event-service", callsOut: false)
    _ = try shopService("users", "user-service")
    _ = try shopService("orders", "order-service")
    let client = try sidecar("client")
    try waitForRegistrations(["events", "users", "orders"])
    let created = try rpc([
      "call", "--plaintext", "--authority", "users", client.outbound,
      "shop.v1.UserService/CreateUser", "-d", #"{"email":"ada@example.com","name":"Ada"}"#,
    ])
    #expect(created.status == 0, "\(created.stderr)")
    let user = try #require(
      try jsonObjects(created.stdout).first?["id"] as? String, "\(created.stdout)")

    var customer: [String: Any]?
    let deadline = Date().addingTimeInterval(20)
    while customer == nil, Date() < deadline {
      let found = try rpc([
        "call", "--plaintext", "--authority", "orders", client.outbound,
        "shop.v1.OrderService/GetCustomer", "-d", #"{"userId":"\#(user)"}"#,
      ])
      if found.status == 0 {
        customer = try jsonObjects(found.stdout).first
      } else {
        Thread.sleep(forTimeInterval: 0.2)
      }
    }
    #expect(customer?["name"] as? String == "Ada", "orders never learnt of \(user)")
    #expect(customer?["email"] as? String == "ada@example.com")

    let spans = try trace(["--method", "shop.v1.UserService/CreateUser"], spans: 7, timeout: 30)
    let labels = Set(spans.map(\.label))
    for expected in [
      "client sidecar client", "users sidecar server", "users app server", "users sidecar client",
      "events sidecar server", "events app server", "orders app consumer",
    ] {
      #expect(labels.contains(expected), "no \(expected) span in \(labels.sorted())")
    }
    let create = try #require(spans.first { $0.label == "users app server" })
    let consume = try #require(spans.first { $0.label == "orders app consumer" })
    #expect(consume.name == "user.created process" && consume.parent == create.id)
    #expect(consume.attributes["messaging.message.id"] as? String == "user.created/\(user)")
    let publish = try #require(spans.first { $0.label == "users sidecar client" })
    #expect(publish.parent == create.id && publish.attributes["rpc.method"] as? String == "Publish")
  }

  // MARK: Waiting

  func waitForRegistrations(_ services: [String]) throws {
    let deadline = Date().addingTimeInterval(30)
    var text = ""
    while Date() < deadline {
      text = try mesh.meshctl(["get", "endpoints", "-o", "json"], plane: plane)
      if services.allSatisfy({
        text.contains("\"service\":\"\($0)\"") || text.contains("\"service\" : \"\($0)\"")
      }) {
        Thread.sleep(forTimeInterval: 1)  // pushed to every sidecar
        return
      }
      Thread.sleep(forTimeInterval: 0.2)
    }
    throw HarnessError("\(services) never registered: \(text)")
  }

  /// Until `sidecar` runs the config applied last.
  func waitForConfig(_ sidecar: RunningSidecar) throws {
    let deadline = Date().addingTimeInterval(20)
    while Date() < deadline {
      if try sidecar.metric("trellis_config_version", [:]) >= 1 { return }
      Thread.sleep(forTimeInterval: 0.1)
    }
    throw HarnessError("the sidecar never applied the config")
  }
}

/// A span read back from `meshctl trace dump` (OTLP JSON).
struct DumpedSpan {
  var trace: String
  var id: String
  var parent: String?
  var service: String
  var component: String
  var name: String
  var kind: Int
  var start: UInt64
  var end: UInt64
  var status: Int
  /// Values as strings (OTLP JSON writes integers as strings).
  var attributes: [String: Any]
  var events: [(name: String, attributes: [String: Any])]

  /// `a sidecar server`, `b app internal`.
  var label: String {
    "\(service) \(component) \([1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"][kind] ?? "?")"
  }

  static func parse(_ text: String) throws -> [DumpedSpan] {
    var out: [DumpedSpan] = []
    for request in try jsonObjects(text) {
      for resourceSpans in request["resourceSpans"] as? [[String: Any]] ?? [] {
        let resource = attributes((resourceSpans["resource"] as? [String: Any])?["attributes"])
        for scope in resourceSpans["scopeSpans"] as? [[String: Any]] ?? [] {
          for span in scope["spans"] as? [[String: Any]] ?? [] {
            out.append(
              DumpedSpan(
                trace: span["traceId"] as? String ?? "", id: span["spanId"] as? String ?? "",
                parent: span["parentSpanId"] as? String,
                service: resource["service.name"] as? String ?? "",
                component: resource["trellis.component"] as? String ?? "",
                name: span["name"] as? String ?? "", kind: span["kind"] as? Int ?? 0,
                start: UInt64(span["startTimeUnixNano"] as? String ?? "") ?? 0,
                end: UInt64(span["endTimeUnixNano"] as? String ?? "") ?? 0,
                status: (span["status"] as? [String: Any])?["code"] as? Int ?? 0,
                attributes: attributes(span["attributes"]),
                events: (span["events"] as? [[String: Any]] ?? []).map {
                  ($0["name"] as? String ?? "", attributes($0["attributes"]))
                }))
          }
        }
      }
    }
    return out
  }

  private static func attributes(_ value: Any?) -> [String: Any] {
    var out: [String: Any] = [:]
    for pair in value as? [[String: Any]] ?? [] {
      guard let key = pair["key"] as? String, let value = pair["value"] as? [String: Any],
        let first = value.first
      else { continue }
      out[key] = first.value is String ? first.value : "\(first.value)"
    }
    return out
  }
}

/// Stops and continues a process (Foundation's `Process` can only end one).
func sendSignal(_ signal: Int32, to pid: Int32) -> Int32 { kill(pid, signal) }
