import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import MeshIdentity
import MeshProtos
import Synchronization

/// The sidecars subscribed to config, and what each said last. A new version is published to
/// every open stream at once.
public final class ConfigHub: Sendable {
  private struct Subscriber {
    var node: String
    var continuation: AsyncStream<Trellis_Mesh_V1_ConfigSnapshot>.Continuation
  }

  private struct State {
    var subscribers: [UUID: Subscriber] = [:]
    var statuses: [String: Trellis_Mesh_V1_SidecarStatus] = [:]
    var nonce = 0
  }

  private let state = Mutex(State())

  public init() {}

  /// A snapshot of `version` with a fresh nonce.
  func snapshot(version: Int64, yaml: String) -> Trellis_Mesh_V1_ConfigSnapshot {
    var snapshot = Trellis_Mesh_V1_ConfigSnapshot()
    snapshot.version = version
    snapshot.yaml = yaml
    snapshot.nonce = state.withLock {
      $0.nonce += 1
      return "\(version)-\($0.nonce)"
    }
    return snapshot
  }

  /// Sends `version` to every subscriber.
  func publish(version: Int64, yaml: String) {
    let subscribers = state.withLock { Array($0.subscribers.values) }
    for subscriber in subscribers {
      subscriber.continuation.yield(snapshot(version: version, yaml: yaml))
    }
  }

  func subscribe(
    id: UUID, node: String, identity: String, version: Int64, certificateNotAfter: Date?
  ) -> AsyncStream<Trellis_Mesh_V1_ConfigSnapshot> {
    let (stream, continuation) = AsyncStream.makeStream(
      of: Trellis_Mesh_V1_ConfigSnapshot.self, bufferingPolicy: .bufferingNewest(1))
    state.withLock {
      $0.subscribers[id] = Subscriber(node: node, continuation: continuation)
      var status = $0.statuses[node] ?? Trellis_Mesh_V1_SidecarStatus()
      status.node = node
      status.spiffeID = identity
      status.version = version
      status.connected = true
      status.lastSeenUnix = Int64(Date().timeIntervalSince1970)
      status.certificateNotAfterUnix = Int64(certificateNotAfter?.timeIntervalSince1970 ?? 0)
      $0.statuses[node] = status
    }
    return stream
  }

  func unsubscribe(id: UUID) {
    state.withLock {
      guard let subscriber = $0.subscribers.removeValue(forKey: id) else { return }
      subscriber.continuation.finish()
      // Another stream of the same node may have replaced this one.
      if !$0.subscribers.values.contains(where: { $0.node == subscriber.node }) {
        $0.statuses[subscriber.node]?.connected = false
      }
    }
  }

  /// An ACK (no error) or a NACK from `node`.
  func answered(node: String, version: Int64, error: String, snapshotVersion: Int64?) {
    state.withLock {
      guard var status = $0.statuses[node] else { return }
      status.lastSeenUnix = Int64(Date().timeIntervalSince1970)
      if error.isEmpty {
        status.version = version
      } else {
        status.lastNackVersion = snapshotVersion ?? 0
        status.lastNackError = error
      }
      $0.statuses[node] = status
    }
  }

  public var statuses: [Trellis_Mesh_V1_SidecarStatus] {
    state.withLock { $0.statuses.values.sorted { $0.node < $1.node } }
  }
}

/// `trellis.mesh.v1.Config`: the config stream, for workloads over mutual TLS.
public struct ConfigService: Trellis_Mesh_V1_Config.ServiceProtocol {
  let control: ControlContext

  public init(_ control: ControlContext) { self.control = control }

  public func subscribe(
    request: StreamingServerRequest<Trellis_Mesh_V1_SubscribeRequest>, context: ServerContext
  ) async throws -> StreamingServerResponse<Trellis_Mesh_V1_ConfigSnapshot> {
    guard let caller = ControlContext.caller(context) else {
      throw RPCError(code: .unauthenticated, message: "subscribing needs a workload certificate")
    }
    let notAfter = (context.transportSpecific as? HTTP2ServerTransport.Posix.Context)?
      .peerCertificate?.notValidAfter
    let hub = control.hub
    let store = control.store
    return StreamingServerResponse { writer in
      let id = UUID()
      var node = ""
      // Nonces sent and the version each carried, to read NACKs by.
      let sent = SentNonces()
      try await withThrowingTaskGroup(of: Void.self) { group in
        var messages = request.messages.makeAsyncIterator()
        guard let first = try await messages.next() else { return }
        node = first.node.isEmpty ? caller.description : first.node
        let snapshots = hub.subscribe(
          id: id, node: node, identity: caller.description, version: first.version,
          certificateNotAfter: notAfter)
        defer { hub.unsubscribe(id: id) }
        // What is running now, unless the sidecar runs it already.
        if let current = try store.currentConfig(), current.version != first.version {
          let snapshot = hub.snapshot(version: current.version, yaml: current.yaml)
          sent.withLock { $0[snapshot.nonce] = snapshot.version }
          try await writer.write(snapshot)
        }
        group.addTask {
          for await snapshot in snapshots {
            sent.withLock { $0[snapshot.nonce] = snapshot.version }
            try await writer.write(snapshot)
          }
        }
        while let message = try await messages.next() {
          let version = sent.withLock { $0.removeValue(forKey: message.responseNonce) }
          hub.answered(
            node: node, version: message.version, error: message.errorDetail,
            snapshotVersion: version)
        }
        group.cancelAll()
      }
      return [:]
    }
  }
}

/// The nonces sent on one stream and the version each carried.
private final class SentNonces: Sendable {
  private let nonces = Mutex<[String: Int64]>([:])
  func withLock<T>(_ body: (inout [String: Int64]) -> T) -> T { nonces.withLock { body(&$0) } }
}
