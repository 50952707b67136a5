import ArgumentParser
import Foundation
import MeshProtos
import MeshServiceKit

/// `meshctl status`: every sidecar the control plane knows, as `istioctl proxy-status` shows.
struct Status: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract:
      """
      Every sidecar subscribed to the control plane: the config version it runs, its last NACK, \
      its certificate's expiry, when it was last seen; then the processes `meshctl up` started \
      here.
      """,
    usage: "meshctl status [<options>]",
    discussion:
      """
      -o json prints one object: current_version, sidecars (one per sidecar) and processes (name, \
      service, role, pid, state, address, log; empty when no shop runs here).
      """
  )

  @Option(name: .short, help: "Output: table or json.") var output: OutputFormat = .table
  @OptionGroup var controlPlane: ControlPlaneOptions

  func run() async throws {
    let (response, replicaOf, replicas) = try await controlPlane.mergedStatus { replica, error in
      StandardError.write(
        "meshctl: control plane replica \(replica.name) at \(replica.address) did not answer: \(error)\n"
      )
    }
    let replicated = replicas > 1
    switch output {
    case .json:
      let rows: [[String: Any]] = response.sidecars.map {
        [
          "replica": replicaOf[$0.node] ?? "",
          "node": $0.node, "spiffe_id": $0.spiffeID, "version": $0.version,
          "connected": $0.connected,
          "last_nack_version": $0.lastNackVersion, "last_nack_error": $0.lastNackError,
          "last_seen": isoDate($0.lastSeenUnix),
          "certificate_expires": isoDate($0.certificateNotAfterUnix),
          "registered": $0.registered, "registered_address": $0.registeredAddress,
          "trust_generation": $0.trustGeneration, "discovery_generation": $0.discoveryGeneration,
        ]
      }
      // The processes `meshctl up` started here, as the table shows them after the sidecars.
      let processes: [[String: Any]] = (ShopRun.load()?.processes ?? []).map {
        [
          "name": $0.name, "service": $0.service, "role": $0.role.rawValue, "pid": Int($0.pid),
          "state": LocalProcesses.isRunning($0.pid) ? "running" : "exited",
          "address": $0.address, "log": $0.log,
        ]
      }
      let document: [String: Any] = [
        "current_version": response.currentVersion, "sidecars": rows, "processes": processes,
      ]
      let data = try JSONSerialization.data(
        withJSONObject: document, options: [.sortedKeys, .withoutEscapingSlashes])
      print(String(decoding: data, as: UTF8.self))
    case .table, .yaml:
      print(
        response.currentVersion == 0
          ? "no config applied yet (meshctl apply -f mesh.yaml)"
          : "config version \(response.currentVersion) is running")
      let header =
        [
          "NODE", "VERSION", "STATE", "LAST NACK", "REGISTERED", "CERT EXPIRES", "LAST SEEN",
        ] + (replicated ? ["REPLICA"] : [])
      var rows = [header]
      for sidecar in response.sidecars {
        let state =
          !sidecar.connected
          ? "disconnected" : sidecar.version == response.currentVersion ? "synced" : "stale"
        let nack =
          sidecar.lastNackVersion == 0
          ? "-" : "v\(sidecar.lastNackVersion): \(sidecar.lastNackError)"
        rows.append(
          [
            sidecar.node, "\(sidecar.version)", state, nack,
            sidecar.registered ? sidecar.registeredAddress : "-",
            isoDate(sidecar.certificateNotAfterUnix),
            isoDate(sidecar.lastSeenUnix),
          ] + (replicated ? [replicaOf[sidecar.node] ?? "-"] : []))
      }
      printTable(rows)
      if let run = ShopRun.load() { Self.printProcesses(run) }
    }
  }

  /// The processes `meshctl up` started here, alive or not.
  static func printProcesses(_ run: ShopRun) {
    print("\nprocesses started by meshctl up (\(ShopRun.file)):")
    var rows = [["PROCESS", "PID", "STATE", "ADDRESS", "LOG"]]
    for entry in run.processes {
      rows.append([
        entry.name, "\(entry.pid)", LocalProcesses.isRunning(entry.pid) ? "running" : "exited",
        entry.address, entry.log,
      ])
    }
    printTable(rows)
  }
}
