import Foundation
import GRPCCore
import MeshIdentity
import MeshProtos
import MeshTracing
import Synchronization

/// The sidecars' live figures, kept for a minute, and the taps operators have open. Sidecars
/// report every second over `Telemetry/Report`; `meshctl top` reads the figures, `meshctl tap`
/// opens a tap that the hub tells the tapped service's sidecars about, and their tapped calls
/// go to it.
final class TelemetryHub: Sendable {
  static let window: TimeInterval = 60
  /// A service's history: its calls in steps of 10 seconds, for 15 minutes.
  static let historyStep: Int64 = 10
  static let historyLength: Int64 = 900

  private struct Sample {
    var time: TimeInterval
    var instance: String
    var stats: Trellis_Mesh_V1_CallStats
  }

  private struct Reporter {
    var service: String
    var instance: String
    var controls: @Sendable (Trellis_Mesh_V1_TapControl) -> Void
    /// The endpoints it calls, as it last reported them, and when.
    var endpoints: [Trellis_Mesh_V1_EndpointStatus] = []
    var endpointsReported: TimeInterval = 0
  }

  private struct Tap {
    var service: String
    var filter: Trellis_Mesh_V1_TapFilter
    var events: AsyncStream<Trellis_Mesh_V1_TapEvent>.Continuation
  }

  private struct State {
    /// Inbound calls by service, oldest first.
    var samples: [String: [Sample]] = [:]
    /// Outbound calls by caller and service called (`edgeKey`), oldest first.
    var edges: [String: [Sample]] = [:]
    /// When each service (and each edge) was first reported (the window is shorter until a
    /// minute has passed).
    var firstSeen: [String: TimeInterval] = [:]
    /// Inbound calls by service in steps of `historyStep`, oldest first.
    var history: [String: [Trellis_Mesh_V1_HistoryStep]] = [:]
    var reporters: [UUID: Reporter] = [:]
    var taps: [String: Tap] = [:]
  }

  private let state = Mutex(State())

  // MARK: Sidecars

  /// A sidecar of `service` opened its stream; `controls` gets the taps open on the service.
  func connect(
    service: String, instance: String,
    controls: AsyncStream<Trellis_Mesh_V1_TapControl>.Continuation
  ) -> UUID {
    connect(service: service, instance: instance) { controls.yield($0) }
  }

  /// The same, for a stream served without a task of its own: `send` is called with each
  /// change of the taps.
  func connect(
    service: String, instance: String,
    send controls: @escaping @Sendable (Trellis_Mesh_V1_TapControl) -> Void
  ) -> UUID {
    let id = UUID()
    let current = state.withLock { state in
      state.reporters[id] = Reporter(service: service, instance: instance, controls: controls)
      return Self.control(for: service, state.taps)
    }
    controls(current)
    return id
  }

  func disconnect(_ id: UUID) {
    _ = state.withLock { $0.reporters.removeValue(forKey: id) }
  }

  func receive(_ report: Trellis_Mesh_V1_TelemetryReport, from id: UUID, now: Date = Date()) {
    let time = now.timeIntervalSince1970
    let deliveries:
      [(AsyncStream<Trellis_Mesh_V1_TapEvent>.Continuation, Trellis_Mesh_V1_TapEvent)] =
        state.withLock { state in
          guard let reporter = state.reporters[id] else { return [] }
          if !report.endpoints.isEmpty {
            state.reporters[id]?.endpoints = report.endpoints
            state.reporters[id]?.endpointsReported = time
          }
          var called: Set<String> = []
          for stats in report.calls {
            let sample = Sample(time: time, instance: report.instance, stats: stats)
            switch stats.direction {
            case "inbound":
              // What a sidecar says of its own service only: its identity names it.
              guard stats.service == reporter.service else { continue }
              state.samples[stats.service, default: []].append(sample)
              Self.record(stats, at: time, in: &state.history[stats.service, default: []])
              if state.firstSeen[stats.service] == nil { state.firstSeen[stats.service] = time }
            case "outbound":
              // The caller is the reporter's own service, whatever the report says.
              let key = Self.edgeKey(caller: reporter.service, service: stats.service)
              called.insert(key)
              state.edges[key, default: []].append(sample)
              if state.firstSeen[key] == nil { state.firstSeen[key] = time }
            default:
              continue
            }
          }
          // Only this service's samples are looked through; `top` skips any other's old ones.
          state.samples[reporter.service]?.removeAll { time - $0.time > Self.window }
          for key in called { state.edges[key]?.removeAll { time - $0.time > Self.window } }
          return report.taps.compactMap { event in
            guard let tap = state.taps[event.tapID], tap.service == reporter.service else {
              return nil
            }
            return (tap.events, event)
          }
        }
    for (events, event) in deliveries { events.yield(event) }
  }

  /// Adds `stats` to the step of `time`, the last one (or a new one, the oldest dropped).
  private static func record(
    _ stats: Trellis_Mesh_V1_CallStats, at time: TimeInterval,
    in steps: inout [Trellis_Mesh_V1_HistoryStep]
  ) {
    let start = Int64(time) / historyStep * historyStep
    if steps.last?.startUnix != start {
      var step = Trellis_Mesh_V1_HistoryStep()
      step.startUnix = start
      steps.append(step)
      if let first = steps.first, start - first.startUnix >= historyLength {
        steps.removeAll { start - $0.startUnix >= historyLength }
      }
    }
    let last = steps.count - 1
    steps[last].requests += stats.requests
    steps[last].failures += stats.failures
    var buckets = steps[last].latencyBuckets
    if buckets.count < stats.latencyBuckets.count {
      buckets += [UInt64](repeating: 0, count: stats.latencyBuckets.count - buckets.count)
    }
    for (index, count) in stats.latencyBuckets.enumerated() { buckets[index] += UInt64(count) }
    steps[last].latencyBuckets = buckets
  }

  // MARK: Operators

  /// An edge's key: the caller, then the service called.
  private static func edgeKey(caller: String, service: String) -> String {
    "\(caller)\u{1}\(service)"
  }

  /// Each service's figures (or each method's) over the window, from its sidecars' inbound
  /// calls; with `byEdge`, each caller's calls to it, from the callers' sidecars. With
  /// `history`, each service's row has its steps of the last 15 minutes (and a service with
  /// calls in them but none in the window has a row).
  func top(
    service: String, byMethod: Bool, byEdge: Bool = false, history: Bool = false,
    now: Date = Date()
  ) -> Trellis_Mesh_V1_TopResponse {
    let time = now.timeIntervalSince1970
    let withHistory = history && !byMethod && !byEdge
    let (samples, firstSeen, steps) = state.withLock {
      (
        byEdge ? $0.edges : $0.samples, $0.firstSeen,
        withHistory ? $0.history : [:]
      )
    }
    var groups: [String: [Sample]] = [:]
    for (name, list) in samples {
      let called = byEdge ? String(name.split(separator: "\u{1}").last ?? "") : name
      guard service.isEmpty || called == service else { continue }
      for sample in list where time - sample.time <= Self.window {
        let key = byMethod ? "\(name)\u{0}\(sample.stats.method)" : name
        groups[key, default: []].append(sample)
      }
    }
    var response = Trellis_Mesh_V1_TopResponse()
    response.windowSeconds = UInt32(Self.window)
    for (key, list) in groups.sorted(by: { $0.key < $1.key }) {
      let parts = key.split(separator: "\u{0}", maxSplits: 1).map(String.init)
      var row = Trellis_Mesh_V1_TopRow()
      let name = parts[0]
      if byEdge {
        let ends = name.split(separator: "\u{1}", maxSplits: 1).map(String.init)
        row.caller = ends[0]
        row.service = ends.count > 1 ? ends[1] : ""
      } else {
        row.service = name
      }
      if parts.count > 1 { row.method = parts[1] }
      var buckets = [UInt64](repeating: 0, count: LatencyBuckets.count)
      var requests: UInt64 = 0
      var failures: UInt64 = 0
      for sample in list {
        requests += sample.stats.requests
        failures += sample.stats.failures
        for (index, count) in sample.stats.latencyBuckets.enumerated() where index < buckets.count {
          buckets[index] += UInt64(count)
        }
      }
      let seconds = min(Self.window, max(1, time - (firstSeen[name] ?? time)))
      row.requests = requests
      row.requestsPerSecond = Double(requests) / seconds
      row.successRate = requests == 0 ? 1 : Double(requests - failures) / Double(requests)
      row.p50Ms = (LatencyBuckets.quantile(0.50, of: buckets) ?? 0) * 1000
      row.p95Ms = (LatencyBuckets.quantile(0.95, of: buckets) ?? 0) * 1000
      row.p99Ms = (LatencyBuckets.quantile(0.99, of: buckets) ?? 0) * 1000
      row.latencyBuckets = Array(buckets.prefix((buckets.lastIndex { $0 != 0 } ?? -1) + 1))
      row.failures = failures
      row.instances = UInt32(Set(list.map(\.instance)).count)
      response.rows.append(row)
    }
    guard withHistory else { return response }
    let since = Int64(time) - Self.historyLength
    for (name, list) in steps where service.isEmpty || name == service {
      let recent = list.filter { $0.startUnix > since }
      guard !recent.isEmpty else { continue }
      if let index = response.rows.firstIndex(where: { $0.service == name }) {
        response.rows[index].history = recent
      } else {
        var row = Trellis_Mesh_V1_TopRow()
        row.service = name
        row.successRate = 1
        row.history = recent
        response.rows.append(row)
      }
    }
    response.rows.sort { $0.service < $1.service }
    return response
  }

  /// The endpoints of `service` (every service when empty) as each connected sidecar that
  /// calls it last reported them (within the window).
  func endpoints(service: String, now: Date = Date()) -> Trellis_Mesh_V1_EndpointsResponse {
    let time = now.timeIntervalSince1970
    let reporters = state.withLock { Array($0.reporters.values) }
    var response = Trellis_Mesh_V1_EndpointsResponse()
    for reporter in reporters where time - reporter.endpointsReported <= Self.window {
      let endpoints = reporter.endpoints.filter { service.isEmpty || $0.service == service }
      guard !endpoints.isEmpty else { continue }
      var seen = Trellis_Mesh_V1_EndpointsSeen()
      seen.caller = reporter.service
      seen.instance = reporter.instance
      seen.reportedUnixNano = UInt64(reporter.endpointsReported * 1e9)
      seen.endpoints = endpoints
      response.callers.append(seen)
    }
    response.callers.sort { ($0.caller, $0.instance) < ($1.caller, $1.instance) }
    return response
  }

  /// Opens a tap on `service`; its calls arrive on the stream returned until `closeTap`.
  func openTap(
    service: String, method: String, maxPerSecond: UInt32
  ) -> (
    String, AsyncStream<Trellis_Mesh_V1_TapEvent>
  ) {
    let (events, continuation) = AsyncStream.makeStream(
      of: Trellis_Mesh_V1_TapEvent.self, bufferingPolicy: .bufferingNewest(1_000))
    let id = UUID().uuidString
    var filter = Trellis_Mesh_V1_TapFilter()
    filter.id = id
    filter.method = method
    filter.maxPerSecond = maxPerSecond
    state.withLock { $0.taps[id] = Tap(service: service, filter: filter, events: continuation) }
    announce(service)
    return (id, events)
  }

  func closeTap(_ id: String) {
    let tap = state.withLock { $0.taps.removeValue(forKey: id) }
    tap?.events.finish()
    if let tap { announce(tap.service) }
  }

  /// Tells every sidecar of `service` which taps are open on it.
  private func announce(_ service: String) {
    let (control, reporters) = state.withLock { state in
      (
        Self.control(for: service, state.taps),
        state.reporters.values.filter { $0.service == service }.map(\.controls)
      )
    }
    for reporter in reporters { reporter(control) }
  }

  private static func control(
    for service: String, _ taps: [String: Tap]
  ) -> Trellis_Mesh_V1_TapControl {
    var control = Trellis_Mesh_V1_TapControl()
    control.taps = taps.values.filter { $0.service == service }.map(\.filter).sorted {
      $0.id < $1.id
    }
    return control
  }
}

/// `trellis.mesh.v1.Telemetry`: sidecars report; operators read `top` and open taps.
public struct TelemetryService: Trellis_Mesh_V1_Telemetry.ServiceProtocol {
  let hub: TelemetryHub

  init(hub: TelemetryHub) { self.hub = hub }

  public func report(
    request: StreamingServerRequest<Trellis_Mesh_V1_TelemetryReport>, context: ServerContext
  ) async throws -> StreamingServerResponse<Trellis_Mesh_V1_TapControl> {
    guard let caller = ControlContext.caller(context), caller.path.hasPrefix("/svc/") else {
      throw RPCError(
        code: .permissionDenied, message: "only a workload's sidecar reports telemetry")
    }
    let service = String(caller.path.dropFirst("/svc/".count))
    return StreamingServerResponse { writer in
      try await endingAtShutdown {
        let (controls, continuation) = AsyncStream.makeStream(of: Trellis_Mesh_V1_TapControl.self)
        var id: UUID?
        defer { id.map(hub.disconnect) }
        try await withThrowingTaskGroup(of: Void.self) { group in
          group.addTask {
            for await control in controls { try await writer.write(control) }
          }
          for try await report in request.messages {
            if id == nil {
              id = hub.connect(service: service, instance: report.instance, controls: continuation)
            }
            hub.receive(report, from: id!)
          }
          continuation.finish()
          try await group.waitForAll()
        }
      }
      return [:]
    }
  }

  private func requireOperator(_ context: ServerContext) throws {
    guard let caller = ControlContext.caller(context) else {
      throw RPCError(code: .unauthenticated, message: "live figures need an operator certificate")
    }
    guard caller.path.hasPrefix("/operator/") else {
      throw RPCError(code: .permissionDenied, message: "\(caller) is not an operator")
    }
  }

  public func top(
    request: ServerRequest<Trellis_Mesh_V1_TopRequest>, context: ServerContext
  ) async throws -> ServerResponse<Trellis_Mesh_V1_TopResponse> {
    try requireOperator(context)
    return ServerResponse(
      message: hub.top(
        service: request.message.service, byMethod: request.message.byMethod,
        byEdge: request.message.byEdge, history: request.message.history))
  }

  public func endpoints(
    request: ServerRequest<Trellis_Mesh_V1_EndpointsRequest>, context: ServerContext
  ) async throws -> ServerResponse<Trellis_Mesh_V1_EndpointsResponse> {
    try requireOperator(context)
    return ServerResponse(message: hub.endpoints(service: request.message.service))
  }

  public func tap(
    request: ServerRequest<Trellis_Mesh_V1_TapRequest>, context: ServerContext
  ) async throws -> StreamingServerResponse<Trellis_Mesh_V1_TapEvent> {
    try requireOperator(context)
    let message = request.message
    guard !message.service.isEmpty else {
      throw RPCError(code: .invalidArgument, message: "name the service to tap")
    }
    let rate = message.maxPerSecond == 0 ? 20 : min(message.maxPerSecond, 1_000)
    let (id, events) = hub.openTap(
      service: message.service, method: message.method, maxPerSecond: rate)
    return StreamingServerResponse { writer in
      defer { hub.closeTap(id) }
      try await endingAtShutdown {
        try await withTaskCancellationHandler {
          for await event in events { try await writer.write(event) }
        } onCancel: {
          hub.closeTap(id)
        }
      }
      return [:]
    }
  }
}
