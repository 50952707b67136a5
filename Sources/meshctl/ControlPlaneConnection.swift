import ArgumentParser
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import MeshControlClient
import MeshDashboard
import MeshIdentity
import MeshProtos
import MeshServiceKit
import Synchronization

/// How `meshctl` reaches the control plane: mutual TLS with the operator identity that
/// `meshctl certs init` wrote, and the control plane checked against the mesh's bundle.
struct ControlPlaneOptions: ParsableArguments {
  @Option(
    name: .customLong("control-plane"),
    help:
      """
      The control plane's API, HOST:PORT, or its replicas' as HOST:PORT,HOST:PORT or as a name \
      with an address per replica (the first that answers is used). (default: the one `meshctl up` started here, else 127.0.0.1:15000)
      """
  )
  var explicitAddress: String?

  var address: String {
    explicitAddress ?? ShopRun.load()?.ports.controlPlaneList ?? "127.0.0.1:15000"
  }
  @Option(help: "Folder holding the operator identity and the trust bundle.") var certs = "certs"

  /// The addresses `--control-plane` names, each name as every address it resolves to.
  func addresses() throws -> [HostPort] {
    do {
      return try address.split(separator: ",").flatMap {
        try HostPort(parsing: String($0).filter { $0 != " " }).resolved
      }
    } catch {
      throw ValidationError("--control-plane: \(error)")
    }
  }

  /// Runs `body` with an admin client; RPC failures become one line naming the status.
  func withAdmin<Result: Sendable>(
    _ body:
      @Sendable (Trellis_Mesh_V1_Admin.Client<HTTP2ClientTransport.Posix>) async throws ->
      Result
  ) async throws -> Result {
    try await withClient { try await body(Trellis_Mesh_V1_Admin.Client(wrapping: $0)) }
  }

  /// Runs `body` with an admin client at `replica`, or at the first that answers when nil.
  func withAdmin<Result: Sendable>(
    at replica: Trellis_Mesh_V1_Replica?,
    _ body:
      @Sendable (Trellis_Mesh_V1_Admin.Client<HTTP2ClientTransport.Posix>) async throws ->
      Result
  ) async throws -> Result {
    guard let replica else { return try await withAdmin(body) }
    let target: HostPort
    do {
      target = try HostPort(parsing: replica.address)
    } catch {
      throw MeshctlFailure(
        "replica \(replica.name) lists an address that is not HOST:PORT: \(replica.address)")
    }
    do {
      return try await withClient(at: target) {
        try await body(Trellis_Mesh_V1_Admin.Client(wrapping: $0))
      }
    } catch let error as Unreachable {
      throw MeshctlFailure("replica \(replica.name): \(error.description)")
    }
  }

  /// The replicas serving the mesh, as the first that answers lists them; empty when there is
  /// only one control plane.
  func replicaList() async throws -> [Trellis_Mesh_V1_Replica] {
    let listed = try await withAdmin { try await $0.replicas(Trellis_Mesh_V1_ReplicasRequest()) }
    return listed.replicas.count > 1 ? listed.replicas : []
  }

  /// Waits until `replica` has taken in trust generation `generation` (or a later one) from
  /// the store.
  func waitForTrust(
    generation: Int64, at replica: Trellis_Mesh_V1_Replica, timeout seconds: Int64
  ) async throws {
    let deadline = ContinuousClock.now + .seconds(seconds)
    while true {
      let status = try await withAdmin(at: replica) {
        try await $0.status(Trellis_Mesh_V1_StatusRequest())
      }
      if status.trustGeneration >= generation { return }
      guard ContinuousClock.now < deadline else {
        throw MeshctlFailure(
          """
          replica \(replica.name) is at trust generation \(status.trustGeneration), not \
          \(generation), after \(seconds)s: is it following the store? (its log says)
          """
        )
      }
      try await Task.sleep(for: .milliseconds(200))
    }
  }

  /// Runs `body` with a client connected as the operator, at the first replica that can be
  /// reached; RPC failures become one line naming the status. Every call reads the identity
  /// and the bundle afresh.
  func withClient<Result: Sendable>(
    _ body: @Sendable (GRPCClient<HTTP2ClientTransport.Posix>) async throws -> Result
  ) async throws -> Result {
    let targets = try addresses()
    for (index, target) in targets.enumerated() {
      do {
        return try await withClient(at: target, body)
      } catch let error as Unreachable where index < targets.count - 1 {
        _ = error  // the next replica
      }
    }
    throw MeshctlFailure("no control plane answered at \(address)")
  }

  /// A control plane that could not be reached.
  struct Unreachable: Error, CustomStringConvertible {
    var description: String
  }

  /// Runs `body` at the control plane at `target`.
  func withClient<Result: Sendable>(
    at target: HostPort,
    _ body: @Sendable (GRPCClient<HTTP2ClientTransport.Posix>) async throws -> Result
  ) async throws -> Result {
    let files = CAFiles(dir: certs)
    for path in [files.operatorCertificate, files.operatorKey, files.bundle]
    where !FileManager.default.fileExists(atPath: path) {
      throw MeshctlFailure("cannot read \(path): run meshctl certs init, or pass --certs")
    }
    let transport: HTTP2ClientTransport.Posix
    do {
      transport = try HTTP2ClientTransport.Posix(
        target: target.target,
        transportSecurity: .meshIdentity(
          certificate: files.operatorCertificate, key: files.operatorKey, bundle: files.bundle))
    } catch {
      throw MeshctlFailure("cannot set up a connection to \(target): \(error)")
    }
    do {
      return try await withCommandClient(transport: transport) { try await body($0) }
    } catch let error as RPCError {
      if error.code == .unavailable, error.message.hasPrefix("etcd: ") {
        // It answered: its store did not (another replica's may).
        throw Unreachable(
          description:
            "the control plane at \(target) cannot reach its store: \(error.message)")
      }
      if error.code == .unavailable {
        throw Unreachable(
          description: "cannot reach the control plane at \(target): \(error.message)")
      }
      throw MeshctlFailure("\(error.code.canonicalName): \(error.message)")
    }
  }

  /// Every sidecar the replicas know, each as the replica it is connected to says (every
  /// replica knows only its own); the replica each uses; how many replicas there are. The
  /// trust is the newest generation a replica runs; the issuer, every replica's (`; `).
  /// `unanswered` hears of a replica that did not answer.
  func mergedStatus(
    unanswered: (Trellis_Mesh_V1_Replica, any Error) -> Void = { _, _ in }
  ) async throws -> (
    status: Trellis_Mesh_V1_StatusResponse, replicaOf: [String: String], replicas: Int
  ) {
    let answers = try await withEveryReplica {
      try await $0.status(Trellis_Mesh_V1_StatusRequest())
    }
    var answered: [(replica: String, status: Trellis_Mesh_V1_StatusResponse)] = []
    for (replica, result) in answers {
      switch result {
      case .success(let answer): answered.append((replica.name, answer))
      case .failure(let error): unanswered(replica, error)
      }
    }
    let (merged, replicaOf) = ReplicaMerge.status(answered)
    return (merged, replicaOf, answers.count)
  }

  /// Runs `body` at every replica serving the mesh (as the first that answers lists them),
  /// all at once; each result is named by its replica, a replica that did not answer by its
  /// error.
  func withEveryReplica<Result: Sendable>(
    _ body:
      @escaping @Sendable (Trellis_Mesh_V1_Admin.Client<HTTP2ClientTransport.Posix>) async throws
      -> Result
  ) async throws -> [(replica: Trellis_Mesh_V1_Replica, result: Swift.Result<Result, any Error>)] {
    try await withEveryReplicaClient { try await body(Trellis_Mesh_V1_Admin.Client(wrapping: $0)) }
  }

  /// The same with a client of any of the control plane's services.
  func withEveryReplicaClient<Result: Sendable>(
    _ body: @escaping @Sendable (GRPCClient<HTTP2ClientTransport.Posix>) async throws -> Result
  ) async throws -> [(replica: Trellis_Mesh_V1_Replica, result: Swift.Result<Result, any Error>)] {
    let listed = try await withAdmin { try await $0.replicas(Trellis_Mesh_V1_ReplicasRequest()) }
    let replicas = listed.replicas
    guard replicas.count > 1 else {
      // One control plane: the one that answered.
      let result = try await withClient(body)
      var replica = replicas.first ?? Trellis_Mesh_V1_Replica()
      if replica.address.isEmpty { replica.address = address }
      return [(replica, .success(result))]
    }
    // Each replica in a task of its own, none waited for past 5 s: a hung one (its TLS
    // handshake never ends) is named as such, and left behind when meshctl exits.
    let answers = Answers<Result>()
    for (index, replica) in replicas.enumerated() {
      Task.detached {
        do {
          let target = try HostPort(parsing: replica.address)
          let answer = try await withClient(at: target) { try await body($0) }
          answers.set(index, .success(answer))
        } catch {
          answers.set(index, .failure(error))
        }
      }
    }
    let deadline = ContinuousClock.now + .seconds(5)
    while answers.count < replicas.count, ContinuousClock.now < deadline {
      try? await Task.sleep(for: .milliseconds(20))
    }
    return replicas.indices.map { index in
      (replicas[index], answers.get(index) ?? .failure(MeshctlFailure("no answer within 5 s")))
    }
  }
}

/// What each replica answered, by its place in the list.
private final class Answers<Value: Sendable>: Sendable {
  private let results = Mutex<[Int: Result<Value, any Error>]>([:])
  var count: Int { results.withLock { $0.count } }
  func set(_ index: Int, _ result: Result<Value, any Error>) {
    results.withLock { $0[index] = result }
  }
  func get(_ index: Int) -> Result<Value, any Error>? { results.withLock { $0[index] } }
}
