import ArgumentParser
import GRPCCore
import GRPCNIOTransportHTTP2
import ServiceLifecycle
import Synchronization

/// Clients for the services an app calls, all through its sidecar's outbound listener (h2c):
/// one connection per service, named by `:authority`, which is how the sidecar routes. Every
/// call carries the trace context of the task that makes it (`TracePropagation`).
///
/// A `Service`: run it beside the app; it closes the connections at shutdown.
public final class SidecarClients: Service, Sendable {
  public let sidecar: HostPort
  private let clients = Mutex<[String: GRPCClient<HTTP2ClientTransport.Posix>]>([:])
  private let closed = Mutex(false)

  public init(sidecar: HostPort) {
    self.sidecar = sidecar
  }

  /// Clients through the sidecar an executable's `--sidecar HOST:PORT` names.
  public convenience init(option address: String) throws {
    do {
      self.init(sidecar: try HostPort(parsing: address))
    } catch {
      throw ValidationError("--sidecar: \(error)")
    }
  }

  /// The client for `service`, connected on first use.
  public func client(for service: String) throws -> GRPCClient<HTTP2ClientTransport.Posix> {
    try clients.withLock { clients in
      if let client = clients[service] { return client }
      guard !closed.withLock({ $0 }) else {
        throw RPCError(code: .unavailable, message: "the app is shutting down")
      }
      let transport = try HTTP2ClientTransport.Posix(
        target: sidecar.isIPv6
          ? .ipv6(address: sidecar.host, port: sidecar.port)
          : .ipv4(address: sidecar.host, port: sidecar.port),
        transportSecurity: .plaintext,
        config: .defaults { $0.http2.authority = service })
      let client = GRPCClient(transport: transport, interceptors: [TracePropagation()])
      Task { try? await client.runConnections() }
      clients[service] = client
      return client
    }
  }

  public func run() async throws {
    try? await gracefulShutdown()
    closed.withLock { $0 = true }
    for client in clients.withLock({ Array($0.values) }) { client.beginGracefulShutdown() }
  }
}
