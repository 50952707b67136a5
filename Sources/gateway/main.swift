import APIGateway
import ArgumentParser
import Foundation
import GRPCCore
import Hummingbird
import HummingbirdHTTP2
import Logging
import MeshServiceKit
import MeshTranscoding
import NIOCore
import ServiceLifecycle
import ShopProtos

/// `gateway`: the shop's HTTP/JSON API, transcoded to the services' gRPC methods from their
/// `google.api.http` annotations, through the gateway's sidecar (or, without a mesh, straight
/// to each service).
@main
struct GatewayCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "gateway",
    abstract: "Serve the shop's HTTP/JSON API, transcoded to gRPC.",
    usage: "gateway [<options>]",
    discussion: """
      Routes come from the google.api.http annotations of shop.v1's services. Each service is \
      called by its mesh name (users, orders, payments) through --sidecar, or at the address \
      --upstream gives it.
      """)

  @Option(help: "HTTP/1.1 address, HOST:PORT. Port 0 picks a free port.")
  var listen = "127.0.0.1:8080"

  @Option(help: "Also serve HTTP/2 without TLS (prior knowledge, h2c) on HOST:PORT.")
  var h2cListen: String?

  @Option(
    help:
      "gRPC health on HOST:PORT (h2c), for the gateway's sidecar to probe. Default: none.")
  var healthListen: String?

  @Option(help: "The sidecar's outbound listener, HOST:PORT: services are called through it.")
  var sidecar: String?

  @Option(
    name: .customLong("upstream"),
    help: "Without a sidecar: NAME=HOST:PORT, where service NAME (users, orders, payments) listens."
  )
  var upstreams: [String] = []

  @Option(
    help:
      "A file of API keys, one per line (# starts a comment). Without it, no key is asked for.")
  var apiKeysFile: String?

  @Option(help: "The largest request body accepted, in bytes.")
  var maxBodyBytes = 1 << 20

  @Option(help: "An origin CORS allows (repeat for several; * for any). Default: none.")
  var corsOrigin: [String] = []

  @Option(help: "Seconds each call to a service may take.")
  var timeout: Double = 15

  @Option(help: "The share (0 to 1) of requests arriving without a trace whose trace is sampled.")
  var traceSampling = 1.0

  @Option(help: "Log level: trace, debug, info, notice, warning, error or critical.")
  var logLevel = "info"

  @Option(
    help:
      """
      If the listen addresses are in use, wait up to this many seconds for them to be free, then \
      take them at once (how `meshctl restart gateway` hands the port over).
      """
  )
  var bindWait: Double = 0

  /// The shop's services by gRPC name, and the mesh names they are called by.
  static let meshNames = [
    "shop.v1.UserService": "users", "shop.v1.OrderService": "orders",
    "shop.v1.PaymentService": "payments",
  ]

  func validate() throws {
    if sidecar != nil, !upstreams.isEmpty {
      throw ValidationError(
        "--upstream: services are reached through --sidecar; give one of the two")
    }
    if sidecar == nil, upstreams.isEmpty {
      throw ValidationError(
        "give --sidecar HOST:PORT, or --upstream NAME=HOST:PORT for each service")
    }
    guard maxBodyBytes > 0 else { throw ValidationError("--max-body-bytes: must be positive") }
    guard timeout > 0 else { throw ValidationError("--timeout: must be positive") }
    guard (0...1).contains(traceSampling) else {
      throw ValidationError("--trace-sampling: must be from 0 to 1")
    }
    guard bindWait >= 0 else { throw ValidationError("--bind-wait: must not be negative") }
  }

  func run() async throws {
    guard let level = Logger.Level(rawValue: logLevel) else {
      throw ValidationError("--log-level \(logLevel) is not a log level")
    }
    JSONLogHandler.bootstrap(level: level)
    let logger = Logger(label: "gateway")

    var settings = Gateway.Settings()
    settings.maxBodyBytes = maxBodyBytes
    settings.corsOrigins = corsOrigin
    settings.timeout = .milliseconds(Int64(timeout * 1000))
    settings.traceSampling = traceSampling
    if let apiKeysFile {
      settings.apiKeys = try Self.readKeys(apiKeysFile)
    } else {
      logger.warning("no --api-keys-file: the API takes requests without a key")
    }

    // Where each service is.
    var clientsByName: [String: SidecarClients] = [:]
    var services: [any Service] = []
    if let sidecar {
      let clients = try SidecarClients(option: sidecar)
      services.append(clients)
      for name in Self.meshNames.values { clientsByName[name] = clients }
    } else {
      for upstream in upstreams {
        let parts = upstream.split(separator: "=", maxSplits: 1).map(String.init)
        guard parts.count == 2, Self.meshNames.values.contains(parts[0]) else {
          throw ValidationError(
            """
            --upstream \(upstream): expected NAME=HOST:PORT with NAME one of users, orders, \
            payments
            """
          )
        }
        let address: HostPort
        do {
          address = try HostPort(parsing: parts[1])
        } catch {
          throw ValidationError("--upstream \(upstream): \(error)")
        }
        let clients = SidecarClients(sidecar: address)
        services.append(clients)
        clientsByName[parts[0]] = clients
      }
    }
    let byService = Self.meshNames.compactMapValues { name in clientsByName[name].map { (name, $0) }
    }

    let pool = try DescriptorPool(fileDescriptorSet: ShopProtosDescriptors.fileDescriptorSet)
    let routes = try RouteTable(pool: pool, services: Array(byService.keys).sorted())
    let timeout = settings.timeout
    let gateway = Gateway(
      routes: routes, transcoder: Transcoder(pool: pool), settings: settings, logger: logger
    ) { route, request, metadata in
      guard let (name, clients) = byService[route.service] else {
        throw RPCError(code: .unavailable, message: "no upstream for \(route.service)")
      }
      return try await Gateway.unary(
        try clients.client(for: name), route: route, request: request, metadata: metadata,
        timeout: timeout)
    }

    let address = try Self.address(listen, "--listen")
    let router = gateway.router()
    let http1 = Application(
      router: router,
      configuration: .init(address: .hostname(address.host, port: address.port), serverName: nil),
      onServerRunning: { channel in
        logger.info(
          "listening",
          metadata: [
            "address": "\(channel.localAddress.map(Self.describe) ?? "?")", "protocol": "http/1.1",
            "routes": "\(routes.routes.count)",
          ])
      }, logger: logger)
    services.append(http1)
    if let h2cListen {
      let h2c = try Self.address(h2cListen, "--h2c-listen")
      services.append(
        Application(
          router: router, server: .plaintextHTTP2(),
          configuration: .init(address: .hostname(h2c.host, port: h2c.port)),
          onServerRunning: { channel in
            // Its own message: "listening" names the main (HTTP/1.1) address.
            logger.info(
              "listening for h2c",
              metadata: ["address": "\(channel.localAddress.map(Self.describe) ?? "?")"])
          }, logger: logger))
    }
    if let exporter = try AppTracing.bootstrap(service: "gateway", logger: logger) {
      services.append(exporter)
    }
    if let healthListen {
      let health = try ServiceHost(
        .init(
          listen: try Self.address(healthListen, "--health-listen"), services: [],
          descriptorSets: []),
        logger: logger)
      services.append(health)
    }
    let group = ServiceGroup(
      services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
    do {
      if bindWait > 0 {
        // Everything else is ready first, so the port changes hands the moment the old
        // gateway closes it.
        let limit = Duration.milliseconds(Int64(bindWait * 1000))
        try await address.waitUntilFree(for: limit, logger: logger)
        if let h2cListen {
          try await Self.address(h2cListen, "--h2c-listen").waitUntilFree(
            for: limit, logger: logger)
        }
      }
      try await group.run()
    } catch {
      StandardError.write("gateway: \(error)\n")
      throw ExitCode.failure
    }
  }

  static func address(_ text: String, _ option: String) throws -> HostPort {
    do {
      return try HostPort(parsing: text)
    } catch {
      throw ValidationError("\(option): \(error)")
    }
  }

  static func describe(_ address: SocketAddress) -> String {
    switch address {
    case .v6: "[\(address.ipAddress ?? "?")]:\(address.port ?? 0)"
    default: "\(address.ipAddress ?? "?"):\(address.port ?? 0)"
    }
  }

  static func readKeys(_ path: String) throws -> [String] {
    let text: String
    do {
      text = try String(contentsOfFile: path, encoding: .utf8)
    } catch {
      throw ValidationError(
        "--api-keys-file \(path): cannot be read (\(error.localizedDescription))")
    }
    let keys = text.split(whereSeparator: \.isNewline).compactMap { line -> String? in
      let key = line.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false)[0]
        .trimmingCharacters(in: .whitespaces)
      return key.isEmpty ? nil : key
    }
    guard !keys.isEmpty else {
      throw ValidationError("--api-keys-file \(path): holds no key")
    }
    return keys
  }
}
