import ArgumentParser
import Foundation
import MeshProtos

/// `meshctl apply -f mesh.yaml [--dry-run]`
struct Apply: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Validate a mesh config and store it as the next version.")

  @Option(name: .short, help: "The MeshConfig YAML file.") var file: String
  @Flag(help: "Only show how it differs from the running version.") var dryRun = false
  @OptionGroup var controlPlane: ControlPlaneOptions

  func run() async throws {
    let text: String
    do {
      text = try String(contentsOfFile: file, encoding: .utf8)
    } catch {
      throw MeshctlFailure("cannot read \(file)")
    }
    var request = Trellis_Mesh_V1_ApplyConfigRequest()
    request.yaml = text
    request.fileName = file
    request.dryRun = dryRun
    let response = try await controlPlane.withAdmin { [request] in try await $0.applyConfig(request)
    }
    if dryRun {
      print(response.changed ? response.diff : "no change from the running version")
    } else if response.changed {
      print("applied \(file) as version \(response.version)")
    } else {
      print("\(file) is the running version (\(response.version)); nothing stored")
    }
  }
}

/// `meshctl get config [--version N] [-o yaml|json]`
struct Get: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Show what the control plane holds.", subcommands: [ConfigCommand.self])

  struct ConfigCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      commandName: "config", abstract: "The running mesh config, or a stored version.")

    @Option(help: "A stored version (default: the running one).") var version: Int64 = 0
    @Option(name: .short, help: "Output: yaml (the text as applied) or json (with its version).")
    var output: OutputFormat = .yaml
    @OptionGroup var controlPlane: ControlPlaneOptions

    func run() async throws {
      var request = Trellis_Mesh_V1_GetConfigRequest()
      request.version = version
      let stored = try await controlPlane.withAdmin { [request] in try await $0.getConfig(request) }
      switch output {
      case .yaml, .table:
        print(stored.yaml, terminator: stored.yaml.hasSuffix("\n") ? "" : "\n")
      case .json:
        let object: [String: Any] = [
          "version": stored.version, "yaml": stored.yaml, "created_by": stored.createdBy,
          "created_at": stored.createdAtUnix,
        ]
        let data = try JSONSerialization.data(
          withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
        print(String(decoding: data, as: UTF8.self))
      }
    }
  }
}

/// `meshctl history`
struct History: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Every stored version of the mesh config, newest first.")

  @Option(name: .short, help: "Output: table or json.") var output: OutputFormat = .table
  @OptionGroup var controlPlane: ControlPlaneOptions

  func run() async throws {
    let response = try await controlPlane.withAdmin {
      try await $0.listConfigVersions(Trellis_Mesh_V1_ListConfigVersionsRequest())
    }
    let formatter = ISO8601DateFormatter()
    switch output {
    case .json:
      let rows: [[String: Any]] = response.versions.map {
        [
          "version": $0.version, "created_at": $0.createdAtUnix, "created_by": $0.createdBy,
          "rolled_back_from": $0.rolledBackFrom,
        ]
      }
      let data = try JSONSerialization.data(
        withJSONObject: rows, options: [.sortedKeys, .withoutEscapingSlashes])
      print(String(decoding: data, as: UTF8.self))
    case .table, .yaml:
      let width = max(4, response.versions.map(\.createdBy.count).max() ?? 0) + 2
      print(
        "VERSION  APPLIED               "
          + "BY".padding(toLength: width, withPad: " ", startingAt: 0) + "NOTE")
      for version in response.versions {
        let date = formatter.string(
          from: Date(timeIntervalSince1970: TimeInterval(version.createdAtUnix)))
        let note = version.rolledBackFrom == 0 ? "" : "rollback to \(version.rolledBackFrom)"
        print(
          String(version.version).padding(toLength: 9, withPad: " ", startingAt: 0)
            + date.padding(toLength: 22, withPad: " ", startingAt: 0)
            + version.createdBy.padding(toLength: width, withPad: " ", startingAt: 0) + note)
      }
    }
  }
}

/// `meshctl rollback VERSION`
struct Rollback: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Make an earlier version of the mesh config the running one (as a new version).")

  @Argument(help: "The version to go back to.") var version: Int64
  @OptionGroup var controlPlane: ControlPlaneOptions

  func run() async throws {
    var request = Trellis_Mesh_V1_RollbackRequest()
    request.version = version
    let response = try await controlPlane.withAdmin { [request] in try await $0.rollback(request) }
    if response.changed {
      print("version \(version) is running again, as version \(response.version)")
    } else {
      print("version \(version)'s text is already running (version \(response.version))")
    }
  }
}
