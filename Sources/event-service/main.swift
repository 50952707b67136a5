import ArgumentParser
import EventService
import Logging
import MeshServiceKit
import ShopProtos
import ShopSupport

/// `event-service`: hosts `shop.v1.EventService`, the shop's event bus, over its database (a
/// SQLite file, or PostgreSQL with `--db postgres://…`, which instances on several hosts share).
@main
struct EventServiceCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "event-service",
    abstract: "Serve shop.v1.EventService (the event bus) over gRPC (h2c).",
    usage: "event-service [<options>]")

  @OptionGroup var options: ServiceOptions

  @Option(
    help: """
      The database: a SQLite file (created if missing), or \
      postgres://USER@HOST:PORT/DB?password_file=FILE.
      """)
  var db = ".trellis/events/events.sqlite"

  func validate() throws {
    do {
      _ = try ShopDatabaseLocation(db)
    } catch {
      throw ValidationError("\(error)")
    }
  }

  func run() async throws {
    let bus = try await EventService.open(
      try ShopDatabaseLocation(db), logger: Logger(label: "event-service"))
    try await options.serve(
      name: "event-service", defaultListen: "127.0.0.1:50054",
      descriptorSets: [ShopProtosDescriptors.fileDescriptorSet]
    ) { [bus] }
  }
}
