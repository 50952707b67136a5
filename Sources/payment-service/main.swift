import ArgumentParser
import MeshServiceKit
import PaymentService
import ShopProtos

/// `payment-service`: hosts `shop.v1.PaymentService` over a SQLite database.
@main
struct PaymentServiceCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "payment-service", abstract: "Serve shop.v1.PaymentService over gRPC (h2c).",
    usage: "payment-service [<options>]")

  @OptionGroup var options: ServiceOptions

  @Option(help: "SQLite database file; created if missing.")
  var db = ".trellis/payments/payments.sqlite"

  @Option(help: "Decline charges above this many minor units (1000000 is 10,000.00 USD).")
  var chargeLimit: Int64 = 1_000_000

  func validate() throws {
    guard chargeLimit > 0 else { throw ValidationError("--charge-limit must be positive") }
  }

  func run() async throws {
    try await options.serve(
      name: "payment-service", defaultListen: "127.0.0.1:50053",
      descriptorSets: [ShopProtosDescriptors.fileDescriptorSet]
    ) { [try PaymentService(databasePath: db, chargeLimitMinorUnits: chargeLimit)] }
  }
}
