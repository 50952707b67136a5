import ArgumentParser
import Foundation
import GRPCCore
import MeshConfig
import MeshProtos
import Yams

extension Get {
  /// `meshctl get routes [-o table|json|yaml]`: every service's routes with the policies each
  /// applies, defaults written out, from the running config.
  struct RoutesCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      commandName: "routes",
      abstract:
        """
        Every service's routes in the running config: match, timeouts, retries, split, faults, and \
        the service's balancing, outlier detection, limits and retry budget.
        """,
      usage: "meshctl get routes [<options>]"
    )

    @Option(name: .short, help: "Output: table, json or yaml.") var output: OutputFormat = .table
    @OptionGroup var controlPlane: ControlPlaneOptions

    func run() async throws {
      let config = try await controlPlane.runningConfig()
      // Services known only by registration run with the default route and policies.
      let registered = try await controlPlane.withAdmin {
        try await $0.status(Trellis_Mesh_V1_StatusRequest()).discovery.endpoints.map(\.service)
      }
      let names = Set(config.services.keys).union(config.routes.map(\.service)).union(registered)
        .sorted()
      switch output {
      case .json, .yaml:
        let objects: [[String: Any]] = names.map { name in
          let service = config.services[name] ?? MeshConfig.Service()
          return [
            "service": name,
            "loadBalancing": service.loadBalancing.rawValue,
            "outlierDetection": [
              "consecutiveFailures": service.outlierDetection.consecutiveFailures,
              "baseEjectionTime": format(service.outlierDetection.baseEjectionTime),
              "maxEjectionPercent": service.outlierDetection.maxEjectionPercent,
            ],
            "circuitBreaker": [
              "maxConcurrentRequests": service.circuitBreaker.maxConcurrentRequests,
              "maxPendingRequests": service.circuitBreaker.maxPendingRequests,
            ],
            "retryBudget": [
              "percent": service.retryBudget.percent,
              "minPerSecond": service.retryBudget.minPerSecond,
              "window": format(service.retryBudget.window),
            ],
            "idempotency": service.idempotency,
            "routes": config.effectiveRoutes(for: name).map(object),
          ]
        }
        try printStructured(objects, output)
      case .table:
        var rows = [["SERVICE", "ROUTE", "MATCH", "TIMEOUT", "RETRIES", "SPLIT", "FAULT"]]
        for name in names {
          for route in config.effectiveRoutes(for: name) {
            rows.append([
              name, route.name ?? "-", describe(route.match),
              [route.timeout.map(format) ?? "-", route.perTryTimeout.map { "\(format($0))/try" }]
                .compactMap { $0 }.joined(separator: ", "),
              route.retries.attempts == 1
                ? "none"
                : "\(route.retries.attempts) attempts on \(route.retries.retryOn.map(codeName).joined(separator: ",")), backoff \(format(route.retries.backoffBase))-\(format(route.retries.backoffMax))",
              route.split.isEmpty
                ? "all endpoints"
                : route.split.map { "\(labels($0.labels)) \($0.weight)" }.joined(separator: ", "),
              describe(route.fault),
            ])
          }
        }
        printTable(rows)
        print("")
        var services = [["SERVICE", "BALANCING", "OUTLIER DETECTION", "LIMITS", "RETRY BUDGET"]]
        for name in names {
          let service = config.services[name] ?? MeshConfig.Service()
          let outlier = service.outlierDetection
          let budget = service.retryBudget
          services.append([
            name, service.loadBalancing.rawValue,
            """
            \(outlier.consecutiveFailures) failures, \(format(outlier.baseEjectionTime)) x \
            ejections, max \(outlier.maxEjectionPercent)%
            """,
            """
            \(service.circuitBreaker.maxConcurrentRequests) concurrent, \
            \(service.circuitBreaker.maxPendingRequests) pending
            """,
            "\(budget.percent)% + \(budget.minPerSecond)/s over \(format(budget.window))",
          ])
        }
        printTable(services)
      }
    }

    private func object(_ route: Route) -> [String: Any] {
      var object: [String: Any] = [
        "name": route.name ?? "",
        "match": [
          "methods": route.match.methods ?? ["*"], "headers": route.match.headers,
        ] as [String: Any],
        "retries": [
          "attempts": route.retries.attempts, "on": route.retries.retryOn.map(codeName),
          "backoff": [
            "base": format(route.retries.backoffBase), "max": format(route.retries.backoffMax),
          ],
        ] as [String: Any],
        "split": route.split.map { ["labels": $0.labels, "weight": $0.weight] as [String: Any] },
      ]
      if let timeout = route.timeout { object["timeout"] = format(timeout) }
      if let perTry = route.perTryTimeout { object["perTryTimeout"] = format(perTry) }
      if let fault = route.fault {
        var value: [String: Any] = [:]
        if let abort = fault.abort {
          value["abort"] = ["code": codeName(abort.code), "percent": abort.percent]
        }
        if let delay = fault.delay {
          value["delay"] = ["duration": format(delay.duration), "percent": delay.percent]
        }
        object["fault"] = value
      }
      return object
    }

    private func describe(_ match: Route.Match) -> String {
      var parts = [match.methods?.joined(separator: ",") ?? "every method"]
      if !match.headers.isEmpty { parts.append(labels(match.headers, separator: ": ")) }
      return parts.joined(separator: " + ")
    }

    private func describe(_ fault: FaultInjection?) -> String {
      var parts: [String] = []
      if let abort = fault?.abort {
        parts.append("abort \(codeName(abort.code)) \(abort.percent)%")
      }
      if let delay = fault?.delay {
        parts.append("delay \(format(delay.duration)) \(delay.percent)%")
      }
      return parts.isEmpty ? "-" : parts.joined(separator: ", ")
    }

    private func labels(_ labels: [String: String], separator: String = "=") -> String {
      labels.sorted { $0.key < $1.key }.map { "\($0.key)\(separator)\($0.value)" }
        .joined(separator: ",")
    }

    private func codeName(_ code: Int) -> String {
      GRPCStatusName.all.indices.contains(code) ? GRPCStatusName.all[code] : "\(code)"
    }
  }
}

/// A duration as configs write it: `250ms`, `2s`, `5m`, `1h`.
func format(_ duration: Duration) -> String {
  let milliseconds = Int64(duration.timeInterval * 1000)
  for (unit, size) in [("h", Int64(3_600_000)), ("m", 60_000), ("s", 1000)]
  where milliseconds >= size && milliseconds % size == 0 {
    return "\(milliseconds / size)\(unit)"
  }
  return "\(milliseconds)ms"
}

/// JSON (one document, keys sorted) or YAML.
func printStructured(_ object: Any, _ format: OutputFormat) throws {
  if format == .yaml {
    print(try Yams.serialize(node: yamlNode(object)), terminator: "")
  } else {
    let data = try JSONSerialization.data(
      withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
    print(String(decoding: data, as: UTF8.self))
  }
}

/// A YAML node of a JSON-like value (dictionaries, arrays, strings, numbers, booleans), keys
/// sorted.
private func yamlNode(_ value: Any) -> Node {
  switch value {
  case let dictionary as [String: Any]:
    return .mapping(
      Node.Mapping(
        dictionary.sorted { $0.key < $1.key }.map { (Node($0.key), yamlNode($0.value)) }))
  case let array as [Any]:
    return .sequence(Node.Sequence(array.map(yamlNode)))
  case let flag as Bool where type(of: value) == Bool.self:
    return Node(flag ? "true" : "false", Tag(.bool))
  case let number as Int:
    return Node(String(number), Tag(.int))
  case let number as Int64:
    return Node(String(number), Tag(.int))
  case let number as Int32:
    return Node(String(number), Tag(.int))
  case let number as Double:
    return Node(String(number), Tag(.float))
  default:
    // Quoted when plain it would read back as something else (`1`, `true`, `on`).
    let text = "\(value)"
    let plain = (try? Yams.load(yaml: text)) as? String == text
    return .scalar(Node.Scalar(text, Tag(.str), plain ? .any : .singleQuoted))
  }
}

extension ControlPlaneOptions {
  /// The running mesh config, read as the sidecars read it; an empty one (the defaults) when
  /// none was applied yet.
  func runningConfig() async throws -> MeshConfig {
    let stored = try await withAdmin { admin -> Trellis_Mesh_V1_ConfigVersion? in
      do {
        return try await admin.getConfig(Trellis_Mesh_V1_GetConfigRequest())
      } catch let error as RPCError where error.code == .notFound {
        return nil
      }
    }
    guard let stored else { return MeshConfig() }
    do {
      return try MeshConfig(yaml: stored.yaml, file: "config version \(stored.version)")
    } catch {
      throw MeshctlFailure("\(error)")
    }
  }
}
