import Foundation
import TestSupport
import Testing

/// `rpc` end to end against a running `user-service`: what a user types, what they see, and
/// the exit status, as with grpcurl.
@Suite(.serialized) final class RPCTests {
  let directory: URL
  let service: ServiceProcess
  var address: String { service.address }

  init() throws {
    directory = try makeTemporaryDirectory("rpc")
    service = try startService(
      "user-service", database: directory.appendingPathComponent("users.sqlite"))
  }

  deinit { service.stop() }

  @Test func listsServicesAndMethods() throws {
    let result = try rpc(["list", "--plaintext", address])
    #expect(result.status == 0, "\(result.stderr)")
    #expect(
      result.stdout.split(separator: "\n") == [
        "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection", "shop.v1.UserService",
      ])
    let methods = try rpc(["list", "--plaintext", address, "shop.v1.UserService"])
    #expect(
      methods.stdout.split(separator: "\n") == [
        "shop.v1.UserService.CreateUser", "shop.v1.UserService.GetUser",
        "shop.v1.UserService.ListUsers",
      ])
  }

  @Test func describesSymbols() throws {
    let service = try rpc(["describe", "--plaintext", address, "shop.v1.UserService"])
    #expect(service.status == 0)
    #expect(service.stdout.hasPrefix("shop.v1.UserService is a service:\nservice UserService {"))
    #expect(
      service.stdout.contains("rpc GetUser ( .shop.v1.GetUserRequest ) returns ( .shop.v1.User )"))
    let message = try rpc(["describe", "--plaintext", address, "shop.v1.User"])
    #expect(message.stdout.contains("message User {\n  string id = 1;"))
    #expect(message.stdout.contains(".google.protobuf.Timestamp create_time = 4;"))
    let missing = try rpc(["describe", "--plaintext", address, "shop.v1.Nope"])
    #expect(missing.status == 1)
    #expect(missing.stderr == "rpc: symbol shop.v1.Nope not found\n")
  }

  @Test func createsAndGetsAUser() throws {
    let created = try rpc([
      "call", "--plaintext", address, "shop.v1.UserService/CreateUser",
      "-d", #"{"email":"ada@example.com","name":"Ada"}"#,
    ])
    #expect(created.status == 0, "\(created.stderr)")
    let user = try #require(try jsonObjects(created.stdout).first)
    #expect(user["email"] as? String == "ada@example.com")
    let id = try #require(user["id"] as? String)

    // -d @FILE and -d @- read the same JSON.
    let file = directory.appendingPathComponent("get.json")
    try #"{"id": "\#(id)"}"#.write(to: file, atomically: true, encoding: .utf8)
    let fromFile = try rpc([
      "call", "--plaintext", address, "shop.v1.UserService/GetUser", "-d", "@\(file.path)",
    ])
    #expect(try jsonObjects(fromFile.stdout).first?["id"] as? String == id)
    let fromStdin = try rpc(
      ["call", "--plaintext", address, "shop.v1.UserService.GetUser", "-d", "@-"],
      stdin: #"{"id":"\#(id)"}"#)
    #expect(try jsonObjects(fromStdin.stdout).first?["name"] as? String == "Ada")
  }

  @Test func statusCodesBecomeExitCodes() throws {
    let missing = try rpc([
      "call", "--plaintext", address, "shop.v1.UserService/GetUser", "-d", #"{"id":"usr_nope"}"#,
    ])
    #expect(missing.status == 69)
    #expect(missing.stderr == "rpc: NOT_FOUND: user usr_nope not found\n")
    let invalid = try rpc([
      "call", "--plaintext", address, "shop.v1.UserService/CreateUser",
      "-d", #"{"email":"nope","name":"X"}"#,
    ])
    #expect(invalid.status == 67)
    #expect(invalid.stderr.contains("INVALID_ARGUMENT: email:"))
  }

  @Test func inputErrorsAreOneClearLine() throws {
    func call(_ arguments: [String]) throws -> ProcessResult {
      try rpc(["call", "--plaintext", address] + arguments)
    }
    let badJSON = try call(["shop.v1.UserService/CreateUser", "-d", #"{"email": }"#])
    #expect(badJSON.status == 1)
    #expect(
      badJSON.stderr
        == "rpc: request data is not JSON: invalid JSON at line 1, column 11: unexpected '}', expected a value\n"
    )
    let unknownField = try call(["shop.v1.UserService/CreateUser", "-d", #"{"mail": "a@b.co"}"#])
    #expect(unknownField.status == 1)
    #expect(unknownField.stderr.contains(#"shop.v1.CreateUserRequest has no field "mail""#))
    let allowed = try call([
      "shop.v1.UserService/ListUsers", "-d", #"{"bogus": 1}"#, "--allow-unknown-fields",
    ])
    #expect(allowed.status == 0)
    let unknownMethod = try call(["shop.v1.UserService/Foo"])
    #expect(unknownMethod.status == 1)
    #expect(
      unknownMethod.stderr
        == "rpc: shop.v1.UserService has no method Foo; it has: CreateUser, GetUser, ListUsers\n")
    let unknownService = try call(["shop.v1.Nope/Foo"])
    #expect(unknownService.stderr.hasPrefix("rpc: unknown service shop.v1.Nope; the server has: "))
    let twoForUnary = try call(["shop.v1.UserService/GetUser", "-d", #"{"id":"a"} {"id":"b"}"#])
    #expect(twoForUnary.status == 1)
    #expect(twoForUnary.stderr.contains("takes exactly one request message; 2 were given"))
  }

  @Test func unreachableAddressAndUsageErrors() throws {
    let unreachable = try rpc(["list", "--plaintext", "127.0.0.1:1"])
    #expect(unreachable.status == 1)
    #expect(unreachable.stderr == "rpc: cannot connect to 127.0.0.1:1: connection refused\n")
    let missingArgument = try rpc(["call", "--plaintext", address])
    #expect(missingArgument.status == 2)
    let badFlag = try rpc(["list", "--nope", address])
    #expect(badFlag.status == 2)
    let badAddress = try rpc(["list", "--plaintext", "nowhere"])
    #expect(badAddress.status == 2)
    #expect(badAddress.stderr.contains(#"invalid address "nowhere""#))
  }

  @Test func serverStreamingWithADeadline() throws {
    // Watch streams until the deadline: the first status is printed, then DEADLINE_EXCEEDED.
    let watch = try rpc([
      "call", "--plaintext", address, "grpc.health.v1.Health/Watch",
      "-d", #"{"service":"shop.v1.UserService"}"#, "--max-time", "0.5",
    ])
    #expect(try jsonObjects(watch.stdout).first?["status"] as? String == "SERVING")
    #expect(watch.status == 64 + 4)
    #expect(watch.stderr.hasPrefix("rpc: DEADLINE_EXCEEDED"))
  }

  @Test func bidirectionalStreamingWithSeveralRequests() throws {
    // Reflection is a bidirectional stream: two requests in, two answers out, in order.
    let result = try rpc([
      "call", "--plaintext", address, "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
      "-d", #"{"listServices": ""} {"fileContainingSymbol": "shop.v1.Nope"}"#,
    ])
    #expect(result.status == 0, "\(result.stderr)")
    let answers = try jsonObjects(result.stdout)
    #expect(answers.count == 2)
    #expect(answers.first?["listServicesResponse"] != nil)
    #expect((answers.last?["errorResponse"] as? [String: Any])?["errorCode"] as? Int == 5)
  }

  @Test func verboseShowsHeadersTrailersAndTiming() throws {
    let result = try rpc([
      "call", "-v", "--plaintext", address, "grpc.health.v1.Health/Check", "-H", "x-trace: abc",
      "-H", "x-blob-bin: AAEC",
    ])
    #expect(result.status == 0)
    #expect(
      result.stdout.contains(
        "Response headers received:\n:status: 200\ncontent-type: application/grpc"))
    #expect(result.stdout.contains("Response trailers received:"))
    #expect(result.stdout.contains(#""status": "SERVING""#))
    #expect(result.stdout.contains("Sent 1 request(s) and received 1 response(s) in "))
    let badHeader = try rpc([
      "call", "--plaintext", address, "grpc.health.v1.Health/Check", "-H", "nocolon",
    ])
    #expect(badHeader.status == 2)
  }

  @Test func emitDefaultsAndProtoset() throws {
    let protoset = repositoryRoot.appendingPathComponent(
      "Sources/ShopProtos/Generated/shop.protoset")
    let result = try rpc([
      "call", "--plaintext", address, "--protoset", protoset.path, "--emit-defaults",
      "shop.v1.UserService/ListUsers", "-d", #"{"pageSize": 1, "pageToken": ""}"#,
    ])
    #expect(result.status == 0, "\(result.stderr)")
    #expect(result.stdout.contains(#""nextPageToken": "#))
    let listed = try rpc(["list", "--plaintext", address, "--protoset", protoset.path])
    #expect(
      listed.stdout.split(separator: "\n") == [
        "shop.v1.EventService", "shop.v1.OrderService", "shop.v1.PaymentService",
        "shop.v1.UserService",
      ])
    let broken = directory.appendingPathComponent("broken.protoset")
    try Data([0x0A, 0x05, 0x01]).write(to: broken)
    let bad = try rpc(["list", "--plaintext", address, "--protoset", broken.path])
    #expect(bad.status == 1)
    #expect(bad.stderr.hasPrefix("rpc: --protoset \(broken.path): not a FileDescriptorSet"))
  }

  @Test func benchReportsCallsLatencyAndStatuses() throws {
    let ok = try rpc([
      "bench", "--plaintext", address, "grpc.health.v1.Health/Check", "-n", "200", "-c", "8",
      "--connections", "2", "-o", "json",
    ])
    #expect(ok.status == 0, "\(ok.stderr)")
    let report = try #require(try jsonObjects(ok.stdout).first)
    #expect(report["calls"] as? Int == 200)
    #expect(report["statuses"] as? [String: Int] == ["OK": 200])
    let latency = try #require(report["latency_ms"] as? [String: Double])
    #expect((latency["p50"] ?? 0) > 0 && (latency["p50"] ?? 0) <= (latency["p99"] ?? 0))
    // Errors are counted by status, paced calls keep their rate.
    let missing = try rpc([
      "bench", "--plaintext", address, "shop.v1.UserService/GetUser", "-d", #"{"id":"usr_nope"}"#,
      "-z", "1s", "--rps", "50",
    ])
    #expect(missing.status == 0)
    #expect(missing.stdout.contains("[NOT_FOUND]"), "\(missing.stdout)")
    let calls = missing.stdout.split(separator: "\n").first { $0.contains("Calls:") }
    let count = Int(calls?.split(separator: " ").last ?? "") ?? 0
    #expect((40...60).contains(count), "\(missing.stdout)")
    let bad = try rpc(["bench", "--plaintext", address, "grpc.health.v1.Health/Check", "-c", "0"])
    #expect(bad.status == 2)
    #expect(bad.stderr.contains("-c must be at least 1"))
    let streaming = try rpc(["bench", "--plaintext", address, "grpc.health.v1.Health/Watch"])
    #expect(streaming.status == 1)
    #expect(streaming.stderr.contains("rpc bench loads unary methods"))
  }
}
