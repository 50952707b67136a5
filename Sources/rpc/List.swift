import ArgumentParser
import MeshTranscoding

/// `rpc list ADDRESS [SERVICE]`: the server's services, or one service's methods.
struct List: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "List the services a server exposes, or the methods of one service.")

  @Argument(help: "The server, HOST:PORT.") var address: String
  @Argument(help: "A fully qualified service name, to list its methods.") var service: String?
  @OptionGroup var connection: ConnectionOptions

  func run() async throws {
    try await connection.withClient(address) { client in
      var schema = try Schema(options: connection, client: client)
      guard let service else {
        for name in try await schema.services() { print(name) }
        return
      }
      let (descriptor, _) = try await schema.service(named: service)
      for method in descriptor.methods { print("\(descriptor.fullName).\(method.name)") }
    }
  }
}

extension Schema {
  /// A service and the pool declaring it, or a failure that lists the services there are.
  mutating func service(named name: String) async throws -> (ServiceDescriptor, DescriptorPool) {
    if let pool = try await pool(containing: name), let service = pool.service(named: name) {
      return (service, pool)
    }
    let known = try await services()
    throw CLIFailure.other(
      "unknown service \(name); the server has: \(known.joined(separator: ", "))")
  }
}
