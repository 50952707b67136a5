import Foundation
import MeshDashboard

/// The processes of a local mesh that `meshctl up` started, kept in `.trellis/run.json` so
/// that `down`, `status`, `logs`, `restart` and `check` — and a second `up` — find them.
struct ShopRun: Codable {
  /// Where the executables are.
  var bin: String
  var ports: Ports
  var detached: Bool
  /// The mesh's API key for the gateway.
  var apiKeyFile: String
  var processes: [Entry]
  /// The shop's databases on PostgreSQL (`up --postgres`, or `--postgres-url`); nil: each
  /// service's SQLite file.
  var postgres: PostgresRun?
  /// Set by `meshctl down` while it stops the processes (a foreground `up` then takes their
  /// ends for what they are).
  var stopping: Bool?

  struct Ports: Codable, Equatable {
    /// The first of the sidecars' and apps' ports: slot N uses base+10N+1 … base+10N+4.
    var base: Int
    var gateway: Int
    /// The control plane's API; its join listener is the next port. With several replicas,
    /// replica N (from 0) takes controlPlane+2N and the next; etcd's member N its client port
    /// controlPlane+20+2N and its peer port the next.
    var controlPlane: Int
    /// How many control plane replicas run (nil: one, on SQLite); more than one share a local
    /// etcd cluster of as many members.
    var controlPlanes: Int?
    /// The dashboard's port (nil in a run file from before there was one).
    var dashboard: Int?
    var join: Int { controlPlane + 1 }

    var replicas: Int { controlPlanes ?? 1 }
    /// Each replica's API and join ports.
    var replicaPorts: [(api: Int, join: Int)] {
      (0..<replicas).map { (controlPlane + 2 * $0, controlPlane + 2 * $0 + 1) }
    }
    /// Each etcd member's client and peer ports (none with one replica).
    var etcdPorts: [(client: Int, peer: Int)] {
      replicas == 1
        ? [] : (0..<replicas).map { (controlPlane + 20 + 2 * $0, controlPlane + 21 + 2 * $0) }
    }
    /// `--control-plane` for every replica.
    var controlPlaneList: String {
      replicaPorts.map { "127.0.0.1:\($0.api)" }.joined(separator: ",")
    }
  }

  /// Where the shop's PostgreSQL databases are.
  struct PostgresRun: Codable {
    /// The local cluster's folder (`up --postgres`); nil for an existing server.
    var folder: String?
    var host: String
    var port: Int
    /// Each service's `--db` URL (with its password file, never the password).
    var urls: [String: String]
  }

  struct Entry: Codable {
    /// `control-plane`, `users`, `users-sidecar`, `orders-2`, `orders-2-sidecar`.
    var name: String
    /// The mesh service (`control-plane` for the control plane).
    var service: String
    /// The instance (`orders-2`); the app and its sidecar share it.
    var instance: String
    var role: Role
    var pid: Int32
    /// When the process started (see `LocalProcesses.startTime`), so that a pid reused by
    /// another process after ours ended is not taken for ours (nor signalled).
    var startTime: UInt64?
    var log: String
    /// The instance's ports slot.
    var slot: Int?
    /// The address it serves (the app's gRPC port, the gateway's HTTP port, the sidecar's
    /// admin port).
    var address: String

    /// Whether this entry's process (this pid, started at this time) still runs.
    var isRunning: Bool { LocalProcesses.isRunning(pid, startedAt: startTime) }
  }

  enum Role: String, Codable {
    case postgres
    case etcd
    case controlPlane = "control-plane"
    case dashboard
    case app
    case sidecar
  }

  static let folder = ".trellis"
  static var file: String { folder + "/run.json" }

  static func load() -> ShopRun? {
    guard let data = FileManager.default.contents(atPath: file) else { return nil }
    return try? JSONDecoder().decode(ShopRun.self, from: data)
  }

  func save() throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    let data = try encoder.encode(self)
    let temporary = Self.file + ".tmp"
    guard FileManager.default.createFile(atPath: temporary, contents: data) else {
      throw MeshctlFailure("cannot write \(Self.file)")
    }
    _ = rename(temporary, Self.file)
  }

  /// Every process's log, for the dashboard and `meshctl logs --trace`.
  var logSources: [LogCollector.Source] {
    processes.map { LogCollector.Source(process: $0.name, service: $0.service, path: $0.log) }
  }

  /// Entries whose process still runs.
  var running: [Entry] { processes.filter(\.isRunning) }

  /// The ports of a slot.
  func slotPorts(_ slot: Int) -> (inbound: Int, outbound: Int, admin: Int, app: Int) {
    let first = ports.base + 10 * slot
    return (first + 1, first + 2, first + 3, first + 4)
  }

  /// A slot no process uses.
  var freeSlot: Int { (processes.compactMap(\.slot).max() ?? -1) + 1 }
}

/// What the shop is made of: each service, the executable that serves it, what it calls.
enum ShopLayout {
  struct Service {
    let name: String
    let executable: String
    /// The app takes `--sidecar OUTBOUND` (it calls others through the mesh).
    let callsOut: Bool
  }

  /// In start order: what others depend on first.
  static let services = [
    Service(name: "events", executable: "event-service", callsOut: false),
    Service(name: "payments", executable: "payment-service", callsOut: false),
    Service(name: "users", executable: "user-service", callsOut: true),
    Service(name: "orders", executable: "order-service", callsOut: true),
    Service(name: "gateway", executable: "gateway", callsOut: true),
  ]

  static let executables = [
    "control-plane", "sidecar", "event-service", "payment-service", "user-service",
    "order-service", "gateway", "meshctl",
  ]

  /// The mesh config `up` applies when `.trellis/mesh.yaml` does not exist yet: who may call
  /// whom (the operator too, for `rpc call --mesh`), every trace sampled and every call in the
  /// sidecars' access logs (which the dashboard shows beside the traces).
  static let defaultMeshConfig = """
    # The shop's mesh config, applied by `meshctl up` (edit it and run `meshctl apply -f` on it,
    # or `meshctl up` again). The endpoints come from discovery.
    defaultPolicy: deny
    tracing:
      sampling: 1.0
      accessLog: true
    services:
      gateway:
        authorization:
          allow:
            - from: spiffe://trellis.local/operator/admin
      users:
        authorization:
          allow:
            - from: [gateway, spiffe://trellis.local/operator/admin]
      orders:
        authorization:
          allow:
            - from: [gateway, spiffe://trellis.local/operator/admin]
      payments:
        authorization:
          allow:
            - from: [orders, gateway, spiffe://trellis.local/operator/admin]
      events:
        authorization:
          allow:
            - from: [users, orders, spiffe://trellis.local/operator/admin]

    """
}
