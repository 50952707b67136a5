import ArgumentParser
import Foundation
import MeshConfig
import MeshServiceKit
import X509

/// `meshctl`: run and operate the mesh.
@main
struct Meshctl: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "meshctl",
    abstract: "Run and operate the Trellis mesh.",
    subcommands: [
      Certs.self, Tokens.self, Apply.self, Get.self, History.self, Rollback.self, Status.self,
      Trace.self, Top.self, Tap.self, Dashboard.self, Up.self, Down.self, Logs.self, Restart.self,
      Check.self,
    ])

  static func main() async {
    await CommandLineMain.run(Meshctl.self, name: "meshctl") { error in
      (error as? MeshctlFailure).map { ($0.message, 1) }
    }
  }
}

/// A failure reported as one line on standard error, exit status 1.
struct MeshctlFailure: Error {
  let message: String
  init(_ message: String) { self.message = message }
}

/// Output formats, as kubectl's `-o`.
enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
  case table, json, yaml
}

/// A duration option (`90s`, `15m`, `24h`, `7d`) in seconds.
func durationOption(_ text: String, _ option: String) throws -> TimeInterval {
  guard let duration = parseDuration(text) else {
    throw ValidationError("\(option) \(text): expected a duration such as 90s, 15m, 24h or 7d")
  }
  return duration.timeInterval
}

/// Prints rows as columns, the first row being the header, two spaces apart.
func printTable(_ rows: [[String]]) {
  guard let header = rows.first else { return }
  let widths = header.indices.map { column in rows.map { $0[column].count }.max() ?? 0 }
  for row in rows {
    print(
      row.enumerated().map { index, cell in
        index == row.count - 1
          ? cell : cell.padding(toLength: widths[index] + 2, withPad: " ", startingAt: 0)
      }.joined())
  }
}

/// A Unix time as ISO 8601, `-` for none (0).
func isoDate(_ unix: Int64) -> String {
  unix == 0
    ? "-" : ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: TimeInterval(unix)))
}
