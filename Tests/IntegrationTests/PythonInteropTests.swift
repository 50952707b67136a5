import Foundation
import TestSupport
import Testing

/// Interop both ways with the reference gRPC implementation, Python's grpcio.
@Suite struct PythonInteropTests {
  static let python = integrationInputs.appendingPathComponent("python")

  @Test func pythonClientCallsTheSwiftServices() throws {
    let directory = try makeTemporaryDirectory("py-client")
    let users = try startService(
      "user-service", database: directory.appendingPathComponent("u.sqlite"))
    let orders = try startService(
      "order-service", database: directory.appendingPathComponent("o.sqlite"))
    let payments = try startService(
      "payment-service", database: directory.appendingPathComponent("p.sqlite"))
    defer {
      users.stop()
      orders.stop()
      payments.stop()
    }
    let result = try run(
      "python3",
      [
        Self.python.appendingPathComponent("shop_client.py").path,
        directory.appendingPathComponent("stubs").path,
        repositoryRoot.appendingPathComponent("proto").path,
        users.address, orders.address, payments.address,
      ])
    #expect(result.status == 0, "\(result.stdout)\(result.stderr)")
    #expect(result.stdout.contains("python client: all checks passed"))
  }

  @Test func rpcCallsAPythonServerThroughItsReflection() throws {
    let directory = try makeTemporaryDirectory("py-server")
    let server = try ServiceProcess(
      try resolve("python3"),
      [
        Self.python.appendingPathComponent("echo_server.py").path,
        directory.appendingPathComponent("stubs").path, integrationInputs.path,
      ])
    defer { server.stop() }
    let address = server.address

    // grpcio-reflection serves v1alpha only: rpc falls back to it.
    let list = try rpc(["list", "--plaintext", address])
    #expect(list.status == 0, "\(list.stderr)")
    #expect(list.stdout.contains("trellis.echo.v1.Echo"))
    let describe = try rpc(["describe", "--plaintext", address, "trellis.echo.v1.EchoRequest"])
    #expect(describe.stdout.contains("map<string, int64> counts = 4;"))

    // Unary, with headers and a well-known type in the answer.
    let say = try rpc([
      "call", "--plaintext", address, "trellis.echo.v1.Echo/Say", "-H", "x-who: swift",
      "-d", #"{"text":"hi","counts":{"a":"9007199254740993"}}"#,
    ])
    #expect(say.status == 0, "\(say.stderr)")
    let answer = try #require(try jsonObjects(say.stdout).first)
    #expect(answer["text"] as? String == "hi")
    #expect(answer["at"] as? String == "2023-11-14T22:13:20Z")
    #expect((answer["headers"] as? [String: String])?["x-who"] == "swift")

    // Server streaming.
    let expand = try rpc([
      "call", "--plaintext", address, "trellis.echo.v1.Echo/Expand", "-d",
      #"{"text":"n","repeat":3}"#,
    ])
    #expect(try jsonObjects(expand.stdout).map { $0["text"] as? String } == ["n 0", "n 1", "n 2"])

    // Client streaming.
    let collect = try rpc([
      "call", "--plaintext", address, "trellis.echo.v1.Echo/Collect",
      "-d", #"{"text":"a"} {"text":"b"} {"text":"c"}"#,
    ])
    let collected = try #require(try jsonObjects(collect.stdout).first)
    #expect(collected["text"] as? String == "a b c")
    #expect(collected["index"] as? Int == 3)

    // Bidirectional streaming, requests from standard input.
    let chat = try rpc(
      ["call", "--plaintext", address, "trellis.echo.v1.Echo/Chat", "-d", "@-"],
      stdin: "{\"text\":\"x\"}\n{\"text\":\"y\"}\n")
    #expect(try jsonObjects(chat.stdout).map { $0["text"] as? String } == ["X", "Y"])

    // A status from the Python server becomes the exit code, with its message.
    let fail = try rpc([
      "call", "--plaintext", address, "trellis.echo.v1.Echo/Say",
      "-d", #"{"text":"boom","failWithCode":9}"#,
    ])
    #expect(fail.status == 64 + 9)
    #expect(fail.stderr == "rpc: FAILED_PRECONDITION: failing as asked: boom\n")
  }
}
