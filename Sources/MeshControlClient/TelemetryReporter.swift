import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import MeshConfig
import MeshProtos
import MeshTracing
import ServiceLifecycle

/// Sends the sidecar's live figures to the control plane over one stream
/// (`trellis.mesh.v1.Telemetry/Report`): every second the calls that ended, and — while an
/// operator taps this service — the tapped calls every 100 ms. The control plane answers with
/// the taps open. Every fifth second a report also carries the endpoints this sidecar calls, as
/// its balancer sees them (`endpoints`), for the dashboard. The stream goes over the sidecar's
/// connection to its replica and moves with it (within a second). A lost stream is opened again
/// with backoff (0.5 s to 30 s); meanwhile no call is tapped.
public struct TelemetryReporter: Service {
  private let connection: ControlPlaneConnection
  private let telemetry: LiveTelemetry
  private let instance: @Sendable () async -> String?
  private let endpoints: @Sendable () -> [EndpointSnapshot]
  private let logger: Logger

  /// How many reports of figures go by between two of endpoints.
  static let endpointsEvery = 5

  public init(
    connection: ControlPlaneConnection,
    telemetry: LiveTelemetry, instance: @escaping @Sendable () async -> String?,
    endpoints: @escaping @Sendable () -> [EndpointSnapshot] = { [] },
    logger: Logger
  ) {
    self.connection = connection
    self.telemetry = telemetry
    self.instance = instance
    self.endpoints = endpoints
    self.logger = logger
  }

  public func run() async throws {
    guard let instance = await instance() else { return }
    var backoff = Duration.milliseconds(500)
    while !Task.isShuttingDownGracefully, !Task.isCancelled {
      let started = ContinuousClock.now
      var client: ControlPlaneConnection.Client?
      do {
        let opened = try connection.client()
        client = opened
        try await cancelWhenGracefulShutdown { try await stream(instance, over: opened) }
      } catch {
        logger.debug("telemetry stream lost", metadata: ["error": "\(error)"])
      }
      telemetry.setTaps([])
      // The connection moved: the stream is opened again at once on the one in use.
      if let client, !connection.isCurrent(client) { continue }
      if ContinuousClock.now - started > .seconds(30) { backoff = .milliseconds(500) }
      let jittered = backoff * Double.random(in: 0.5...1)
      try? await cancelWhenGracefulShutdown { try await Task.sleep(for: jittered) }
      backoff = min(backoff * 2, .seconds(30))
    }
  }

  private func stream(_ instance: String, over client: ControlPlaneConnection.Client) async throws {
    let connection = self.connection
    let telemetry = self.telemetry
    let endpoints = self.endpoints
    try await Trellis_Mesh_V1_Telemetry.Client(wrapping: client).report(
      requestProducer: { writer in
        var last = ContinuousClock.now
        var reports = 0
        while true {
          try await Task.sleep(for: telemetry.isTapping ? .milliseconds(100) : .seconds(1))
          // The connection moved (another replica, or a renewed certificate): so does the
          // stream.
          guard connection.isCurrent(client) else { throw Moved() }
          var report = Trellis_Mesh_V1_TelemetryReport()
          report.instance = instance
          let now = ContinuousClock.now
          if now - last >= .seconds(1) {
            let (stats, tapped) = telemetry.drain()
            let interval = now - last
            last = now
            report.calls = stats.map { Self.message($0, interval: interval) }
            report.taps = tapped.map { Self.message($0, instance: instance) }
            // The first report of a stream carries them, then every few seconds.
            if reports % Self.endpointsEvery == 0 {
              report.endpoints = endpoints().map(Self.message)
            }
            reports += 1
          } else {
            report.taps = telemetry.drainTapped().map { Self.message($0, instance: instance) }
            if report.taps.isEmpty { continue }
          }
          try await writer.write(report)
        }
      },
      onResponse: { response in
        for try await control in response.messages {
          telemetry.setTaps(
            control.taps.map {
              LiveTelemetry.Tap(
                id: $0.id, method: $0.method, maxPerSecond: Int(max($0.maxPerSecond, 1)))
            })
        }
      })
  }

  /// Ends a stream whose connection is no longer the one in use.
  private struct Moved: Error {}

  static func message(_ endpoint: EndpointSnapshot) -> Trellis_Mesh_V1_EndpointStatus {
    var message = Trellis_Mesh_V1_EndpointStatus()
    message.service = endpoint.service
    message.address = endpoint.address
    message.labels = endpoint.labels
    message.ejected = endpoint.ejected
    message.ejectedForSeconds = endpoint.ejectedForSeconds
    message.inFlight = UInt32(clamping: endpoint.inFlight)
    message.latencyMs = endpoint.latencyMilliseconds
    message.consecutiveFailures = UInt32(clamping: endpoint.consecutiveFailures)
    message.ejections = UInt32(clamping: endpoint.ejections)
    message.calls = UInt64(clamping: endpoint.calls)
    message.failures = UInt64(clamping: endpoint.failures)
    return message
  }

  static func message(_ stats: LiveTelemetry.Stats, interval: Duration) -> Trellis_Mesh_V1_CallStats
  {
    var message = Trellis_Mesh_V1_CallStats()
    message.direction = stats.direction
    message.service = stats.service
    message.method = stats.method
    message.requests = stats.requests
    message.failures = stats.failures
    // Trailing empty buckets are left out.
    let used = (stats.buckets.lastIndex { $0 != 0 } ?? -1) + 1
    message.latencyBuckets = Array(stats.buckets[..<used])
    message.intervalMs = UInt32(
      interval.components.seconds * 1000 + interval.components.attoseconds / 1_000_000_000_000_000)
    return message
  }

  static func message(
    _ call: LiveTelemetry.TappedCall, instance: String
  ) -> Trellis_Mesh_V1_TapEvent {
    var message = Trellis_Mesh_V1_TapEvent()
    message.tapID = call.tap
    message.timeUnixNano = call.time
    message.direction = call.direction
    message.service = call.service
    message.method = call.method
    message.peer = call.peer
    message.status = call.status
    message.durationNanos = call.durationNanos
    message.traceID = call.traceID
    message.instance = instance
    message.attempts = UInt32(call.attempts)
    return message
  }
}
