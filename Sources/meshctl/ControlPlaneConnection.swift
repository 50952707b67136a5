import ArgumentParser
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import MeshControlClient
import MeshIdentity
import MeshProtos
import MeshServiceKit

/// How `meshctl` reaches the control plane: mutual TLS with the operator identity that
/// `meshctl certs init` wrote, and the control plane checked against the mesh's bundle.
struct ControlPlaneOptions: ParsableArguments {
  @Option(
    name: .customLong("control-plane"),
    help:
      """
      The control plane's API, HOST:PORT. (default: the one `meshctl up` started here, else \
      127.0.0.1:15000)
      """
  )
  var explicitAddress: String?

  var address: String {
    explicitAddress ?? ShopRun.load().map { "127.0.0.1:\($0.ports.controlPlane)" }
      ?? "127.0.0.1:15000"
  }
  @Option(help: "Folder holding the operator identity and the trust bundle.") var certs = "certs"

  /// Runs `body` with an admin client; RPC failures become one line naming the status.
  func withAdmin<Result: Sendable>(
    _ body:
      @Sendable (Trellis_Mesh_V1_Admin.Client<HTTP2ClientTransport.Posix>) async throws ->
      Result
  ) async throws -> Result {
    try await withClient { try await body(Trellis_Mesh_V1_Admin.Client(wrapping: $0)) }
  }

  /// Runs `body` with a client connected as the operator; RPC failures become one line naming
  /// the status. Every call reads the identity and the bundle afresh.
  func withClient<Result: Sendable>(
    _ body: @Sendable (GRPCClient<HTTP2ClientTransport.Posix>) async throws -> Result
  ) async throws -> Result {
    let files = CAFiles(dir: certs)
    for path in [files.operatorCertificate, files.operatorKey, files.bundle]
    where !FileManager.default.fileExists(atPath: path) {
      throw MeshctlFailure("cannot read \(path): run meshctl certs init, or pass --certs")
    }
    let target: HostPort
    do {
      target = try HostPort(parsing: address)
    } catch {
      throw ValidationError("--control-plane: \(error)")
    }
    let transport: HTTP2ClientTransport.Posix
    do {
      transport = try HTTP2ClientTransport.Posix(
        target: .ipv4(address: target.host, port: target.port),
        transportSecurity: .meshIdentity(
          certificate: files.operatorCertificate, key: files.operatorKey, bundle: files.bundle))
    } catch {
      throw MeshctlFailure("cannot set up a connection to \(address): \(error)")
    }
    do {
      return try await withGRPCClient(transport: transport) { try await body($0) }
    } catch let error as RPCError {
      if error.code == .unavailable {
        throw MeshctlFailure("cannot reach the control plane at \(address): \(error.message)")
      }
      throw MeshctlFailure("\(error.code.canonicalName): \(error.message)")
    }
  }
}
