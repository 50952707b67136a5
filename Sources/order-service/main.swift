import ArgumentParser
import MeshServiceKit
import OrderService
import ShopProtos

/// `order-service`: hosts `shop.v1.OrderService` over a SQLite database.
@main
struct OrderServiceCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "order-service", abstract: "Serve shop.v1.OrderService over gRPC (h2c).")

  @OptionGroup var options: ServiceOptions

  @Option(help: "SQLite database file; created if missing.")
  var db = ".trellis/orders/orders.sqlite"

  func run() async throws {
    try await options.serve(
      name: "order-service", defaultListen: "127.0.0.1:50052",
      descriptorSets: [ShopProtosDescriptors.fileDescriptorSet]
    ) { [try OrderService(databasePath: db)] }
  }
}
