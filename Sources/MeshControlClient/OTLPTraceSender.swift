import GRPCCore
import GRPCNIOTransportHTTP2
import MeshConfig
import MeshProtos
import MeshServiceKit

#if canImport(FoundationEssentials)
  import FoundationEssentials
#else
  import Foundation
#endif

/// Sends span batches over OTLP/gRPC: to the control plane's collector with the sidecar's own
/// identity (mutual TLS), or to a plaintext collector. One connection, kept; with mutual TLS
/// it is made afresh once the certificate files change (a renewal), since a connection's TLS
/// configuration is read when it is made.
public actor OTLPTraceSender {
  public enum Destination: Sendable {
    /// The collector of the control plane replica the sidecar uses now.
    case controlPlane(ControlPlaneReplicas, CertificateKeeper.Files)
    case plaintext(Address)
  }

  private let destination: Destination
  private var client: GRPCClient<HTTP2ClientTransport.Posix>?
  private var runner: Task<Void, Never>?
  private var certificateSignature: [String]?

  public init(_ destination: Destination) {
    self.destination = destination
  }

  /// Where the spans go, in words.
  public nonisolated var description: String {
    switch destination {
    case .controlPlane(let replicas, _): "the control plane at \(replicas)"
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
    client?.beginGracefulShutdown()
    client = nil
  }

  private func current() throws -> GRPCClient<HTTP2ClientTransport.Posix> {
    let signature = self.signature()
    if let client, signature == certificateSignature { return client }
    client?.beginGracefulShutdown()
    let transport: HTTP2ClientTransport.Posix
    switch destination {
    case .controlPlane(let replicas, let files):
      transport = try HTTP2ClientTransport.Posix(
        target: replicas.current.target,
        transportSecurity: .meshIdentity(
          certificate: files.certificate, key: files.privateKey, bundle: files.bundle))
    case .plaintext(let address):
      transport = try HTTP2ClientTransport.Posix(
        target: address.target, transportSecurity: .plaintext)
    }
    let client = GRPCClient(transport: transport)
    runner = Task { try? await client.runConnections() }
    self.client = client
    certificateSignature = signature
    return client
  }

  /// What the connection depends on: the certificate files, and the replica in use.
  private func signature() -> [String]? {
    guard case .controlPlane(let replicas, let files) = destination else { return nil }
    return ["\(replicas.current)"]
      + [files.certificate, files.privateKey, files.bundle].map { path in
        guard let attributes = try? FileManager.default.attributesOfItem(atPath: path) else {
          return "missing"
        }
        let modified = (attributes[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0
        return "\(modified)/\(attributes[.size] ?? 0)"
      }
  }
}
