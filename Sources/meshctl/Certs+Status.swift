import ArgumentParser
import Foundation
import MeshProtos
import MeshServiceKit

extension Certs {
  /// `meshctl certs status`: the certificate every sidecar serves with, and the chain above it.
  struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      abstract:
        """
        Each sidecar's identity, certificate serial, expiry and chain, and the mesh's issuer and \
        roots.
        """,
      usage: "meshctl certs status [<options>]"
    )

    @Option(name: .short, help: "Output: table or json.") var output: OutputFormat = .table
    @OptionGroup var controlPlane: ControlPlaneOptions

    func run() async throws {
      // Each replica knows the sidecars connected to it, and signs with an issuer of its own.
      let (response, replicaOf, replicas) = try await controlPlane.mergedStatus { replica, error in
        StandardError.write(
          "meshctl: control plane replica \(replica.name) at \(replica.address) did not answer: \(error)\n"
        )
      }
      func remaining(_ unix: Int64) -> String {
        guard unix != 0 else { return "-" }
        let seconds = Int(Date(timeIntervalSince1970: TimeInterval(unix)).timeIntervalSinceNow)
        if seconds <= 0 { return "expired" }
        if seconds >= 86_400 { return "\(seconds / 86_400)d\((seconds % 86_400) / 3600)h" }
        if seconds >= 3600 { return "\(seconds / 3600)h\((seconds % 3600) / 60)m" }
        return "\(seconds / 60)m\(seconds % 60)s"
      }
      switch output {
      case .json:
        let rows: [[String: Any]] = response.sidecars.map { sidecar in
          var row: [String: Any] = [
            "node": sidecar.node, "spiffe_id": sidecar.spiffeID,
            "serial": sidecar.certificateSerial,
            "expires": isoDate(sidecar.certificateNotAfterUnix),
            "issuer": sidecar.certificateIssuer, "root": sidecar.certificateRoot,
            "trust_generation": sidecar.trustGeneration, "connected": sidecar.connected,
          ]
          row["replica"] = replicaOf[sidecar.node] ?? ""
          return row
        }
        let mesh: [String: Any] = [
          "trust_generation": response.trustGeneration, "issuer": response.issuer,
          "issuers": response.issuer.components(separatedBy: "; "),
          "roots": response.roots, "sidecars": rows,
        ]
        let data = try JSONSerialization.data(
          withJSONObject: mesh, options: [.sortedKeys, .withoutEscapingSlashes])
        print(String(decoding: data, as: UTF8.self))
      case .table, .yaml:
        print(
          "trust generation \(response.trustGeneration): issuer\(replicas > 1 ? "s" : "") \(response.issuer)"
        )
        print("roots: \(response.roots.joined(separator: "; "))")
        var rows = [["NODE", "IDENTITY", "SERIAL", "EXPIRES IN", "ISSUER", "ROOT", "TRUST"]]
        if replicas > 1 { rows[0].append("REPLICA") }
        for sidecar in response.sidecars {
          let trust =
            !sidecar.connected
            ? "disconnected"
            : sidecar.trustGeneration == response.trustGeneration
              ? "synced (\(sidecar.trustGeneration))" : "stale (\(sidecar.trustGeneration))"
          rows.append(
            [
              sidecar.node, sidecar.spiffeID,
              sidecar.certificateSerial.isEmpty ? "-" : sidecar.certificateSerial,
              remaining(sidecar.certificateNotAfterUnix), sidecar.certificateIssuer,
              sidecar.certificateRoot.isEmpty ? "-" : sidecar.certificateRoot, trust,
            ] + (replicas > 1 ? [replicaOf[sidecar.node] ?? "-"] : []))
        }
        printTable(rows)
      }
    }
  }
}
