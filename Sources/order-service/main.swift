import ArgumentParser
import GRPCCore
import Logging
import MeshServiceKit
import OrderService
import ServiceLifecycle
import ShopProtos
import ShopSupport
import Tracing

/// `order-service`: hosts `shop.v1.OrderService` over a SQLite database, and with `--sidecar`
/// keeps a customer record per user from the `user.created` events it consumes (group
/// `orders`) from the `events` service through the sidecar.
@main
struct OrderServiceCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "order-service", abstract: "Serve shop.v1.OrderService over gRPC (h2c).")

  @OptionGroup var options: ServiceOptions

  @Option(help: "SQLite database file; created if missing.")
  var db = ".trellis/orders/orders.sqlite"

  @Option(
    help:
      "The sidecar's outbound listener, HOST:PORT: user.created events are consumed from the events service through it."
  )
  var sidecar: String?

  func run() async throws {
    let orders = try OrderService(databasePath: db)
    var others: [any Service] = []
    if let sidecar {
      let clients = try SidecarClients(option: sidecar)
      others.append(clients)
      others.append(
        EventConsumer(
          topic: "user.created", group: "orders", logger: Logger(label: "order-service"),
          subscribe: { request, each in
            try await Shop_V1_EventService.Client(wrapping: try clients.client(for: "events"))
              .subscribe(request) { response in
                for try await delivery in response.messages { try await each(delivery) }
              }
          },
          acknowledge: { request in
            _ = try await Shop_V1_EventService.Client(wrapping: try clients.client(for: "events"))
              .ack(request)
          },
          handle: { event in
            // Under the trace of the call that published the event.
            try await withSpan(
              "\(event.topic) process", context: .carried(by: event.headers), ofKind: .consumer
            ) { span in
              span.attributes["messaging.destination.name"] = event.topic
              span.attributes["messaging.message.id"] = event.id
              try await orders.handleUserCreated(event)
            }
          }))
    }
    try await options.serve(
      name: "order-service", defaultListen: "127.0.0.1:50052",
      descriptorSets: [ShopProtosDescriptors.fileDescriptorSet], others: others
    ) { [orders] }
  }
}
