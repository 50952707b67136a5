import ArgumentParser
import EventService
import MeshServiceKit
import ShopProtos

/// `event-service`: hosts `shop.v1.EventService`, the shop's event bus, over a SQLite database.
@main
struct EventServiceCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "event-service",
    abstract: "Serve shop.v1.EventService (the event bus) over gRPC (h2c).",
    usage: "event-service [<options>]")

  @OptionGroup var options: ServiceOptions

  @Option(help: "SQLite database file; created if missing.")
  var db = ".trellis/events/events.sqlite"

  func run() async throws {
    try await options.serve(
      name: "event-service", defaultListen: "127.0.0.1:50054",
      descriptorSets: [ShopProtosDescriptors.fileDescriptorSet]
    ) { [try EventService(databasePath: db)] }
  }
}
