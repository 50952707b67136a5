import ArgumentParser
import Logging
import MeshServiceKit
import PaymentService
import ShopProtos
import ShopSupport

/// `payment-service`: hosts `shop.v1.PaymentService` over its database (a SQLite file, or
/// PostgreSQL with `--db postgres://…`).
@main
struct PaymentServiceCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "payment-service", abstract: "Serve shop.v1.PaymentService over gRPC (h2c).",
    usage: "payment-service [<options>]")

  @OptionGroup var options: ServiceOptions

  @Option(
    help: """
      The database: a SQLite file (created if missing), or \
      postgres://USER@HOST:PORT/DB?password_file=FILE.
      """)
  var db = ".trellis/payments/payments.sqlite"

  @Option(help: "Decline charges above this many minor units (1000000 is 10,000.00 USD).")
  var chargeLimit: Int64 = 1_000_000

  func validate() throws {
    guard chargeLimit > 0 else { throw ValidationError("--charge-limit must be positive") }
    do {
      _ = try ShopDatabaseLocation(db)
    } catch {
      throw ValidationError("\(error)")
    }
  }

  func run() async throws {
    let payments = try await PaymentService.open(
      try ShopDatabaseLocation(db), chargeLimitMinorUnits: chargeLimit,
      logger: Logger(label: "payment-service"))
    try await options.serve(
      name: "payment-service", defaultListen: "127.0.0.1:50053",
      descriptorSets: [ShopProtosDescriptors.fileDescriptorSet]
    ) { [payments] }
  }
}
