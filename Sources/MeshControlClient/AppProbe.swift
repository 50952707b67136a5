import GRPCCore
import GRPCNIOTransportHTTP2
import MeshConfig
import MeshProtos
import MeshServiceKit
import SwiftProtobuf

/// What a sidecar asks its app before registering it: whether it reports SERVING on
/// `grpc.health.v1` (the whole server, service ""), and which methods it serves with the
/// idempotency its descriptors declare (read by server reflection).
struct AppProbe {
  let client: GRPCClient<HTTP2ClientTransport.Posix>

  /// Runs `body` with a probe of the app at `app` (h2c, loopback).
  static func with<Result: Sendable>(
    app: Address, _ body: (AppProbe) async throws -> Result
  ) async throws -> Result {
    let transport = try HTTP2ClientTransport.Posix(
      target: .ipv4(address: app.host, port: app.port), transportSecurity: .plaintext)
    return try await withGRPCClient(transport: transport) { try await body(AppProbe(client: $0)) }
  }

  /// What the app said when asked for its health.
  enum Health: Equatable {
    /// It answered SERVING.
    case serving
    /// It answered, and not SERVING (NOT_SERVING while it drains, or UNKNOWN).
    case notServing
    /// It did not answer within a second (or its connection failed), for the reason given.
    case unanswered(String)
  }

  /// Asks the app for the health of the whole server, waiting up to a second.
  func health() async -> Health {
    var options = CallOptions.defaults
    options.timeout = .seconds(1)
    let client = Grpc_Health_V1_Health.Client(wrapping: client)
    do {
      let status = try await client.check(Grpc_Health_V1_HealthCheckRequest(), options: options) {
        try $0.message.status
      }
      return status == .serving ? .serving : .notServing
    } catch let error as RPCError {
      return .unanswered("\(error.code): \(error.message)")
    } catch {
      return .unanswered("\(error)")
    }
  }

  /// Every method of every service the app lists (health and reflection excepted), with its
  /// `idempotency_level`.
  func methods() async throws -> [Trellis_Mesh_V1_MethodInfo] {
    var options = CallOptions.defaults
    options.timeout = .seconds(5)
    var reflection = ReflectionClient(client: client, options: options)
    var methods: [Trellis_Mesh_V1_MethodInfo] = []
    for service in try await reflection.listServices()
    where !service.hasPrefix("grpc.reflection.") && service != "grpc.health.v1.Health" {
      guard let files = try await reflection.files(containing: service) else { continue }
      for file in files {
        let prefix = file.package.isEmpty ? "" : "\(file.package)."
        for declared in file.service where prefix + declared.name == service {
          for method in declared.method {
            var info = Trellis_Mesh_V1_MethodInfo()
            info.name = "\(service)/\(method.name)"
            info.idempotencyLevel = Int32(method.options.idempotencyLevel.rawValue)
            info.serverStreaming = method.serverStreaming
            methods.append(info)
          }
        }
      }
    }
    return methods.sorted { $0.name < $1.name }
  }
}
