import Foundation
import MeshConfig
import MeshProtos
import MeshTracing

/// The JSON the dashboard's pages read (`/api/…`), built from what the source answers.
public enum DashboardViews {
  /// A service's or an edge's figures over the window. A success rate under 99 % is `warn`,
  /// under 95 % `bad`; no calls, `idle`.
  public struct Figures: Encodable, Equatable, Sendable {
    public var requests: UInt64
    public var rps: Double
    public var successRate: Double
    public var p50Ms: Double
    public var p95Ms: Double
    public var p99Ms: Double
    public var health: String

    public init(_ row: Trellis_Mesh_V1_TopRow?) {
      requests = row?.requests ?? 0
      rps = row?.requestsPerSecond ?? 0
      successRate = row?.successRate ?? 1
      p50Ms = row?.p50Ms ?? 0
      p95Ms = row?.p95Ms ?? 0
      p99Ms = row?.p99Ms ?? 0
      health =
        requests == 0 ? "idle" : successRate < 0.95 ? "bad" : successRate < 0.99 ? "warn" : "ok"
    }
  }

  public struct Node: Encodable, Sendable {
    public var name: String
    public var label: String
    public var x: Double
    public var y: Double
    public var width: Double
    public var height: Double
    public var figures: Figures
  }

  public struct Edge: Encodable, Sendable {
    public var from: String
    public var to: String
    public var figures: Figures
  }

  public struct Graph: Encodable, Sendable {
    public var width: Double
    public var height: Double
    public var windowSeconds: UInt32
    public var nodes: [Node]
    public var edges: [Edge]
  }

  /// The service graph: a node per service (with a sidecar, or seen in a call), an edge per
  /// caller and service called, laid out by `GraphLayout`.
  public static func graph(
    services: [String], top: Trellis_Mesh_V1_TopResponse, edges: Trellis_Mesh_V1_TopResponse,
    width: Double = 1280, height: Double = 800
  ) -> Graph {
    let byService = Dictionary(top.rows.map { ($0.service, $0) }) { first, _ in first }
    let pairs = edges.rows.map { (from: $0.caller, to: $0.service) }
    let layout = GraphLayout(
      services: services + top.rows.map(\.service), edges: pairs, width: width, height: height)
    return Graph(
      width: layout.width, height: layout.height, windowSeconds: top.windowSeconds,
      nodes: layout.boxes.map {
        Node(
          name: $0.name, label: $0.label, x: $0.x, y: $0.y, width: $0.width, height: $0.height,
          figures: Figures(byService[$0.name]))
      },
      edges: edges.rows.map { Edge(from: $0.caller, to: $0.service, figures: Figures($0)) })
  }

  public struct MethodRow: Encodable, Sendable {
    public var method: String
    public var figures: Figures
  }

  /// One of the service's sidecars, as the control plane knows it.
  public struct Instance: Encodable, Sendable {
    public var node: String
    public var connected: Bool
    public var registered: Bool
    public var configVersion: Int64
    public var trustGeneration: Int64
    public var certificateSerial: String
    /// Seconds since the epoch.
    public var certificateNotAfter: Int64
  }

  /// One endpoint of the service as one calling sidecar sees it.
  public struct Endpoint: Encodable, Sendable {
    public var caller: String
    public var callerInstance: String
    public var address: String
    public var state: String
    public var ejectedForSeconds: Double
    public var inFlight: UInt32
    public var latencyMs: Double
    public var consecutiveFailures: UInt32
    public var ejections: UInt32
    public var calls: UInt64
    public var failures: UInt64
  }

  public struct Service: Encodable, Sendable {
    public var name: String
    public var windowSeconds: UInt32
    public var figures: Figures
    /// Its calls in 10-second steps over the last 15 minutes, oldest first, steps without
    /// calls left out.
    public var history: [HistoryPoint]
    public var methods: [MethodRow]
    /// Who calls it, and what it calls.
    public var callers: [Edge]
    public var callees: [Edge]
    public var instances: [Instance]
    public var endpoints: [Endpoint]
    /// The routes and policies in force, and who may call it (nil: no config is running).
    public var policies: Policies?
  }

  /// One step of a service's history.
  public struct HistoryPoint: Encodable, Equatable, Sendable {
    public var startUnix: Int64
    public var requests: UInt64
    public var rps: Double
    public var successRate: Double
    public var p50Ms: Double
    public var p99Ms: Double

    public init(_ step: Trellis_Mesh_V1_HistoryStep, seconds: Double = 10) {
      startUnix = step.startUnix
      requests = step.requests
      rps = Double(step.requests) / seconds
      successRate =
        step.requests == 0
        ? 1 : Double(step.requests - min(step.failures, step.requests)) / Double(step.requests)
      p50Ms = (LatencyBuckets.quantile(0.50, of: step.latencyBuckets) ?? 0) * 1000
      p99Ms = (LatencyBuckets.quantile(0.99, of: step.latencyBuckets) ?? 0) * 1000
    }
  }

  /// The service a sidecar serves: its SPIFFE ID's last segment (`spiffe://td/svc/orders`).
  public static func serviceName(_ spiffeID: String) -> String? {
    let parts = spiffeID.split(separator: "/")
    guard spiffeID.hasPrefix("spiffe://"), parts.count == 4, parts[2] == "svc" else { return nil }
    return String(parts[3])
  }

  public static func service(
    _ name: String, top: Trellis_Mesh_V1_TopResponse, methods: Trellis_Mesh_V1_TopResponse,
    edges: Trellis_Mesh_V1_TopResponse, status: Trellis_Mesh_V1_StatusResponse = .init(),
    endpoints: Trellis_Mesh_V1_EndpointsResponse = .init(), config: MeshConfig? = nil
  ) -> Service {
    Service(
      name: name, windowSeconds: top.windowSeconds,
      figures: Figures(top.rows.first { $0.service == name }),
      history: (top.rows.first { $0.service == name }?.history ?? []).map { HistoryPoint($0) },
      methods: methods.rows.filter { $0.service == name }.map {
        MethodRow(method: $0.method, figures: Figures($0))
      },
      callers: edges.rows.filter { $0.service == name }.map {
        Edge(from: $0.caller, to: $0.service, figures: Figures($0))
      },
      callees: edges.rows.filter { $0.caller == name }.map {
        Edge(from: $0.caller, to: $0.service, figures: Figures($0))
      },
      instances: status.sidecars.filter { serviceName($0.spiffeID) == name }.map {
        Instance(
          node: $0.node, connected: $0.connected, registered: $0.registered,
          configVersion: $0.version, trustGeneration: $0.trustGeneration,
          certificateSerial: $0.certificateSerial,
          certificateNotAfter: $0.certificateNotAfterUnix)
      }.sorted { $0.node < $1.node },
      endpoints: endpoints.callers.flatMap { seen in
        seen.endpoints.filter { $0.service == name }.map {
          Endpoint(
            caller: seen.caller, callerInstance: seen.instance, address: $0.address,
            state: $0.ejected ? "ejected" : "active", ejectedForSeconds: $0.ejectedForSeconds,
            inFlight: $0.inFlight, latencyMs: $0.latencyMs,
            consecutiveFailures: $0.consecutiveFailures, ejections: $0.ejections,
            calls: $0.calls, failures: $0.failures)
        }
      },
      policies: config.map { policies(name, in: $0) })
  }

  public struct TraceSummary: Encodable, Sendable {
    public var traceId: String
    public var rootService: String
    public var rootName: String
    public var startUnixNano: UInt64
    public var durationMs: Double
    public var spans: UInt32
    public var error: Bool
    public var status: String
  }

  public static func traces(_ response: Trellis_Mesh_V1_ListTracesResponse) -> [TraceSummary] {
    response.traces.map {
      TraceSummary(
        traceId: hex($0.traceID), rootService: $0.rootService, rootName: $0.rootName,
        startUnixNano: $0.startUnixNano, durationMs: Double($0.durationNanos) / 1e6,
        spans: $0.spanCount, error: $0.error, status: $0.status)
    }
  }

  public struct Attribute: Encodable, Sendable {
    public var key: String
    public var value: String
  }

  public struct SpanEvent: Encodable, Sendable {
    public var name: String
    /// Milliseconds after the trace's start.
    public var atMs: Double
    public var attributes: [Attribute]
  }

  public struct Span: Encodable, Sendable {
    public var spanId: String
    public var parentId: String?
    public var depth: Int
    public var service: String
    /// `orders sidecar`, or the service alone for an app's span.
    public var origin: String
    public var name: String
    public var kind: String
    /// Milliseconds after the trace's start, and long.
    public var startMs: Double
    public var durationMs: Double
    public var status: String
    public var error: Bool
    public var statusMessage: String
    public var attempts: String
    public var attributes: [Attribute]
    public var events: [SpanEvent]
  }

  public struct Trace: Encodable, Sendable {
    public var traceId: String
    public var startUnixNano: UInt64
    public var durationMs: Double
    public var spans: [Span]
  }

  public static func trace(_ tree: TraceTree) -> Trace {
    func milliseconds(_ nanos: UInt64) -> Double { Double(nanos) / 1e6 }
    return Trace(
      traceId: tree.traceID, startUnixNano: tree.start, durationMs: milliseconds(tree.duration),
      spans: tree.rows.map { row in
        let span = row.span
        return Span(
          spanId: span.spanID, parentId: span.parentID, depth: row.depth, service: span.service,
          origin: span.origin, name: span.name, kind: span.kind,
          startMs: milliseconds(span.start - tree.start), durationMs: milliseconds(span.duration),
          status: span.status, error: span.isError, statusMessage: span.statusMessage,
          attempts: span.attempts,
          attributes: span.attributes.map { Attribute(key: $0.0, value: $0.1) },
          events: span.events.map { event in
            SpanEvent(
              name: event.name, atMs: milliseconds(max(event.time, tree.start) - tree.start),
              attributes: event.attributes.map { Attribute(key: $0.0, value: $0.1) })
          })
      })
  }
}

extension DashboardViews {
  public struct Version: Encodable, Sendable {
    public var version: Int64
    public var createdAt: Int64
    public var createdBy: String
    public var rolledBackFrom: Int64?
  }

  /// A sidecar's config: the version it runs, and the last it refused (NACK) with why.
  public struct SidecarConfig: Encodable, Sendable {
    public var node: String
    public var service: String
    public var connected: Bool
    public var version: Int64
    public var nackVersion: Int64?
    public var nackError: String?
  }

  public struct EndpointSource: Encodable, Sendable {
    public var service: String
    public var address: String
    public var labels: [String: String]
    /// `config`, or `registered by NODE`.
    public var source: String
  }

  public struct Config: Encodable, Sendable {
    public var currentVersion: Int64
    public var versions: [Version]
    public var sidecars: [SidecarConfig]
    public var endpoints: [EndpointSource]
  }

  /// The config's history, which sidecar runs which version, and the endpoints by source:
  /// those the running config lists and those sidecars registered.
  /// Every service's endpoints: those the running config lists, then those sidecars
  /// registered (and the methods they declared), by service and address — what `meshctl get
  /// endpoints` and the config page show.
  public static func endpointSources(
    running: MeshConfig?, discovery: Trellis_Mesh_V1_Discovery
  ) -> [(source: EndpointSource, methods: [Trellis_Mesh_V1_MethodInfo])] {
    var rows: [(source: EndpointSource, methods: [Trellis_Mesh_V1_MethodInfo])] = []
    for (name, service) in (running?.services ?? [:]).sorted(by: { $0.key < $1.key }) {
      for endpoint in service.endpoints {
        rows.append(
          (
            EndpointSource(
              service: name, address: "\(endpoint.address)", labels: endpoint.labels,
              source: "config"), []
          ))
      }
    }
    for registered in discovery.endpoints
    where !rows.contains(where: {
      $0.source.service == registered.service && $0.source.address == registered.address
    }) {
      rows.append(
        (
          EndpointSource(
            service: registered.service, address: registered.address, labels: registered.labels,
            source: "registered by \(registered.node)"), registered.methods
        ))
    }
    return rows.sorted {
      ($0.source.service, $0.source.address) < ($1.source.service, $1.source.address)
    }
  }

  public static func config(
    versions: [Trellis_Mesh_V1_ConfigVersion], running: MeshConfig?,
    status: Trellis_Mesh_V1_StatusResponse
  ) -> Config {
    let endpoints = endpointSources(running: running, discovery: status.discovery).map(\.source)
    return Config(
      currentVersion: status.currentVersion,
      versions: versions.map {
        Version(
          version: $0.version, createdAt: $0.createdAtUnix, createdBy: $0.createdBy,
          rolledBackFrom: $0.rolledBackFrom == 0 ? nil : $0.rolledBackFrom)
      }.sorted { $0.version > $1.version },
      sidecars: status.sidecars.map {
        SidecarConfig(
          node: $0.node, service: serviceName($0.spiffeID) ?? $0.spiffeID, connected: $0.connected,
          version: $0.version, nackVersion: $0.lastNackVersion == 0 ? nil : $0.lastNackVersion,
          nackError: $0.lastNackError.isEmpty ? nil : $0.lastNackError)
      }.sorted { $0.node < $1.node },
      endpoints: endpoints)
  }

  public struct Diff: Encodable, Sendable {
    public var from: Int64
    public var to: Int64
    /// A unified diff of the two versions' YAML; empty when they are the same.
    public var diff: String
  }

  public struct SidecarTrust: Encodable, Sendable {
    public var node: String
    public var spiffeId: String
    public var connected: Bool
    public var serial: String
    public var notAfter: Int64
    public var issuer: String
    public var root: String
    public var trustGeneration: Int64
  }

  public struct Trust: Encodable, Sendable {
    public var trustGeneration: Int64
    public var issuer: String
    public var roots: [String]
    public var sidecars: [SidecarTrust]
    /// Connected sidecars that run the control plane's trust generation, of all connected.
    public var current: Int
    public var connected: Int
    /// The rotation steps running now, each with its progress.
    public var rotations: [Rotation]
  }

  /// A rotation step while `meshctl certs rotate` (or `rotate-ca`) waits on it.
  public struct Rotation: Encodable, Equatable, Sendable {
    public var step: String
    public var startedUnix: Int64
    public var trustGeneration: Int64
    public var done: Int
    public var total: Int
    public var waitingFor: [String]
    /// Sidecars known but not connected: they do the step when they return.
    public var disconnected: [String]
  }

  public static func trust(_ status: Trellis_Mesh_V1_StatusResponse) -> Trust {
    let connected = status.sidecars.filter(\.connected)
    return Trust(
      trustGeneration: status.trustGeneration, issuer: status.issuer, roots: status.roots,
      sidecars: status.sidecars.map {
        SidecarTrust(
          node: $0.node, spiffeId: $0.spiffeID, connected: $0.connected,
          serial: $0.certificateSerial, notAfter: $0.certificateNotAfterUnix,
          issuer: $0.certificateIssuer, root: $0.certificateRoot,
          trustGeneration: $0.trustGeneration)
      }.sorted { $0.node < $1.node },
      current: connected.filter { $0.trustGeneration >= status.trustGeneration }.count,
      connected: connected.count,
      rotations: status.rotations.map {
        Rotation(
          step: $0.step, startedUnix: $0.startedUnix, trustGeneration: $0.progress.trustGeneration,
          done: Int($0.progress.doneCount), total: Int($0.progress.total),
          waitingFor: $0.progress.waitingFor, disconnected: $0.progress.disconnected)
      })
  }

  public struct TapEvent: Encodable, Sendable {
    public var time: UInt64
    public var direction: String
    public var service: String
    public var method: String
    public var peer: String
    public var status: String
    public var durationMs: Double
    public var traceId: String
    public var instance: String
    public var attempts: UInt32

    public init(_ event: Trellis_Mesh_V1_TapEvent) {
      time = event.timeUnixNano
      direction = event.direction
      service = event.service
      method = event.method
      peer = event.peer
      status = event.status
      durationMs = Double(event.durationNanos) / 1e6
      traceId = event.traceID
      instance = event.instance
      attempts = event.attempts
    }
  }
}

extension DashboardViews {
  /// The routes and policies in force for calls to a service, and who may call it, as the
  /// running config says (defaults included), each in a line as `meshctl get routes` reads.
  public struct Policies: Encodable, Sendable {
    public var balancing: String
    public var outlierDetection: String
    public var circuitBreaker: String
    public var retryBudget: String
    public var routes: [String]
    /// One line per authorization rule; the default policy when the service has none.
    public var callers: [String]
  }

  public static func policies(_ name: String, in config: MeshConfig) -> Policies {
    let service = config.services[name] ?? MeshConfig.Service(endpoints: [])
    func seconds(_ duration: Duration) -> String {
      let value = duration.timeInterval
      return value < 1 ? "\(Int((value * 1000).rounded())) ms" : "\(value) s"
    }
    let outlier = service.outlierDetection
    let breaker = service.circuitBreaker
    let budget = service.retryBudget
    let routes = config.routes.filter { $0.service == name }.map { route -> String in
      var parts = [route.name.map { "'\($0)'" } ?? "unnamed"]
      if let methods = route.match.methods {
        parts.append("methods \(methods.joined(separator: ", "))")
      }
      if !route.match.headers.isEmpty {
        parts.append(
          "headers "
            + route.match.headers.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
            .joined(separator: ", "))
      }
      if let timeout = route.timeout { parts.append("timeout \(seconds(timeout))") }
      if let perTry = route.perTryTimeout { parts.append("per try \(seconds(perTry))") }
      parts.append(
        "\(route.retries.attempts) attempts on "
          + route.retries.retryOn.map(MeshTracing.GRPCStatusName.of).joined(separator: ", "))
      if !route.split.isEmpty {
        parts.append(
          "split "
            + route.split.map { subset in
              subset.labels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
                .joined(separator: ",") + ": \(subset.weight)"
            }.joined(separator: " / "))
      }
      if let abort = route.fault?.abort {
        parts.append("fault: abort \(MeshTracing.GRPCStatusName.of(abort.code)) \(abort.percent) %")
      }
      if let delay = route.fault?.delay {
        parts.append("fault: delay \(seconds(delay.duration)) \(delay.percent) %")
      }
      return parts.joined(separator: "; ")
    }
    let callers: [String]
    if let rules = service.authorization?.rules {
      callers = rules.map { rule in
        let who =
          switch rule.callers {
          case .identities(let identities): identities.sorted().joined(separator: ", ")
          case .anyInTrustDomain(let domain): "any workload of \(domain)"
          }
        return who + (rule.methods.map { ": " + $0.joined(separator: ", ") } ?? "")
      }
    } else {
      callers = ["no rules: the default policy, \(config.defaultPolicy.rawValue)"]
    }
    return Policies(
      balancing: service.loadBalancing.rawValue,
      outlierDetection:
        "eject after \(outlier.consecutiveFailures) failures in a row, "
        + "\(seconds(outlier.baseEjectionTime)) × ejections, at most \(outlier.maxEjectionPercent) %",
      circuitBreaker:
        "\(breaker.maxConcurrentRequests) concurrent, \(breaker.maxPendingRequests) pending",
      retryBudget:
        "\(budget.percent) % of calls + \(budget.minPerSecond)/s over \(seconds(budget.window))",
      routes: routes.isEmpty ? ["the default route: 3 attempts on UNAVAILABLE"] : routes,
      callers: callers)
  }
}
