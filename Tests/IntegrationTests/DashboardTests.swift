import Foundation
import TestSupport
import Testing

/// `meshctl dashboard`, as `meshctl up` starts it, against a running shop: its JSON holds the figures `meshctl top` and
/// `meshctl trace` give for the same window, its graph has the shop's services and calls,
/// and it serves on loopback only.
@Suite(.serialized) struct DashboardTests {
  /// The dashboard `meshctl up` started, at `--dashboard-port` (`LocalShop`: base + 185).
  struct RunningDashboard {
    let base: String

    init(_ shop: LocalShop) throws {
      base = "http://127.0.0.1:\(shop.basePort + 185)"
      #expect(shop.upOutput.contains("The dashboard is \(base)/"), "\(shop.upOutput)")
      #expect(shop.processes.contains { $0["name"] as? String == "dashboard" })
    }

    func get(_ path: String) throws -> (status: Int, json: Any?) {
      let exchange = try http("GET", base + path)
      return (exchange.status, try? JSONSerialization.jsonObject(with: Data(exchange.body.utf8)))
    }
  }

  @Test func theDashboardShowsTheShop() throws {
    let shop = try LocalShop(name: "dashboard")
    let dashboard = try RunningDashboard(shop)
    let page = try http("GET", dashboard.base + "/")
    #expect(page.body.contains(#"<script type="module" src="/app.js">"#), "\(page.body)")
    let script = try http("GET", dashboard.base + "/app.js")
    #expect(script.headers["content-type"]?.hasPrefix("text/javascript") == true)
    #expect(script.body.contains("new EventSource(\"/api/live\")"))

    let (created, user, _) = try shop.createUser()
    #expect(created.status == 200)
    let order = try shop.post("/v1/orders", ShopMeshTests.order(user, minor: 450))
    let traceID = try #require(order.headers["x-trace-id"], "\(order)")

    // The graph: every service, and the calls between them, once the sidecars report.
    var edges: Set<String> = []
    var nodes: Set<String> = []
    let deadline = Date().addingTimeInterval(30)
    let wanted: Set = ["gateway→users", "gateway→orders", "orders→payments", "users→events"]
    while !wanted.isSubset(of: edges), Date() < deadline {
      Thread.sleep(forTimeInterval: 0.5)
      let graph = try dashboard.get("/api/graph").json as? [String: Any] ?? [:]
      nodes = Set((graph["nodes"] as? [[String: Any]] ?? []).compactMap { $0["name"] as? String })
      edges = Set(
        (graph["edges"] as? [[String: Any]] ?? []).map {
          "\($0["from"] as? String ?? "")→\($0["to"] as? String ?? "")"
        })
    }
    #expect(nodes == ["events", "gateway", "orders", "payments", "users"], "\(nodes)")
    #expect(wanted.isSubset(of: edges), "\(edges)")

    // The same figures as meshctl top, for the same window (no calls meanwhile but the
    // sidecars' own, which top counts too: compared a moment apart, twice at most).
    Thread.sleep(forTimeInterval: 2)
    var matched = false
    for _ in 0..<3 where !matched {
      let top = try shop.meshctl(["top", "-o", "json"])
      let fromTop =
        try JSONSerialization.jsonObject(with: Data(top.stdout.utf8)) as? [[String: Any]] ?? []
      let fromDashboard = try dashboard.get("/api/top").json as? [[String: Any]] ?? []
      func requests(_ rows: [[String: Any]]) -> [String: Int] {
        Dictionary(
          uniqueKeysWithValues: rows.map {
            ($0["service"] as? String ?? "", $0["requests"] as? Int ?? -1)
          })
      }
      matched = requests(fromTop) == requests(fromDashboard) && !fromTop.isEmpty
    }
    #expect(matched, "the dashboard's /api/top and meshctl top -o json differ")

    // The order's trace: the same spans as meshctl trace show.
    let trace = try dashboard.get("/api/traces/\(traceID)").json as? [String: Any] ?? [:]
    let spans = trace["spans"] as? [[String: Any]] ?? []
    let shown = try shop.meshctl(["trace", "dump", traceID])
    let spanCount = shown.stdout.components(separatedBy: "\"spanId\"").count - 1
    #expect(spans.count == spanCount && spans.count >= 7, "\(spans.count) against \(spanCount)")
    #expect(
      spans.contains { $0["service"] as? String == "payments" && $0["kind"] as? String == "server" }
    )
    let listed =
      try dashboard.get("/api/traces?service=payments&limit=50").json as? [[String: Any]] ?? []
    #expect(listed.contains { $0["traceId"] as? String == traceID }, "\(listed)")

    // The order's log lines, from every process that logged its trace id (the sidecars' access
    // logs, the apps' call logs), in time order; `meshctl logs --trace` prints the same.
    let wantedProcesses: Set = [
      "gateway-sidecar", "orders-sidecar", "orders", "payments-sidecar", "payments",
    ]
    var logged: [[String: Any]] = []
    let written = Date().addingTimeInterval(10)
    repeat {
      logged = try dashboard.get("/api/logs?trace=\(traceID)").json as? [[String: Any]] ?? []
      if wantedProcesses.isSubset(of: Set(logged.compactMap { $0["process"] as? String })) { break }
      Thread.sleep(forTimeInterval: 0.3)
    } while Date() < written
    let processes = Set(logged.compactMap { $0["process"] as? String })
    #expect(wantedProcesses.isSubset(of: processes), "\(logged)")
    let times = logged.compactMap { $0["unixNano"] as? Int }
    #expect(times == times.sorted() && times.count == logged.count)
    let terminal = try shop.meshctl(["logs", "--trace", traceID])
    #expect(terminal.status == 0, "\(terminal.stderr)")
    for process in wantedProcesses {
      #expect(
        terminal.stdout.contains("\n\(process) ") || terminal.stdout.hasPrefix("\(process) "),
        "\(process): \(terminal.stdout)")
    }
    let failures = try dashboard.get("/api/logs?service=orders&level=error&limit=10")
    #expect(failures.status == 200)
    #expect(try dashboard.get("/api/logs?trace=nope").status == 400)

    // Bad input is named; a service the mesh does not know is 404.
    let bad = try dashboard.get("/api/traces?minMs=soon")
    #expect(bad.status == 400 && "\(bad.json ?? "")".contains("minMs"), "\(bad)")
    #expect(try dashboard.get("/api/services/nope").status == 404)
    // payments' page: its instance (the control plane's view of its sidecar) and its
    // endpoint as orders' sidecar reports it (every 5 s).
    var payments: [String: Any] = [:]
    let reported = Date().addingTimeInterval(20)
    repeat {
      payments = try dashboard.get("/api/services/payments").json as? [String: Any] ?? [:]
      // Each sidecar reports on its own 5 s beat: orders' may come after the others'.
      let callers = (payments["endpoints"] as? [[String: Any]] ?? []).map {
        $0["caller"] as? String
      }
      if callers.contains("orders") { break }
      Thread.sleep(forTimeInterval: 0.5)
    } while Date() < reported
    let endpoints = payments["endpoints"] as? [[String: Any]] ?? []
    #expect(
      endpoints.contains {
        $0["caller"] as? String == "orders" && $0["state"] as? String == "active"
      }, "\(payments)")
    let instances = payments["instances"] as? [[String: Any]] ?? []
    #expect(
      instances.count == 1 && (instances.first?["certificateNotAfter"] as? Int ?? 0) > 0,
      "\(payments)")
    let orders = try dashboard.get("/api/services/orders").json as? [String: Any] ?? [:]
    let callees = (orders["callees"] as? [[String: Any]] ?? []).compactMap { $0["to"] as? String }
    #expect(Set(callees).isSuperset(of: ["payments"]), "\(orders)")

    // Config: a second version, its diff against the first, every sidecar on it; trust.
    let yaml = try String(
      contentsOf: shop.directory.appendingPathComponent(".trellis/mesh.yaml"), encoding: .utf8)
    let second = shop.directory.appendingPathComponent("second.yaml")
    try
      (yaml + """

        routes:
          - service: orders
            name: reads
            match: {methods: [shop.v1.OrderService/GetOrder]}
            timeout: 5s

        """).write(to: second, atomically: true, encoding: .utf8)
    let applied = try shop.meshctl(["apply", "-f", second.path])
    #expect(applied.status == 0, "\(applied.stdout)\(applied.stderr)")
    var config: [String: Any] = [:]
    let synced = Date().addingTimeInterval(20)
    repeat {
      config = try dashboard.get("/api/config").json as? [String: Any] ?? [:]
      let sidecars = config["sidecars"] as? [[String: Any]] ?? []
      if sidecars.count == 5, sidecars.allSatisfy({ $0["version"] as? Int == 2 }) { break }
      Thread.sleep(forTimeInterval: 0.3)
    } while Date() < synced
    #expect(config["currentVersion"] as? Int == 2, "\(config)")
    #expect((config["versions"] as? [[String: Any]])?.map { $0["version"] as? Int } == [2, 1])
    #expect(
      (config["sidecars"] as? [[String: Any]] ?? []).allSatisfy { $0["version"] as? Int == 2 },
      "\(config)")
    let sources = (config["endpoints"] as? [[String: Any]] ?? []).compactMap {
      $0["source"] as? String
    }
    #expect(
      sources.count == 5 && sources.allSatisfy { $0.hasPrefix("registered by ") }, "\(config)")
    let diff = try dashboard.get("/api/config/diff?from=1&to=2").json as? [String: Any] ?? [:]
    #expect((diff["diff"] as? String ?? "").contains("+routes:"), "\(diff)")
    #expect(try dashboard.get("/api/config/diff?from=one&to=2").status == 400)
    #expect(try dashboard.get("/api/config/diff?from=1&to=9").status == 404)
    // orders' page: the new route among its policies, and who may call it.
    let ordersPage = try dashboard.get("/api/services/orders").json as? [String: Any] ?? [:]
    let policies = ordersPage["policies"] as? [String: Any] ?? [:]
    let routes = policies["routes"] as? [String] ?? []
    #expect(
      routes.contains { $0.hasPrefix("'reads'") && $0.contains("timeout 5.0 s") }, "\(policies)")
    let callers = policies["callers"] as? [String] ?? []
    #expect(callers.contains { $0.contains("/svc/gateway") }, "\(policies)")
    #expect((policies["circuitBreaker"] as? String)?.contains("1024 concurrent") == true)
    let trust = try dashboard.get("/api/trust").json as? [String: Any] ?? [:]
    #expect((trust["roots"] as? [String])?.isEmpty == false, "\(trust)")
    #expect(trust["connected"] as? Int == 5 && trust["current"] as? Int == 5, "\(trust)")
    #expect((trust["rotations"] as? [Any])?.isEmpty == true, "\(trust)")

    // A rotation step while it runs: payments' sidecar is stopped, so `meshctl certs rotate`
    // waits on it and the trust page shows it waiting; let go, it renews and the step ends.
    let stopped = try #require(shop.pid(of: "payments-sidecar"))
    let rotation = Process()
    rotation.executableURL = URL(fileURLWithPath: binary("meshctl"))
    rotation.arguments = ["certs", "rotate", "--service", "payments", "--timeout", "60s"]
    rotation.currentDirectoryURL = shop.directory
    rotation.standardOutput = FileHandle.nullDevice
    rotation.standardError = FileHandle.nullDevice
    kill(stopped, SIGSTOP)
    try rotation.run()
    var rotations: [[String: Any]] = []
    let waited = Date().addingTimeInterval(10)
    repeat {
      Thread.sleep(forTimeInterval: 0.2)
      let trust = try dashboard.get("/api/trust").json as? [String: Any] ?? [:]
      rotations = trust["rotations"] as? [[String: Any]] ?? []
    } while rotations.isEmpty && Date() < waited
    kill(stopped, SIGCONT)
    rotation.waitUntilExit()
    #expect(rotation.terminationStatus == 0)
    let running = try #require(rotations.first, "no rotation shown")
    #expect((running["step"] as? String)?.hasPrefix("renew service: spiffe://") == true)
    #expect(running["done"] as? Int == 0 && running["total"] as? Int == 1, "\(running)")
    #expect(
      (running["waitingFor"] as? [String])?.first?.contains("payments") == true, "\(running)")
    let after = try dashboard.get("/api/trust").json as? [String: Any] ?? [:]
    #expect((after["rotations"] as? [Any])?.isEmpty == true, "\(after)")

    // payments' history: the steps its calls ended in, the order's among them.
    let history =
      (try dashboard.get("/api/services/payments").json as? [String: Any])?["history"]
      as? [[String: Any]] ?? []
    #expect(
      !history.isEmpty && history.allSatisfy { ($0["requests"] as? Int ?? 0) > 0 }, "\(history)")

    // In headless Chromium at 1280×800, under load: the graph with every service and no
    // overlap, the orders→payments edge's traces, an order's trace with every span, the
    // orders page; no console error. Screenshots stay in the shop's folder.
    let load = try shop.load(workers: 1)
    defer { _ = try? load.finish() }
    let screenshots = shop.directory.appendingPathComponent("screenshots")
    _ = try TraceViewPage.chromium()
    let browser = try run(
      "python3",
      [
        PythonInteropTests.python.appendingPathComponent("dashboard_browser.py").path,
        dashboard.base,
        screenshots.path,
      ],
      environment: [
        "DASHBOARD_SERVICES": "events,gateway,orders,payments,users",
        "DASHBOARD_EDGES": "gateway-orders,gateway-users,orders-payments,users-events",
      ])
    // A tap, streamed: the calls arriving at orders (at most 20 a second from each sidecar).
    let tapped = try run("curl", ["-sN", "-m", "4", dashboard.base + "/api/tap?service=orders"])
    let calls = tapped.stdout.components(separatedBy: "event: call").count - 1
    #expect(calls > 0 && tapped.stdout.contains("\"service\":\"orders\""), "\(tapped.stdout)")
    let seen =
      (try? JSONSerialization.jsonObject(with: Data(browser.stdout.utf8))) as? [String: Any] ?? [:]
    #expect(browser.status == 0, "\(browser.stdout)\(browser.stderr)")
    #expect(
      (seen["failures"] as? [String])?.isEmpty == true, "\(seen); screenshots: \(screenshots.path)")
    #expect(seen["nodes"] as? [String] == ["events", "gateway", "orders", "payments", "users"])
    #expect((seen["edge_traces"] as? Int ?? 0) > 0, "\(seen)")
    #expect((seen["trace_spans"] as? Int ?? 0) >= 7, "\(seen)")
    #expect(
      (seen["orders_methods"] as? [String])?.contains("/shop.v1.OrderService/CreateOrder") == true)
    #expect((seen["console"] as? [Any])?.isEmpty == true, "\(seen)")
    #expect((seen["config_diff"] as? String ?? "").contains("+routes:"), "\(seen)")
    #expect((seen["tap_calls"] as? Int ?? 0) > 0, "\(seen)")
    #expect((seen["latency_lines"] as? Int ?? 0) > 0, "\(seen)")
    #expect((seen["trace_log_lines"] as? Int ?? 0) >= 5, "\(seen)")
  }

  /// Loopback only, unless told otherwise; then HTTPS, and only for an operator's client
  /// certificate of the mesh: none, or a workload's, is refused.
  @Test func itServesOnLoopbackOnlyUnlessToldAndThenOnlyToOperators() throws {
    let result = try run(binary("meshctl"), ["dashboard", "--listen", "0.0.0.0:0"])
    #expect(result.status != 0)
    #expect(result.stderr.contains("loopback only"), "\(result.stderr)")

    let mesh = try MeshFixture("dashboard-remote", services: ["users"])
    let plane = try mesh.controlPlane()
    defer { plane.stop() }
    let port = 20000 + 200 * Int.random(in: 0..<60) + 187
    let process = Process()
    process.executableURL = URL(fileURLWithPath: binary("meshctl"))
    process.arguments = [
      "dashboard", "--listen", "0.0.0.0:\(port)", "--allow-remote", "--control-plane",
      plane.address, "--certs", mesh.certs,
    ]
    let log = mesh.directory.appendingPathComponent("dashboard.log")
    _ = FileManager.default.createFile(atPath: log.path, contents: nil)
    process.standardOutput = try FileHandle(forWritingTo: log)
    process.standardError = process.standardOutput
    try process.run()
    defer {
      process.terminate()
      process.waitUntilExit()
    }
    func curl(_ extra: [String]) throws -> ProcessResult {
      try run(
        "curl",
        ["-sk", "-o", "/dev/null", "-w", "%{http_code}", "-m", "5"] + extra
          + ["https://127.0.0.1:\(port)/api/trust"])
    }
    let operatorCert = [
      "--cert", "\(mesh.certs)/operator.pem", "--key", "\(mesh.certs)/operator-key.pem",
    ]
    var answer = try curl(operatorCert)
    let deadline = Date().addingTimeInterval(30)
    while answer.stdout != "200", Date() < deadline, process.isRunning {
      Thread.sleep(forTimeInterval: 0.3)
      answer = try curl(operatorCert)
    }
    #expect(answer.stdout == "200", "\((try? String(contentsOf: log, encoding: .utf8)) ?? "")")
    // Without a client certificate, or with a workload's, the handshake fails: no answer.
    #expect(try curl([]).stdout == "000")
    let workload = ["--cert", "\(mesh.certs)/users.pem", "--key", "\(mesh.certs)/users-key.pem"]
    #expect(try curl(workload).stdout == "000")
    // Plain HTTP is not served there.
    let plain = try run(
      "curl",
      ["-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "5", "http://127.0.0.1:\(port)/"])
    #expect(plain.stdout != "200")
    // A page left open (the live graph's stream) does not hold the dashboard up when it stops.
    let reader = Process()
    reader.executableURL = URL(fileURLWithPath: try resolve("curl"))
    reader.arguments =
      ["-skN", "-m", "60"] + operatorCert + ["https://127.0.0.1:\(port)/api/live"]
    reader.standardOutput = FileHandle.nullDevice
    try reader.run()
    defer { reader.terminate() }
    Thread.sleep(forTimeInterval: 1.5)
    let stopping = Date()
    process.terminate()
    while process.isRunning, Date().timeIntervalSince(stopping) < 15 {
      Thread.sleep(forTimeInterval: 0.1)
    }
    #expect(!process.isRunning, "the dashboard did not stop with a live page open")
    #expect(Date().timeIntervalSince(stopping) < 10)

  }
}
