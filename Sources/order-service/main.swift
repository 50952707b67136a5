import ArgumentParser
import GRPCCore
import Logging
import MeshServiceKit
import OrderService
import ServiceLifecycle
import ShopProtos
import ShopSupport
import Tracing

/// `order-service`: hosts `shop.v1.OrderService` over its database (a SQLite file, or
/// PostgreSQL with `--db postgres://…`, which instances on several hosts share). With
/// `--sidecar` it charges each order through payments (the order saga) and keeps a customer
/// record per user from the `user.created` events it consumes (group `orders`) from the
/// `events` service, all through the sidecar.
@main
struct OrderServiceCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "order-service", abstract: "Serve shop.v1.OrderService over gRPC (h2c).",
    usage: "order-service [<options>]")

  @OptionGroup var options: ServiceOptions

  @Option(
    help: """
      The database: a SQLite file (created if missing), or \
      postgres://USER@HOST:PORT/DB?password_file=FILE.
      """)
  var db = ".trellis/orders/orders.sqlite"

  @Option(
    help:
      """
      The sidecar's outbound listener, HOST:PORT: user.created events are consumed from the events \
      service through it.
      """
  )
  var sidecar: String?

  @Option(
    help:
      """
      Without a sidecar: payments' address, HOST:PORT (h2c), for the order saga. Without either, \
      orders stay PENDING.
      """
  )
  var payments: String?

  @Option(help: "A pending order whose charge has not completed in this many seconds is cancelled.")
  var sagaTimeout: Double = 30

  func validate() throws {
    guard sagaTimeout > 0 else { throw ValidationError("--saga-timeout: must be positive") }
    do {
      _ = try ShopDatabaseLocation(db)
    } catch {
      throw ValidationError("\(error)")
    }
    if sidecar != nil, payments != nil {
      throw ValidationError(
        "--payments: payments is reached through the sidecar; give one of the two")
    }
  }

  func run() async throws {
    var others: [any Service] = []
    var paymentsClient: PaymentsClient?
    let sidecarClients = try sidecar.map { try SidecarClients(option: $0) }
    if let sidecarClients {
      others.append(sidecarClients)
      paymentsClient = PaymentsClient(
        Shop_V1_PaymentService.Client(wrapping: try sidecarClients.client(for: "payments")),
        timeout: .seconds(3))
    } else if let payments {
      let direct: SidecarClients
      do {
        direct = SidecarClients(sidecar: try HostPort(parsing: payments))
      } catch {
        throw ValidationError("--payments: \(error)")
      }
      others.append(direct)
      paymentsClient = PaymentsClient(
        Shop_V1_PaymentService.Client(wrapping: try direct.client(for: "payments")),
        timeout: .seconds(3))
    }
    var settings = OrderSaga.Settings()
    settings.timeout = .milliseconds(Int64(sagaTimeout * 1000))
    let orders = try await OrderService.open(
      try ShopDatabaseLocation(db), payments: paymentsClient, saga: settings,
      tracing: SagaTracing(
        capture: { ServiceContext.current?.traceHeaders ?? [:] },
        resume: { name, headers, step in
          try await withSpan(name, context: .carried(by: headers), ofKind: .internal) { _ in
            try await step()
          }
        }))
    if let worker = orders.sagaWorker { others.append(worker) }
    if let clients = sidecarClients {
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
            var options = CallOptions.defaults
            options.timeout = .seconds(10)
            _ = try await Shop_V1_EventService.Client(wrapping: try clients.client(for: "events"))
              .ack(request, options: options)
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
