import ArgumentParser
import EventService
import Logging
import MeshConfig
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

  @Option(
    help: """
      How long an event is kept after it is published (7d; 12h, 30m…), or \
      "forever". One a group has not acknowledged stays until it is.
      """)
  var retention = "7d"

  /// `--retention` as a duration (nil: for ever).
  var retentionDuration: Duration? {
    get throws {
      if retention == "forever" { return nil }
      guard let duration = parseDuration(retention) else {
        throw ValidationError(
          "--retention \(retention): give a duration such as 7d, 12h or 30m, or forever")
      }
      return duration
    }
  }

  func validate() throws {
    do {
      _ = try ShopDatabaseLocation(db)
    } catch {
      throw ValidationError("\(error)")
    }
    _ = try retentionDuration
  }

  func run() async throws {
    let bus = try await EventService.open(
      try ShopDatabaseLocation(db), retention: try retentionDuration,
      logger: Logger(label: "event-service"))
    try await options.serve(
      name: "event-service", defaultListen: "127.0.0.1:50054",
      descriptorSets: [ShopProtosDescriptors.fileDescriptorSet]
    ) { [bus] }
  }
}
