import ArgumentParser
import Foundation
import MeshConfig
import MeshDashboard
import MeshProtos

/// `meshctl apply -f mesh.yaml [--dry-run]`
struct Apply: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Validate a mesh config and store it as the next version.",
    usage: "meshctl apply [<options>] -f <f>")

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
    guard text.utf8.count <= MeshConfig.maximumBytes else {
      throw MeshctlFailure(
        """
        \(file): \(text.utf8.count) bytes; a mesh config may be at most \(MeshConfig.maximumBytes) \
        bytes
        """
      )
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

/// `meshctl get config|routes|endpoints`
struct Get: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Show what the control plane holds.",
    subcommands: [
      ConfigCommand.self, RoutesCommand.self, EndpointsCommand.self, ReplicasCommand.self,
    ])

  /// `meshctl get replicas [-o table|json|yaml]`
  struct ReplicasCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      commandName: "replicas",
      abstract: "Every control plane serving the mesh, and which one leads.",
      usage: "meshctl get replicas [<options>]")

    @Option(name: .short, help: "Output: table, json or yaml.") var output: OutputFormat = .table
    @OptionGroup var controlPlane: ControlPlaneOptions

    func run() async throws {
      let response = try await controlPlane.withAdmin {
        try await $0.replicas(Trellis_Mesh_V1_ReplicasRequest())
      }
      switch output {
      case .json, .yaml:
        try printStructured(
          response.replicas.map { replica -> [String: Any] in
            [
              "name": replica.name, "address": replica.address,
              "join_address": replica.joinAddress, "leader": replica.leader,
              "started_at": isoDate(replica.startedUnix), "issuer": replica.issuer,
              "store": response.store,
            ]
          }, output)
      case .table:
        var table = [["NAME", "ADDRESS", "JOIN", "LEADER", "STARTED", "ISSUER"]]
        for replica in response.replicas {
          table.append([
            replica.name, replica.address, replica.joinAddress, replica.leader ? "yes" : "-",
            isoDate(replica.startedUnix), replica.issuer,
          ])
        }
        printTable(table)
      }
    }
  }

  struct ConfigCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      commandName: "config", abstract: "The running mesh config, or a stored version.",
      usage: "meshctl get config [<options>]")

    @Option(help: "A stored version (default: the running one).") var version: Int64 = 0
    @Option(name: .short, help: "Output: yaml (the text as applied) or json (with its version).")
    var output: OutputFormat = .yaml
    @Flag(
      help: """
        Print the shop's mesh config as `meshctl up` writes it the first time (asks no control \
        plane), to start one of your own from.
        """)
    var shopDefault = false
    @OptionGroup var controlPlane: ControlPlaneOptions

    func run() async throws {
      if shopDefault {
        print(ShopLayout.defaultMeshConfig, terminator: "")
        return
      }
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

extension Get {
  /// `meshctl get endpoints [-o table|json|yaml]`
  struct EndpointsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      commandName: "endpoints",
      abstract:
        "Every service's endpoints: those in the running config and those registered by sidecars.",
      usage: "meshctl get endpoints [<options>]")

    @Option(name: .short, help: "Output: table, json or yaml.") var output: OutputFormat = .table
    @OptionGroup var controlPlane: ControlPlaneOptions

    private struct Row {
      var service: String
      var address: String
      var labels: [String: String]
      var source: String
      var methods: [Trellis_Mesh_V1_MethodInfo] = []
    }

    func run() async throws {
      let config = try await controlPlane.runningConfig()
      let status = try await controlPlane.withAdmin {
        try await $0.status(Trellis_Mesh_V1_StatusRequest())
      }
      let rows = DashboardViews.endpointSources(running: config, discovery: status.discovery).map {
        Row(
          service: $0.source.service, address: $0.source.address, labels: $0.source.labels,
          source: $0.source.source, methods: $0.methods)
      }
      switch output {
      case .json, .yaml:
        let levels = ["unknown", "no_side_effects", "idempotent"]
        let objects: [[String: Any]] = rows.map { row in
          var object: [String: Any] = [
            "service": row.service, "address": row.address, "labels": row.labels,
            "identity": "spiffe://\(config.trustDomain)/svc/\(row.service)", "source": row.source,
          ]
          if !row.methods.isEmpty {
            object["methods"] = row.methods.map { method -> [String: Any] in
              let level = Int(method.idempotencyLevel)
              return [
                "name": method.name,
                "idempotency": levels.indices.contains(level) ? levels[level] : "\(level)",
              ]
            }
          }
          return object
        }
        try printStructured(objects, output)
      case .table:
        var table = [["SERVICE", "ADDRESS", "LABELS", "SOURCE"]]
        for row in rows {
          let labels = row.labels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
            .joined(separator: ",")
          table.append([row.service, row.address, labels.isEmpty ? "-" : labels, row.source])
        }
        printTable(table)
      }
    }
  }
}

/// `meshctl history`
struct History: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Every stored version of the mesh config, newest first.",
    usage: "meshctl history [<options>]")

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
    abstract: "Make an earlier version of the mesh config the running one (as a new version).",
    usage: "meshctl rollback [<options>] <version>")

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
