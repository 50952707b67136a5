import ArgumentParser
import MeshServiceKit
import ShopProtos
import UserService

/// `user-service`: hosts `shop.v1.UserService` over a SQLite database.
@main
struct UserServiceCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "user-service", abstract: "Serve shop.v1.UserService over gRPC (h2c).")

  @OptionGroup var options: ServiceOptions

  @Option(help: "SQLite database file; created if missing.")
  var db = ".trellis/users/users.sqlite"

  func run() async throws {
    try await options.serve(
      name: "user-service", defaultListen: "127.0.0.1:50051",
      descriptorSets: [ShopProtosDescriptors.fileDescriptorSet]
    ) { [try UserService(databasePath: db)] }
  }
}
