import ArgumentParser
import Foundation
import MeshProtos

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
      let response = try await controlPlane.withAdmin {
        try await $0.status(Trellis_Mesh_V1_StatusRequest())
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
        let rows: [[String: Any]] = response.sidecars.map {
          [
            "node": $0.node, "spiffe_id": $0.spiffeID, "serial": $0.certificateSerial,
            "expires": isoDate($0.certificateNotAfterUnix), "issuer": $0.certificateIssuer,
            "root": $0.certificateRoot, "trust_generation": $0.trustGeneration,
            "connected": $0.connected,
          ]
        }
        let mesh: [String: Any] = [
          "trust_generation": response.trustGeneration, "issuer": response.issuer,
          "roots": response.roots, "sidecars": rows,
        ]
        let data = try JSONSerialization.data(
          withJSONObject: mesh, options: [.sortedKeys, .withoutEscapingSlashes])
        print(String(decoding: data, as: UTF8.self))
      case .table, .yaml:
        print("trust generation \(response.trustGeneration): issuer \(response.issuer)")
        print("roots: \(response.roots.joined(separator: "; "))")
        var rows = [["NODE", "IDENTITY", "SERIAL", "EXPIRES IN", "ISSUER", "ROOT", "TRUST"]]
        for sidecar in response.sidecars {
          let trust =
            !sidecar.connected
            ? "disconnected"
            : sidecar.trustGeneration == response.trustGeneration
              ? "synced (\(sidecar.trustGeneration))" : "stale (\(sidecar.trustGeneration))"
          rows.append([
            sidecar.node, sidecar.spiffeID,
            sidecar.certificateSerial.isEmpty ? "-" : sidecar.certificateSerial,
            remaining(sidecar.certificateNotAfterUnix), sidecar.certificateIssuer,
            sidecar.certificateRoot.isEmpty ? "-" : sidecar.certificateRoot, trust,
          ])
        }
        printTable(rows)
      }
    }
  }
}
