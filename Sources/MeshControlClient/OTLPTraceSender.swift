import GRPCCore
import GRPCNIOTransportHTTP2
import MeshConfig
import MeshProtos
import MeshServiceKit

/// Sends span batches over OTLP/gRPC: to the control plane's collector over the sidecar's
/// connection to its replica (mutual TLS, the sidecar's own identity), or to a plaintext
/// collector over one connection of its own, kept.
public actor OTLPTraceSender {
  public enum Destination: Sendable {
    /// The collector of the control plane replica the sidecar uses now.
    case controlPlane(ControlPlaneConnection)
    case plaintext(Address)
  }

  private let destination: Destination
  private var plaintext: GRPCClient<HTTP2ClientTransport.Posix>?

  public init(_ destination: Destination) {
    self.destination = destination
  }

  /// Where the spans go, in words.
  public nonisolated var description: String {
    switch destination {
    case .controlPlane(let connection): "\(connection)"
    case .plaintext(let address): "\(address)"
    }
  }

  /// Sends one `ExportTraceServiceRequest`'s bytes, as `OTLPEncoder` wrote them.
  public func send(_ request: [UInt8]) async throws {
    let client = try current()
    var options = CallOptions.defaults
    options.timeout = .seconds(5)
    try await client.unary(
      request: ClientRequest(message: request), descriptor: Self.export,
      serializer: RawSerializer(), deserializer: RawDeserializer(), options: options
    ) { response in _ = try response.message }
  }

  private static let export = MethodDescriptor(
    fullyQualifiedService: "opentelemetry.proto.collector.trace.v1.TraceService",
    method: "Export")

  public func close() {
    plaintext?.beginGracefulShutdown()
    plaintext = nil
  }

  private func current() throws -> GRPCClient<HTTP2ClientTransport.Posix> {
    switch destination {
    case .controlPlane(let connection):
      return try connection.client()
    case .plaintext(let address):
      if let plaintext { return plaintext }
      let client = GRPCClient(
        transport: try HTTP2ClientTransport.Posix(
          target: address.target, transportSecurity: .plaintext))
      Task { try? await client.runConnections() }
      plaintext = client
      return client
    }
  }
}
