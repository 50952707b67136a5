import Foundation
import TestSupport
import Testing

/// One bad instance must not become failed requests: killed, failing or slow, the caller's
/// sidecar steers around it — and never executes a non-idempotent call twice doing so.
@Suite(.serialized) struct FailoverTests {
  typealias Scene = RetryAndDeadlineTests.Scene
  let calls = RetryAndDeadlineTests()

  /// Starts load in the background: `resilience.py load` through `client`.
  func background(
    _ client: RunningSidecar, _ method: String, seconds: Double, concurrency: Int
  ) throws -> BackgroundLoad {
    try BackgroundLoad(
      python: [
        RetryAndDeadlineTests.script, "load", client.outbound, method, "\(seconds)",
        "\(concurrency)",
      ])
  }

  /// Three instances under steady load, one killed (-9) in the middle: idempotent calls
  /// succeed (≥ 99.9 %), and no non-idempotent call is executed twice.
  @Test func killingOneOfThreeUnderLoadLosesNoIdempotentCall() throws {
    let scene = try Scene("kill")
    let addresses = try ["a", "b", "c"].map { try scene.server($0) }
    let client = try scene.client(
      """
      services:
        r:
          endpoints: [\(addresses.map { "{address: \($0)}" }.joined(separator: ", "))]
      \(RetryAndDeadlineTests.idempotent)
      """)
    let reads = try background(client, "Get", seconds: 8, concurrency: 8)
    let writes = try background(client, "Create", seconds: 8, concurrency: 4)
    Thread.sleep(forTimeInterval: 3)
    // The second server process (its sidecar stays: the app behind it is gone).
    scene.processes[2].kill()
    let read = try reads.finish()
    let write = try writes.finish()
    let readCodes = read["codes"] as? [String: Int] ?? [:]
    let ok = Double(readCodes["OK"] ?? 0)
    let total = Double(readCodes.values.reduce(0, +))
    #expect(total > 1000 && ok / total >= 0.999, "\(read)")

    // Every Create key the servers executed, executed once, whatever the caller was told.
    var seen: [String: Int] = [:]
    for execution in try scene.executions() where execution["method"] as? String == "Create" {
      seen[execution["key"] as? String ?? "", default: 0] += 1
    }
    let twice = seen.filter { $0.value > 1 }
    #expect(twice.isEmpty, "executed twice: \(twice.keys.sorted().prefix(5))")
    let writeCodes = write["codes"] as? [String: Int] ?? [:]
    #expect((writeCodes["OK"] ?? 0) > 100, "\(write)")
  }

  /// An instance that fails every call is ejected after 5 failures in a row, and the retries
  /// its failures cause stay inside the retry budget.
  @Test func aFailingInstanceIsEjectedAndRetriesStayInTheBudget() throws {
    let scene = try Scene("eject")
    let healthy = try ["a", "b"].map { try scene.server($0) }
    let failing = try scene.server("bad", ["--fail-all"])
    let client = try scene.client(
      """
      services:
        r:
          endpoints: [{address: \(healthy[0])}, {address: \(healthy[1])}, {address: \(failing)}]
          retryBudget: {percent: 20, minPerSecond: 10, window: 10s}
      \(RetryAndDeadlineTests.idempotent)
      """)
    let result = try calls.load(client, "Get", seconds: 3, concurrency: 4)
    let codes = result["codes"] as? [String: Int] ?? [:]
    #expect(codes.keys.sorted() == ["OK"], "\(result)")
    let executions = try scene.executions().filter { $0["method"] as? String == "Get" }
    let onBad = executions.filter { $0["server"] as? String == "bad" }.count
    #expect(onBad == 5, "the failing instance executed \(onBad) calls")
    // Amplification: executions per call, over the whole run.
    let callsMade = Double(result["calls"] as? Int ?? 0)
    let amplification = Double(executions.count) / max(callsMade, 1)
    #expect(amplification < 1.2, "amplification \(amplification)")
    #expect(
      try client.metric(
        "trellis_outlier_ejections_total", ["service": "r", "endpoint": failing]) == 1)
    let page = try client.adminPage("/endpoints")
    let object = try #require(
      try JSONSerialization.jsonObject(with: Data(page.body.utf8)) as? [String: Any])
    let services = object["services"] as? [[String: Any]] ?? []
    let endpoints = services.first { $0["service"] as? String == "r" }?["endpoints"]
      as? [[String: Any]] ?? []
    let bad = endpoints.first { $0["address"] as? String == failing }
    #expect(bad?["state"] as? String == "ejected", "\(page.body)")
    #expect(bad?["ejections"] as? Int == 1)
    #expect(endpoints.filter { $0["state"] as? String == "active" }.count == 2)
  }

  /// One instance 100 ms slower than the others: the default balancer (peak-EWMA over two
  /// random choices) sends it clearly less traffic than round robin does, and p99 is lower.
  @Test func theDefaultBalancerAvoidsASlowInstance() throws {
    let scene = try Scene("slow")
    let fast = try ["a", "b"].map { try scene.server($0) }
    let slow = try scene.server("slow", ["--delay", "100"])
    func client(_ balancing: String) throws -> RunningSidecar {
      try scene.client(
        """
        services:
          r:
            endpoints: [{address: \(fast[0])}, {address: \(fast[1])}, {address: \(slow)}]
            loadBalancing: \(balancing)
        """)
    }
    let ewma = try calls.load(try client("p2c-ewma"), "Get", seconds: 4, concurrency: 6)
    let roundRobin = try calls.load(try client("round-robin"), "Get", seconds: 4, concurrency: 6)
    func slowShare(_ result: [String: Any]) -> Double {
      let servers = result["servers"] as? [String: Int] ?? [:]
      return Double(servers["slow"] ?? 0) / Double(max(1, servers.values.reduce(0, +)))
    }
    let shares = (ewma: slowShare(ewma), roundRobin: slowShare(roundRobin))
    let p99 = (ewma: ewma["p99_ms"] as? Double ?? 0, roundRobin: roundRobin["p99_ms"] as? Double ?? 0)
    print(
      "slow instance: share p2c-ewma \(shares.ewma), round-robin \(shares.roundRobin); "
        + "p99 p2c-ewma \(p99.ewma) ms, round-robin \(p99.roundRobin) ms; "
        + "share ratio \(shares.ewma / max(shares.roundRobin, 0.0001)), "
        + "p99 ratio \(p99.ewma / max(p99.roundRobin, 0.0001))")
    #expect(shares.roundRobin > 0.25, "\(roundRobin)")
    #expect(shares.ewma < shares.roundRobin / 2, "\(ewma)")
    #expect(p99.ewma < p99.roundRobin, "\(ewma) \(roundRobin)")
  }
}
