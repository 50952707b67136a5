import ArgumentParser
import MeshTranscoding

/// `rpc describe ADDRESS [SYMBOL]`: a service, method, message or enum as `.proto` source.
struct Describe: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Describe a service, method, message or enum (every service if none is named).")

  @Argument(help: "The server, HOST:PORT.") var address: String
  @Argument(help: "A fully qualified symbol: shop.v1.UserService, shop.v1.User, …")
  var symbol: String?
  @OptionGroup var connection: ConnectionOptions

  func run() async throws {
    try await connection.withClient(address) { client in
      var schema = try Schema(options: connection, client: client)
      let symbols: [String]
      if let symbol { symbols = [symbol] } else { symbols = try await schema.services() }
      for (i, symbol) in symbols.enumerated() {
        let name = symbol.hasPrefix(".") ? String(symbol.dropFirst()) : symbol
        guard let pool = try await schema.pool(containing: name),
          let (kind, text) = pool.describe(symbol: name)
        else { throw CLIFailure.other("symbol \(name) not found") }
        if i > 0 { print() }
        print(
          "\(name) is \(kind == .enumeration || kind == .enumValue ? "an" : "a") \(kind.rawValue):")
        print(text)
      }
    }
  }
}
