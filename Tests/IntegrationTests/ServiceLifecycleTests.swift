import Foundation
import TestSupport
import Testing

/// The service executables as processes: data survives a restart (graceful or a crash), a
/// taken port is a clear error, SIGTERM exits cleanly.
@Suite struct ServiceLifecycleTests {
  @Test(arguments: ["graceful", "kill -9"])
  func dataSurvivesARestart(_ how: String) throws {
    let directory = try makeTemporaryDirectory("restart")
    let database = directory.appendingPathComponent("payments.sqlite")
    var service = try startService("payment-service", database: database)
    let charge =
      #"{"idempotencyKey":"k-1","orderId":"ord_1","amount":{"currencyCode":"USD","minorUnits":"1500"}}"#
    let first = try rpc([
      "call", "--plaintext", service.address, "shop.v1.PaymentService/Charge", "-d", charge,
    ])
    #expect(first.status == 0, "\(first.stderr)")
    let payment = try #require(try jsonObjects(first.stdout).first)
    if how == "graceful" {
      #expect(service.stop() == 0)
    } else {
      service.kill()
    }

    service = try startService("payment-service", database: database)
    defer { service.stop() }
    let again = try rpc([
      "call", "--plaintext", service.address, "shop.v1.PaymentService/Charge", "-d", charge,
    ])
    #expect(try jsonObjects(again.stdout).first?["id"] as? String == payment["id"] as? String)
    let fetched = try rpc([
      "call", "--plaintext", service.address, "shop.v1.PaymentService/GetPayment",
      "-d", #"{"id":"\#(payment["id"] as! String)"}"#,
    ])
    #expect(fetched.status == 0)
  }

  @Test func aTakenPortIsAClearError() throws {
    let directory = try makeTemporaryDirectory("port")
    let first = try startService(
      "order-service", database: directory.appendingPathComponent("a.sqlite"))
    defer { first.stop() }
    let second = try run(
      binary("order-service"),
      ["--listen", first.address, "--db", directory.appendingPathComponent("b.sqlite").path])
    #expect(second.status == 1)
    #expect(
      second.stderr.contains(
        "order-service: cannot listen on \(first.address): the address is already in use"))
  }

  @Test func healthReportsEachService() throws {
    let directory = try makeTemporaryDirectory("health")
    let service = try startService(
      "order-service", database: directory.appendingPathComponent("o.sqlite"))
    defer { service.stop() }
    let check = try rpc([
      "call", "--plaintext", service.address, "grpc.health.v1.Health/Check",
      "-d", #"{"service":"shop.v1.OrderService"}"#,
    ])
    #expect(try jsonObjects(check.stdout).first?["status"] as? String == "SERVING")
    let unknown = try rpc([
      "call", "--plaintext", service.address, "grpc.health.v1.Health/Check",
      "-d", #"{"service":"shop.v1.Nope"}"#,
    ])
    #expect(unknown.status == 69)
    // One JSON log line per RPC, with method, status and duration.
    let line = try #require(
      service.log.split(separator: "\n").last { $0.contains("grpc.health.v1.Health/Check") })
    let object = try #require(
      try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
    #expect(object["grpc_code"] as? String == "NOT_FOUND")
    #expect(object["duration_ms"] is Double || object["duration_ms"] is Int)
  }
}

/// SIGTERM lets in-flight calls finish: an open health Watch hears NOT_SERVING and ends with
/// OK, and the service exits 0.
@Suite struct GracefulShutdownTests {
  @Test func inFlightCallsFinishOnSIGTERM() throws {
    let directory = try makeTemporaryDirectory("shutdown")
    let service = try startService(
      "user-service", database: directory.appendingPathComponent("u.sqlite"))
    let watch = Process()
    watch.executableURL = URL(fileURLWithPath: binary("rpc"))
    watch.arguments = [
      "call", "--plaintext", service.address, "grpc.health.v1.Health/Watch",
      "-d", #"{"service":"shop.v1.UserService"}"#,
    ]
    let outputURL = directory.appendingPathComponent("watch.out")
    _ = FileManager.default.createFile(atPath: outputURL.path, contents: nil)
    watch.standardOutput = try FileHandle(forWritingTo: outputURL)
    try watch.run()
    func printed() -> String { (try? String(contentsOf: outputURL, encoding: .utf8)) ?? "" }
    // Wait until the watch has its first answer, so it is in flight on the server.
    let deadline = Date().addingTimeInterval(20)
    while !printed().contains("SERVING"), Date() < deadline {
      Thread.sleep(forTimeInterval: 0.05)
    }
    #expect(printed().contains("\"SERVING\""))
    #expect(service.stop() == 0)
    // Bounded, so a client that never ends fails this test instead of hanging the run.
    let exitDeadline = Date().addingTimeInterval(20)
    while watch.isRunning, Date() < exitDeadline { Thread.sleep(forTimeInterval: 0.05) }
    #expect(!watch.isRunning, "rpc did not exit within 20 s of the server's exit: \(printed())")
    if watch.isRunning { watch.terminate() }
    watch.waitUntilExit()
    #expect(printed().contains("NOT_SERVING"))
    #expect(watch.terminationStatus == 0)
    #expect(service.log.contains("shutting down: finishing in-flight calls"))
  }
}
