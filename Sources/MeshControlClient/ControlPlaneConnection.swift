import GRPCCore
import GRPCNIOTransportHTTP2
import MeshConfig
import MeshIdentity
import ServiceLifecycle
import Synchronization

#if canImport(FoundationEssentials)
  import FoundationEssentials
#else
  import Foundation
#endif

/// The one HTTP/2 connection a sidecar keeps to the control plane replica it uses: the config
/// stream, the telemetry stream and span exports all go over it, so a replica holds one
/// connection (one TLS session, one set of HTTP/2 windows) per sidecar, not one per job.
///
/// Only the calls the replica serves on its sidecar link (`Config/Subscribe`,
/// `Telemetry/Report`, OTLP `Export`) go over it; a renewal, which happens once in hours, makes
/// a connection of its own.
///
/// The connection follows the replica in use: once `ControlPlaneReplicas` moves to another, the
/// next call gets a client for it and the old one is shut down gracefully. It is made afresh
/// too when the certificate files change (a renewal, a new trust bundle), since a connection's
/// TLS configuration is read when it is made. The long streams (config, telemetry) ask
/// `isCurrent` each second and move when it says no, so the old connection closes once they
/// have.
public final class ControlPlaneConnection: Service, Sendable, CustomStringConvertible {
  public typealias Client = GRPCClient<HTTP2ClientTransport.Posix>

  /// The replicas it follows.
  public let replicas: ControlPlaneReplicas
  private let files: CertificateKeeper.Files

  private struct Current {
    var client: Client
    /// What it was made for: the replica, and the certificate files as they were.
    var signature: Signature
  }
  private struct State {
    var current: Current?
    var closed = false
  }
  private let state = Mutex(State())
  /// The certificate files' contents as last read, with their stamps: read again only once a
  /// stamp changed, so the checks each second (and each span export) cost three `stat`s.
  private let filesSeen = Mutex<(stamps: [String], contents: [Data?])?>(nil)

  public init(replicas: ControlPlaneReplicas, files: CertificateKeeper.Files) {
    self.replicas = replicas
    self.files = files
  }

  public var description: String { "the control plane at \(replicas)" }

  /// The client to the replica in use, made if there is none for it yet.
  public func client() throws -> Client {
    let address = replicas.current
    let signature = self.signature(address)
    let (client, made, retired) = try state.withLock {
      state -> (Client, Bool, Client?) in
      guard !state.closed else {
        throw RPCError(code: .unavailable, message: "the sidecar is shutting down")
      }
      if let current = state.current, current.signature == signature {
        return (current.client, false, nil)
      }
      let client = Client(transport: try transport(address))
      let retired = state.current?.client
      state.current = Current(client: client, signature: signature)
      return (client, true, retired)
    }
    retired?.beginGracefulShutdown()
    if made { Task { try? await client.runConnections() } }
    return client
  }

  /// Whether `client` is still the one new calls get (the replica and the certificate files
  /// are the same as when it was made).
  public func isCurrent(_ client: Client) -> Bool {
    let signature = self.signature(replicas.current)
    return state.withLock { state in
      state.current.map { $0.client === client && $0.signature == signature } ?? false
    }
  }

  /// `client` failed a call that should not have failed (the replica hung, or did not answer
  /// in time): the next call gets a new connection, even to the same replica.
  public func discard(_ client: Client) {
    let retired = state.withLock { state -> Client? in
      guard let current = state.current, current.client === client else { return nil }
      state.current = nil
      return current.client
    }
    retired?.beginGracefulShutdown()
  }

  /// Shuts the connection down gracefully (its calls in flight finish); no call is made after.
  public func close() {
    let retired = state.withLock { state -> Client? in
      state.closed = true
      defer { state.current = nil }
      return state.current?.client
    }
    retired?.beginGracefulShutdown()
  }

  /// Waits for the sidecar's shutdown, then closes the connection. Run first in the sidecar's
  /// service group, it is stopped last, after the jobs that use it.
  public func run() async throws {
    try? await gracefulShutdown()
    close()
  }

  private func transport(_ address: Address) throws -> HTTP2ClientTransport.Posix {
    try HTTP2ClientTransport.Posix(
      target: address.target,
      transportSecurity: .meshIdentity(
        certificate: files.certificate, key: files.privateKey, bundle: files.bundle),
      config: .defaults {
        // A replica that stops answering (hung, or its host gone) is found out by pings; the
        // jobs then move to another as one.
        $0.connection.keepalive = .init(
          time: .seconds(10), timeout: .seconds(5), allowWithoutCalls: true)
      })
  }

  /// What the connection depends on: the replica in use, and what the certificate files hold
  /// (a bundle written again as it was changes nothing).
  private func signature(_ address: Address) -> Signature {
    let paths = [files.certificate, files.privateKey, files.bundle]
    let stamps = paths.map(CertificateFiles.stamp)
    let known = filesSeen.withLock { seen in seen?.stamps == stamps ? seen?.contents : nil }
    let contents = known ?? paths.map { FileManager.default.contents(atPath: $0) }
    if known == nil { filesSeen.withLock { $0 = (stamps, contents) } }
    return Signature(replica: "\(address)", files: contents)
  }
}

extension ControlPlaneConnection {
  fileprivate struct Signature: Equatable {
    var replica: String
    var files: [Data?]
  }
}
