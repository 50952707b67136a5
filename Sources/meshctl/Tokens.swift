import ArgumentParser
import Foundation
import MeshConfig
import MeshProtos

/// `meshctl tokens`: join tokens for sidecars.
struct Tokens: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Join tokens: how a new sidecar proves which service it is.",
    subcommands: [Create.self])

  /// `meshctl tokens create --service NAME [--ttl 24h] [--out FILE]`
  struct Create: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      abstract:
        """
        Make a join token for one service. It is shown once; the control plane keeps only its \
        hash.
        """,
      usage: "meshctl tokens create [<options>] --service <service>"
    )

    @Option(help: "The service the token admits.") var service: String
    @Option(help: "How long the token is good for: 15m, 24h, 7d.") var ttl = "24h"
    @Option(help: "Write the token to this file (mode 0600) instead of printing it.")
    var out: String?
    @OptionGroup var controlPlane: ControlPlaneOptions

    func run() async throws {
      var request = Trellis_Mesh_V1_CreateTokenRequest()
      request.service = service
      request.ttlSeconds = Int64(try durationOption(ttl, "--ttl").rounded(.up))
      let response = try await controlPlane.withAdmin { [request] in
        try await $0.createToken(request)
      }
      let expires = Date(timeIntervalSince1970: TimeInterval(response.expiresAtUnix))
      if let out {
        guard
          FileManager.default.createFile(
            atPath: out, contents: Data((response.token + "\n").utf8),
            attributes: [.posixPermissions: 0o600])
        else { throw MeshctlFailure("cannot write \(out)") }
        print("wrote a join token for \(response.spiffeID) to \(out) (expires \(expires))")
      } else {
        print(response.token)
        FileHandle.standardError.write(
          Data("join token for \(response.spiffeID), expires \(expires)\n".utf8))
      }
    }
  }
}
