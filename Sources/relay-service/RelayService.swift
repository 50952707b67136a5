import ArgumentParser
import GRPCCore
import MeshServiceKit
import Tracing

/// `relay-service`: a service for trying the mesh out. Each `Hop` works for `work_ms`, then
/// calls the first of its `next` services (through this app's sidecar) with the rest, and
/// answers with every hop the call went through; `Stream` answers with as many replies, as
/// large, as asked. Three of them make a chain of three services,
/// each calling the next through its sidecar — one trace from end to end.
@main
struct RelayCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "relay-service",
    abstract: "Serve trellis.demo.v1.Relay: answer, or pass each call on to the next service.",
    usage: "relay-service [<options>]")

  @OptionGroup var options: ServiceOptions
  @Option(help: "This service's name, as the mesh knows it.") var name = "relay"
  @Option(help: "The sidecar's outbound listener the next hops are called through, HOST:PORT.")
  var sidecar = "127.0.0.1:15002"

  func run() async throws {
    let clients = try SidecarClients(option: sidecar)
    try await options.serve(
      name: name, defaultListen: "127.0.0.1:50070",
      descriptorSets: [PackageResources.relay_protoset], others: [clients]
    ) {
      [Relay(name: name, clients: clients)]
    }
  }
}

struct Relay: Trellis_Demo_V1_Relay.SimpleServiceProtocol {
  let name: String
  let clients: SidecarClients

  func hop(
    request: Trellis_Demo_V1_HopRequest, context: ServerContext
  ) async throws
    -> Trellis_Demo_V1_HopReply
  {
    if request.workMs > 0 {
      // The handler's own span, a child of the call's.
      try await withSpan("work") { span in
        span.attributes["relay.work_ms"] = Int(request.workMs)
        try await Task.sleep(for: .milliseconds(Int(request.workMs)))
      }
    }
    var reply = Trellis_Demo_V1_HopReply()
    reply.hops = [name]
    reply.payload = request.payload
    guard let next = request.next.first else { return reply }
    var onward = request
    onward.next.removeFirst()
    let answer = try await Trellis_Demo_V1_Relay.Client(wrapping: try clients.client(for: next))
      .hop(onward)
    reply.hops += answer.hops
    return reply
  }

  /// `count` replies of `size` bytes each (at most 1 MiB a reply), written as the caller's
  /// window allows.
  func stream(
    request: Trellis_Demo_V1_StreamRequest,
    response: RPCWriter<Trellis_Demo_V1_HopReply>,
    context: ServerContext
  ) async throws {
    guard request.size <= 1 << 20 else {
      throw RPCError(code: .invalidArgument, message: "size \(request.size): at most 1 MiB")
    }
    var reply = Trellis_Demo_V1_HopReply()
    reply.hops = [name]
    reply.payload = String(repeating: "x", count: Int(request.size))
    for _ in 0..<request.count {
      try await response.write(reply)
    }
  }
}
