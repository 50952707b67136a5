import Foundation
import TestSupport
import Testing

/// Whether a process runs: it exists and is not a zombie (a mesh's processes outlive the
/// `meshctl up` that started them, and nobody may reap them at once).
func isAlive(_ pid: Int) -> Bool {
  guard kill(pid_t(pid), 0) == 0,
    let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
    let close = stat.lastIndex(of: ")")
  else { return false }
  return stat[stat.index(close, offsetBy: 2)] != "Z"
}

/// A shop started by `meshctl up --detach` (the binaries already built: `--no-build`) in a
/// folder of its own, on ports of its own.
final class LocalShop: @unchecked Sendable {
  let directory: URL
  let basePort: Int
  var gatewayPort: Int { basePort + 199 }
  /// One replica: base+195 and +196; three: base+150 to +155, their etcd base+170 to +175.
  var controlPlanePort: Int { basePort + (replicated ? 150 : 195) }
  let replicated: Bool
  /// `up --postgres`: the shop's data in a local PostgreSQL cluster on base+190.
  let onPostgres: Bool
  var gateway: String { "http://127.0.0.1:\(gatewayPort)" }
  let upOutput: String

  init(_ extra: [String] = [], name: String = "shop") throws {
    directory = try makeTemporaryDirectory(name)
    replicated = extra.contains("--control-planes")
    onPostgres = extra.contains("--postgres")
    var attempt = 0
    while true {
      // A 200-port block below Linux's ephemeral range; another one if it is taken.
      let base = 20000 + 200 * Int.random(in: 0..<60)
      let result = try run(
        binary("meshctl"),
        [
          "up", "--detach", "--no-build", "--base-port", "\(base)", "--gateway-port",
          "\(base + 199)", "--control-plane-port", "\(base + (replicated ? 150 : 195))",
          "--dashboard-port", "\(base + 185)",
        ] + extra + (onPostgres ? ["--postgres-port", "\(base + 190)"] : []),
        directory: directory)
      if result.status == 0 {
        basePort = base
        upOutput = result.stdout
        return
      }
      attempt += 1
      guard
        result.stdout.contains("ports already in use")
          || result.stderr.contains("ports already in use"), attempt < 5
      else {
        throw HarnessError(
          "meshctl up failed (\(result.status)): \(result.stdout)\n\(result.stderr)")
      }
    }
  }

  @discardableResult
  func meshctl(_ arguments: [String]) throws -> ProcessResult {
    try run(binary("meshctl"), arguments, directory: directory)
  }

  var runFile: [String: Any] {
    let data =
      FileManager.default.contents(
        atPath: directory.appendingPathComponent(".trellis/run.json").path) ?? Data()
    return (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] ?? [:]
  }

  var processes: [[String: Any]] { runFile["processes"] as? [[String: Any]] ?? [] }

  func pid(of name: String) -> Int32? {
    (processes.first { $0["name"] as? String == name }?["pid"] as? Int).map(Int32.init)
  }

  var apiKey: String {
    let text =
      (try? String(
        contentsOf: directory.appendingPathComponent(".trellis/api-keys"), encoding: .utf8)) ?? ""
    return text.split(separator: "\n").first { !$0.hasPrefix("#") }.map(String.init) ?? ""
  }

  var auth: [String: String] { ["x-api-key": apiKey] }

  func post(_ path: String, _ json: String) throws -> HTTPExchange {
    try http("POST", gateway + path, headers: auth, body: Data(json.utf8))
  }

  func get(_ path: String) throws -> HTTPExchange {
    try http("GET", gateway + path, headers: auth)
  }

  /// Creates Ada over HTTP, then waits (30 s at most) for her customer record in orders
  /// (user.created, through the outbox and the bus).
  func createUser() throws -> (created: HTTPExchange, id: String, customer: HTTPExchange) {
    let created = try post("/v1/users", #"{"email":"ada@example.com","name":"Ada"}"#)
    let user = try #require(created.json["id"] as? String, "\(created)")
    var customer = try get("/v1/customers/\(user)")
    let end = Date().addingTimeInterval(30)
    while customer.status != 200, Date() < end {
      Thread.sleep(forTimeInterval: 0.2)
      customer = try get("/v1/customers/\(user)")
    }
    return (created, user, customer)
  }

  /// The drills' invariants, read from the SQLite files (or the PostgreSQL databases).
  func invariants() throws -> [String: Any] {
    let result = try run(
      "python3",
      [integrationInputs.appendingPathComponent("python/shop_invariants.py").path]
        + (onPostgres
          ? ["--postgres", directory.appendingPathComponent(".trellis/run.json").path]
          : [directory.appendingPathComponent(".trellis/data").path]))
    guard result.status == 0 else { throw HarnessError("shop_invariants.py: \(result.stderr)") }
    return (try JSONSerialization.jsonObject(with: result.stdoutData)) as? [String: Any] ?? [:]
  }

  /// Waits (up to `seconds`) until the invariants hold: the drills' sagas and events take a
  /// lease or a redelivery to finish.
  func settledInvariants(seconds: Double = 90) throws -> [String: Any] {
    let end = Date().addingTimeInterval(seconds)
    var last: [String: Any] = [:]
    while Date() < end {
      last = try invariants()
      if (last["violations"] as? [String])?.isEmpty == true, last["unfinished_sagas"] as? Int == 0 {
        return last
      }
      Thread.sleep(forTimeInterval: 1)
    }
    return last
  }

  /// HTTP load through the gateway (`gateway_load.py`) until `finish`.
  func load(workers: Int = 2, minorUnits: Int = 450) throws -> GatewayLoad {
    try GatewayLoad(shop: self, workers: workers, minorUnits: minorUnits)
  }

  func down() {
    _ = try? meshctl(["down"])
    // As root, `up --postgres` keeps its cluster outside the shop's folder.
    if let folder = try? String(
      contentsOf: directory.appendingPathComponent(".trellis/postgres-folder"), encoding: .utf8)
    {
      try? FileManager.default.removeItem(
        atPath: folder.trimmingCharacters(in: .whitespacesAndNewlines))
    }
  }

  deinit { down() }
}

struct GatewayLoad {
  let process: Process
  let stopFile: URL
  let output: URL

  init(shop: LocalShop, workers: Int, minorUnits: Int) throws {
    stopFile = shop.directory.appendingPathComponent("stop-load-\(UUID().uuidString.prefix(6))")
    output = shop.directory.appendingPathComponent("load-\(UUID().uuidString.prefix(6)).json")
    process = Process()
    process.executableURL = URL(fileURLWithPath: try resolve("python3"))
    process.arguments = [
      integrationInputs.appendingPathComponent("python/gateway_load.py").path, shop.gateway,
      shop.apiKey, stopFile.path, "\(workers)", "\(minorUnits)",
    ]
    FileManager.default.createFile(atPath: output.path, contents: nil)
    process.standardOutput = try FileHandle(forWritingTo: output)
    try process.run()
  }

  func finish() throws -> [String: Any] {
    FileManager.default.createFile(atPath: stopFile.path, contents: nil)
    process.waitUntilExit()
    let data = FileManager.default.contents(atPath: output.path) ?? Data()
    return (try JSONSerialization.jsonObject(with: data)) as? [String: Any] ?? [:]
  }
}

/// The whole shop on the mesh, started by `meshctl up` — real processes, real sockets, real
/// SQLite files: the README's walkthrough, rolling restarts, and crash drills.
@Suite(.serialized) struct ShopMeshTests {
  static func order(_ user: String, minor: Int) -> String {
    #"{"userId":"\#(user)","lineItems":[{"sku":"TEA","quantity":2,"unitPrice":{"currencyCode":"EUR","minorUnits":\#(minor)}}]}"#
  }

  /// What the README's walkthrough does, step by step.
  @Test func theWalkthrough() throws {
    let shop = try LocalShop(name: "walkthrough")
    #expect(shop.upOutput.contains("The shop is running on the mesh"))
    #expect(shop.upOutput.contains("http://127.0.0.1:\(shop.gatewayPort)"))
    #expect(shop.processes.count == 12, "\(shop.processes)")

    // A user, over HTTP; its customer record appears in orders (user.created, through the
    // outbox and the bus).
    let (created, user, customer) = try shop.createUser()
    #expect(created.status == 200, "\(created)")
    #expect(customer.status == 200, "\(customer)")
    #expect(customer.json["email"] as? String == "ada@example.com")

    // An order, confirmed by the saga.
    let confirmed = try shop.post("/v1/orders", Self.order(user, minor: 450))
    #expect(confirmed.json["status"] as? String == "ORDER_STATUS_CONFIRMED", "\(confirmed)")
    let order = try #require(confirmed.json["id"] as? String)
    #expect(
      try shop.get("/v1/orders/\(order)").json["paymentId"] as? String == confirmed.json[
        "paymentId"] as? String)
    // One over payments' limit (1,000,000 minor units): cancelled, with the reason.
    let declined = try shop.post("/v1/orders", Self.order(user, minor: 600_000))
    #expect(declined.json["status"] as? String == "ORDER_STATUS_CANCELLED", "\(declined)")
    #expect(
      (declined.json["cancelReason"] as? String)?.hasPrefix("payment declined: charge declined")
        == true)

    // The trace of the order: gateway → orders → payments, app and sidecar spans.
    let traceID = try #require(confirmed.headers["x-trace-id"])
    let expectedSpans = [
      "POST /v1/orders", "gateway sidecar", "shop.v1.OrderService/CreateOrder", "orders sidecar",
      "saga charge", "shop.v1.PaymentService/Charge", "payments sidecar",
    ]
    // Spans arrive in batches (each app's, then each sidecar's): wait for all of them.
    var shown = try shop.meshctl(["trace", "show", traceID])
    let traceEnd = Date().addingTimeInterval(60)
    while !expectedSpans.allSatisfy(shown.stdout.contains), Date() < traceEnd {
      Thread.sleep(forTimeInterval: 0.5)
      shown = try shop.meshctl(["trace", "show", traceID])
    }
    for expected in expectedSpans {
      #expect(shown.stdout.contains(expected), "\(expected) missing from:\n\(shown.stdout)")
    }
    // The user's trace carries the event hop: published by users, processed by orders.
    let userTrace = try #require(created.headers["x-trace-id"])
    var hop = try shop.meshctl(["trace", "show", userTrace])
    while !hop.stdout.contains("user.created process"), Date() < traceEnd {
      Thread.sleep(forTimeInterval: 0.5)
      hop = try shop.meshctl(["trace", "show", userTrace])
    }
    #expect(hop.stdout.contains("user.created process"), "\(hop.stdout)")

    // Operating it.
    let status = try shop.meshctl(["status"])
    #expect(status.status == 0, "\(status.stderr)")
    #expect(status.stdout.contains("processes started by meshctl up"))
    #expect(status.stdout.components(separatedBy: "running").count - 1 >= 12, "\(status.stdout)")
    let statusJSON = try shop.meshctl(["status", "-o", "json"])
    let document = try #require(
      try JSONSerialization.jsonObject(with: Data(statusJSON.stdout.utf8)) as? [String: Any],
      "\(statusJSON.stdout)\(statusJSON.stderr)")
    let listed = document["processes"] as? [[String: Any]] ?? []
    #expect(listed.count == 12, "\(document)")
    #expect(listed.allSatisfy { $0["state"] as? String == "running" }, "\(listed)")
    #expect(
      Set(listed.compactMap { $0["pid"] as? Int })
        == Set(shop.processes.compactMap { $0["pid"] as? Int }))
    #expect((document["sidecars"] as? [[String: Any]])?.count == 5, "\(document)")
    let check = try shop.meshctl(["check"])
    #expect(check.status == 0, "\(check.stdout)")
    #expect(check.stdout.contains("√ the gateway answers"))
    let logs = try shop.meshctl(["logs", "orders", "-n", "5"])
    #expect(logs.stdout.contains(#""logger":"order-service""#), "\(logs.stdout)")
    #expect(
      try shop.meshctl(["logs", "shipping"]).stderr.contains("no process or service shipping"))
    let unknown = try shop.meshctl(["restart", "shipping"])
    #expect(unknown.status == 1)
    #expect(
      unknown.stderr.contains(
        """
        no service shipping; restart one of events, payments, users, orders, gateway, \
        control-plane, dashboard, postgres
        """
      ),
      "\(unknown.stderr)")
    let again = try shop.meshctl(["up", "--detach", "--no-build"])
    #expect(again.status != 0)
    #expect((again.stdout + again.stderr).contains("the shop is already running"))

    // Down stops every process, and returns only once each has exited: one that ignores
    // SIGTERM (stopped, here) is killed after --timeout and named. The data stays.
    let pids = shop.processes.compactMap { $0["pid"] as? Int }
    let payments = try #require(shop.pid(of: "payments"))
    kill(pid_t(payments), SIGSTOP)
    let down = try shop.meshctl(["down", "--timeout", "2"])
    #expect(down.status == 0, "\(down.stdout)\(down.stderr)")
    #expect(
      down.stdout.contains("payments (pid \(payments)) did not exit within 2 s of SIGTERM: killed"),
      "\(down.stdout)")
    #expect(down.stdout.contains("stopped 12 processes"), "\(down.stdout)")
    #expect(pids.allSatisfy { !isAlive($0) }, "\(pids.filter { isAlive($0) }) still run")
    #expect(
      FileManager.default.fileExists(
        atPath: shop.directory.appendingPathComponent(".trellis/data/orders/orders.sqlite").path))

    // A second up reuses the CA, the config, the sidecars' identities and the data.
    let second = try shop.meshctl([
      "up", "--detach", "--no-build", "--base-port", "\(shop.basePort)", "--gateway-port",
      "\(shop.gatewayPort)", "--control-plane-port", "\(shop.controlPlanePort)",
      "--dashboard-port", "\(shop.basePort + 185)",
    ])
    #expect(second.status == 0, "\(second.stdout)\(second.stderr)")
    #expect(second.stdout.contains(".trellis/mesh.yaml is the running config (version 1)"))
    #expect(!second.stdout.contains("creating the mesh's CA"))
    #expect(
      try shop.get("/v1/orders/\(order)").json["status"] as? String == "ORDER_STATUS_CONFIRMED")
    #expect(try shop.get("/v1/customers/\(user)").status == 200)
  }

  /// `meshctl up --control-planes 3`: three replicas on a local three-member etcd cluster. The
  /// shop works as on one; `meshctl status` names each sidecar's replica; with the replica
  /// that orders uses killed, orders are still confirmed and its sidecar moves to another;
  /// `meshctl restart control-plane` brings it back and `meshctl check` passes.
  @Test func theShopOnThreeControlPlanes() throws {
    let shop = try LocalShop(["--control-planes", "3"], name: "three-planes")
    defer { _ = try? shop.meshctl(["down"]) }
    #expect(shop.processes.count == 17, "\(shop.processes)")
    let (_, user, customer) = try shop.createUser()
    #expect(customer.status == 200, "\(customer)")
    let first = try shop.post("/v1/orders", Self.order(user, minor: 450))
    #expect(first.json["status"] as? String == "ORDER_STATUS_CONFIRMED", "\(first)")
    // The dashboard asks every replica: the whole mesh's sidecars and calls, merged.
    let dashboard = "http://127.0.0.1:\(shop.basePort + 185)"
    var trust: [String: Any] = [:]
    var edges: [String] = []
    let merged = Date().addingTimeInterval(20)
    repeat {
      trust = (try? http("GET", dashboard + "/api/trust").json) ?? [:]
      let graph = (try? http("GET", dashboard + "/api/graph").json) ?? [:]
      edges = (graph["edges"] as? [[String: Any]] ?? []).map {
        "\($0["from"] as? String ?? "")→\($0["to"] as? String ?? "")"
      }
      // Each sidecar reports the calls that ended each second, so the outer call's edge
      // (gateway→orders, which ends last) may come a report after the inner one's.
      if trust["connected"] as? Int == 5, edges.contains("orders→payments"),
        edges.contains("gateway→orders")
      {
        break
      }
      Thread.sleep(forTimeInterval: 0.5)
    } while Date() < merged
    #expect(trust["connected"] as? Int == 5, "\(trust)")
    #expect(edges.contains("orders→payments") && edges.contains("gateway→orders"), "\(edges)")

    func replicaOf(_ service: String) throws -> String? {
      let text = try shop.meshctl(["status", "-o", "json"]).stdout
      let document = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]
      return (document?["sidecars"] as? [[String: Any]])?.first {
        ($0["node"] as? String ?? "").hasPrefix(service + "@") && $0["connected"] as? Bool == true
      }?["replica"] as? String
    }
    let used = try #require(try replicaOf("orders"))
    #expect(used.hasPrefix("control-plane-"))
    kill(try #require(shop.pid(of: used)), SIGKILL)
    for index in 0..<5 {
      let order = try shop.post("/v1/orders", Self.order(user, minor: 100 + index))
      #expect(order.json["status"] as? String == "ORDER_STATUS_CONFIRMED", "\(order)")
    }
    #expect(
      try waitFor(seconds: 30) { try replicaOf("orders").map { $0 != used } ?? false },
      "\((try? shop.meshctl(["status"]).stdout) ?? "")")
    #expect(try shop.meshctl(["check"]).stdout.contains("× \(used)"))

    let restarted = try shop.meshctl(["restart", "control-plane"])
    #expect(restarted.status == 0, "\(restarted.stdout)\(restarted.stderr)")
    let check = try shop.meshctl(["check"])
    #expect(check.status == 0, "\(check.stdout)")
    #expect(check.stdout.contains("3 control plane replicas answer"), "\(check.stdout)")
    #expect(check.stdout.contains("leader"), "\(check.stdout)")
  }

  /// `meshctl restart` rolls each instance without a failed call, under load through the
  /// gateway; two orders instances share one database. Then the gateway hands its port over.
  @Test func restartsRollWithoutAFailedCall() throws {
    let shop = try LocalShop(["--replicas", "orders=2"], name: "restart")
    #expect(shop.pid(of: "orders-1") != nil && shop.pid(of: "orders-2") != nil)
    let load = try shop.load()
    Thread.sleep(forTimeInterval: 2)
    for service in ["orders", "users", "payments", "events", "control-plane"] {
      let before = shop.processes.filter { $0["service"] as? String == service }.compactMap {
        $0["pid"] as? Int
      }
      let restarted = try shop.meshctl(["restart", service])
      #expect(restarted.status == 0, "\(restarted.stdout)\(restarted.stderr)")
      let after = shop.processes.filter { $0["service"] as? String == service }.compactMap {
        $0["pid"] as? Int
      }
      #expect(Set(before).isDisjoint(with: after), "\(service): \(before) → \(after)")
      #expect(before.allSatisfy { !isAlive($0) })
    }
    Thread.sleep(forTimeInterval: 1)
    let result = try load.finish()
    let statuses = result["statuses"] as? [String: Int] ?? [:]
    #expect(statuses.keys.sorted() == ["200"], "\(statuses) \(result["failures"] ?? "")")
    #expect((statuses["200"] ?? 0) > 50, "\(statuses)")

    // The gateway hands its port over: the new one waits for the port and takes it the moment
    // the old one closes it, so the port has no listener for milliseconds (stop-then-start
    // left it without one while a gateway process started). The old one answers what it has;
    // a client sees at most its idle keep-alive connection closed, and connects again.
    let oldGateway = try #require(shop.pid(of: "gateway"))
    let gatewayLoad = try shop.load()
    let probeStop = shop.directory.appendingPathComponent("stop-probe")
    let probe = Process()
    probe.executableURL = URL(fileURLWithPath: try resolve("python3"))
    probe.arguments = [
      integrationInputs.appendingPathComponent("python/port_gap.py").path, "127.0.0.1",
      "\(shop.gatewayPort)", probeStop.path,
    ]
    let probeOutput = Pipe()
    probe.standardOutput = probeOutput
    try probe.run()
    Thread.sleep(forTimeInterval: 2)
    let handedOver = try shop.meshctl(["restart", "gateway"])
    #expect(handedOver.status == 0, "\(handedOver.stdout)\(handedOver.stderr)")
    #expect(shop.pid(of: "gateway").map { $0 != oldGateway } == true)
    #expect(!isAlive(Int(oldGateway)))
    Thread.sleep(forTimeInterval: 1)
    FileManager.default.createFile(atPath: probeStop.path, contents: nil)
    probe.waitUntilExit()
    let gap = try #require(
      try JSONSerialization.jsonObject(
        with: probeOutput.fileHandleForReading.readDataToEndOfFile()) as? [String: Any])
    let longestGap = gap["longest_gap_ms"] as? Double ?? 9e9
    #expect((gap["attempts"] as? Int ?? 0) > 100, "\(gap)")
    #expect(longestGap < 200, "the gateway port had no listener for \(longestGap) ms")
    // A SYN that meets the old listener as it closes is dropped, not refused, and its client
    // tries again a second later: at most one such connection.
    #expect((gap["timed_out"] as? Int ?? 9) <= 1, "\(gap)")
    let throughGateway = try gatewayLoad.finish()
    let gatewayStatuses = throughGateway["statuses"] as? [String: Int] ?? [:]
    let failures = throughGateway["failures"] as? [String] ?? []
    #expect(Set(gatewayStatuses.keys).isSubset(of: ["200", "0"]), "\(gatewayStatuses) \(failures)")
    #expect((gatewayStatuses["0"] ?? 0) <= 4, "\(failures)")
    #expect((gatewayStatuses["200"] ?? 0) > 20, "\(gatewayStatuses)")

    let settled = try shop.settledInvariants()
    #expect((settled["violations"] as? [String])?.isEmpty == true, "\(settled)")
    print(
      """
      restarts under load: \(statuses); gateway handed over: \(gatewayStatuses) \(failures), port \
      probe \(gap); \(settled)
      """
    )
  }

  /// kill -9 of an orders instance under load, mid-saga: the other instance (by lease) and
  /// the restarted one finish every saga; nothing is charged twice or without its order.
  @Test func ordersKilledMidSagaLosesNothing() throws {
    try Self.killOrdersMidSaga(LocalShop(["--replicas", "orders=2"], name: "kill-orders"))
  }

  /// `kill -9` of one of two orders instances under HTTP load, then a restart: nothing lost,
  /// nothing charged twice.
  static func killOrdersMidSaga(_ shop: LocalShop) throws {
    let load = try shop.load(workers: 3)
    Thread.sleep(forTimeInterval: 3)
    let victim = try #require(shop.pid(of: "orders-1"))
    kill(victim, SIGKILL)
    Thread.sleep(forTimeInterval: 2)
    let check = try shop.meshctl(["check"])
    #expect(check.status != 0)
    #expect(check.stdout.contains("× orders-1 (pid \(victim)) is not running"), "\(check.stdout)")
    let restarted = try shop.meshctl(["restart", "orders"])
    #expect(restarted.status == 0, "\(restarted.stdout)\(restarted.stderr)")
    Thread.sleep(forTimeInterval: 2)
    let result = try load.finish()
    let settled = try shop.settledInvariants()
    #expect((settled["violations"] as? [String])?.isEmpty == true, "\(settled)")
    #expect(settled["unfinished_sagas"] as? Int == 0, "\(settled)")
    #expect((settled["orders"] as? Int ?? 0) > 10, "\(settled)")
    print("orders killed under load: \(result["statuses"] ?? ""); \(settled)")
  }

  /// kill -9 of users (between a user's commit and its event's publication, some of the
  /// time) and of the event bus, under load: every user still gets its customer record.
  @Test func usersAndTheBusKilledLoseNoEvent() throws {
    let shop = try LocalShop(name: "kill-bus")
    let load = try shop.load(workers: 3)
    Thread.sleep(forTimeInterval: 3)
    for service in ["users", "events"] {
      let victim = try #require(shop.pid(of: service))
      kill(victim, SIGKILL)
      Thread.sleep(forTimeInterval: 1)
      let restarted = try shop.meshctl(["restart", service])
      #expect(restarted.status == 0, "\(restarted.stdout)\(restarted.stderr)")
      Thread.sleep(forTimeInterval: 2)
    }
    let result = try load.finish()
    let settled = try shop.settledInvariants(seconds: 120)
    #expect((settled["violations"] as? [String])?.isEmpty == true, "\(settled)")
    #expect(settled["users"] as? Int == settled["customers"] as? Int, "\(settled)")
    #expect((settled["users"] as? Int ?? 0) > 10, "\(settled)")
    print("users and events killed under load: \(result["statuses"] ?? ""); \(settled)")
  }

  /// In the foreground: every process's lines prefixed with its name, a process that dies
  /// reported with its last lines, and Ctrl-C (SIGINT) stopping everything.
  @Test func theForegroundShowsLogsReportsDeathsAndStopsOnCtrlC() throws {
    let directory = try makeTemporaryDirectory("foreground")
    let base = 20000 + 200 * Int.random(in: 0..<60)
    let output = directory.appendingPathComponent("up.out")
    FileManager.default.createFile(atPath: output.path, contents: nil)
    let process = Process()
    process.executableURL = URL(fileURLWithPath: binary("meshctl"))
    process.arguments = [
      "up", "--no-build", "--base-port", "\(base)", "--gateway-port", "\(base + 199)",
      "--control-plane-port", "\(base + 195)", "--dashboard-port", "\(base + 185)",
    ]
    process.currentDirectoryURL = directory
    process.standardOutput = try FileHandle(forWritingTo: output)
    process.standardError = process.standardOutput
    try process.run()
    func text() -> String { (try? String(contentsOf: output, encoding: .utf8)) ?? "" }
    let end = Date().addingTimeInterval(120)
    while !text().contains("The shop is running"), process.isRunning, Date() < end {
      Thread.sleep(forTimeInterval: 0.2)
    }
    #expect(text().contains("Ctrl-C stops it"), "\(text())")
    #expect(text().contains(#"[control-plane] {"#))
    #expect(text().contains(#"[orders-sidecar] {"#))
    let shop =
      (try? JSONSerialization.jsonObject(
        with: FileManager.default.contents(
          atPath: directory.appendingPathComponent(".trellis/run.json").path) ?? Data()))
      as? [String: Any]
    let processes = shop?["processes"] as? [[String: Any]] ?? []
    let payments = try #require(
      processes.first { $0["name"] as? String == "payments" }?["pid"] as? Int)
    kill(pid_t(payments), SIGKILL)
    while !text().contains("[meshctl] payments (pid \(payments)) was killed by signal 9"),
      Date() < end
    {
      Thread.sleep(forTimeInterval: 0.2)
    }
    #expect(
      text().contains("[meshctl] payments (pid \(payments)) was killed by signal 9; its last lines")
    )
    kill(process.processIdentifier, SIGINT)
    process.waitUntilExit()
    #expect(process.terminationStatus == 0)
    #expect(text().contains("stopped; the data stays in .trellis/"))
    let pids = processes.compactMap { $0["pid"] as? Int }
    #expect(pids.allSatisfy { !isAlive($0) }, "still running: \(pids.filter { isAlive($0) })")

    // Up again in the foreground, stopped by `meshctl down` from another terminal: the stops
    // are not reported as deaths, and the foreground ends once everything has.
    FileManager.default.createFile(atPath: output.path, contents: nil)
    let again = Process()
    again.executableURL = process.executableURL
    again.arguments = process.arguments
    again.currentDirectoryURL = directory
    again.standardOutput = try FileHandle(forWritingTo: output)
    again.standardError = again.standardOutput
    try again.run()
    while !text().contains("The shop is running"), again.isRunning, Date() < end {
      Thread.sleep(forTimeInterval: 0.2)
    }
    let down = try run(binary("meshctl"), ["down"], directory: directory)
    #expect(down.stdout.contains("stopped 12 processes"), "\(down.stdout)\(down.stderr)")
    let ended = Date().addingTimeInterval(20)
    while again.isRunning, Date() < ended { Thread.sleep(forTimeInterval: 0.1) }
    #expect(!again.isRunning, "the foreground up outlived meshctl down: \(text())")
    if again.isRunning { kill(again.processIdentifier, SIGKILL) }
    again.waitUntilExit()
    #expect(text().contains("stopped by meshctl down"), "\(text())")
    #expect(!text().contains("is no longer running"), "\(text())")
    #expect(!text().contains("was killed by signal"), "\(text())")
  }

  /// A route timeout on the event bus cuts its unary calls, not its subscriptions: the
  /// sidecars know Subscribe streams (from the service's descriptors) and let it last.
  @Test func subscriptionsOutliveARouteTimeout() throws {
    let shop = try LocalShop(name: "streams")
    let meshFile = shop.directory.appendingPathComponent(".trellis/mesh.yaml")
    var text = try String(contentsOf: meshFile, encoding: .utf8)
    text += "routes:\n  - service: events\n    timeout: 1s\n"
    try text.write(to: meshFile, atomically: true, encoding: .utf8)
    let applied = try shop.meshctl(["apply", "-f", meshFile.path])
    #expect(applied.status == 0, "\(applied.stdout)\(applied.stderr)")
    // New subscriptions, under the new config: the bus's restart ends the open ones.
    Thread.sleep(forTimeInterval: 1)
    let restarted = try shop.meshctl(["restart", "events"])
    #expect(restarted.status == 0, "\(restarted.stdout)\(restarted.stderr)")
    Thread.sleep(forTimeInterval: 1)
    let ordersLog = shop.directory.appendingPathComponent(".trellis/logs/orders.log")
    let before = try String(contentsOf: ordersLog, encoding: .utf8)
      .components(separatedBy: "event subscription lost").count
    Thread.sleep(forTimeInterval: 4)
    let created = try shop.post("/v1/users", #"{"email":"sub@example.com","name":"Sub"}"#)
    let user = try #require(created.json["id"] as? String)
    var customer = try shop.get("/v1/customers/\(user)")
    let end = Date().addingTimeInterval(20)
    while customer.status != 200, Date() < end {
      Thread.sleep(forTimeInterval: 0.2)
      customer = try shop.get("/v1/customers/\(user)")
    }
    #expect(customer.status == 200)
    let after = try String(contentsOf: ordersLog, encoding: .utf8)
      .components(separatedBy: "event subscription lost").count
    #expect(after == before, "orders' subscription was cut \(after - before) times")
  }

  /// Before `up`: what is missing and what is taken, with the fix.
  @Test func checkBeforeUpNamesWhatIsWrong() throws {
    let directory = try makeTemporaryDirectory("check")
    let result = try run(binary("meshctl"), ["check"], directory: directory)
    #expect(result.status == 1)
    #expect(
      result.stdout.contains("× no CA in certs/\n    fix: meshctl certs init"), "\(result.stdout)")
    let bad = try run(
      binary("meshctl"), ["up", "--no-build", "--replicas", "shipping=2"], directory: directory)
    #expect(bad.status != 0)
    #expect(bad.stderr.contains("--replicas shipping=2: no such service"), "\(bad.stderr)")
  }
}
