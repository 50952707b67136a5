import ArgumentParser
import GRPCCore
import Logging
import MeshServiceKit
import ServiceLifecycle
import ShopProtos
import ShopSupport
import Tracing
import UserService

/// `user-service`: hosts `shop.v1.UserService` over its database (a SQLite file, or PostgreSQL
/// with `--db postgres://…`), and with `--sidecar`
/// publishes its outbox (`user.created`) to the `events` service through the sidecar.
@main
struct UserServiceCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "user-service", abstract: "Serve shop.v1.UserService over gRPC (h2c).",
    usage: "user-service [<options>]")

  @OptionGroup var options: ServiceOptions

  @Option(
    help: """
      The database: a SQLite file (created if missing), or \
      postgres://USER@HOST:PORT/DB?password_file=FILE.
      """)
  var db = ".trellis/users/users.sqlite"

  @Option(
    help:
      """
      The sidecar's outbound listener, HOST:PORT: the outbox is published to the events service \
      through it (without it, events wait in the outbox).
      """
  )
  var sidecar: String?

  func validate() throws {
    do {
      _ = try ShopDatabaseLocation(db)
    } catch {
      throw ValidationError("\(error)")
    }
  }

  func run() async throws {
    // An event carries the trace of the call that caused it.
    let users = try await UserService.open(
      try ShopDatabaseLocation(db), logger: Logger(label: "user-service"),
      eventHeaders: { ServiceContext.current?.traceHeaders ?? [:] })
    var others: [any Service] = []
    if let sidecar {
      let clients = try SidecarClients(option: sidecar)
      others.append(clients)
      others.append(
        OutboxRelay(outbox: users.outbox, logger: Logger(label: "user-service")) {
          event in
          var request = Shop_V1_PublishRequest()
          request.event = event
          // Bounded: a publication that never answers must not hold up the outbox for good.
          var options = CallOptions.defaults
          options.timeout = .seconds(10)
          // The publication joins the trace of the call that made the event.
          try await ServiceContext.withValue(.carried(by: event.headers)) { [options] in
            _ = try await Shop_V1_EventService.Client(wrapping: try clients.client(for: "events"))
              .publish(request, options: options)
          }
        })
    }
    try await options.serve(
      name: "user-service", defaultListen: "127.0.0.1:50051",
      descriptorSets: [ShopProtosDescriptors.fileDescriptorSet], others: others
    ) { [users] }
  }
}
