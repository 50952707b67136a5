import Logging
import MeshTracing
import Tracing

#if canImport(FoundationEssentials)
  import FoundationEssentials
#else
  import Foundation
#endif

/// Tracing for an app's process, set up from OpenTelemetry's standard environment:
///
/// - `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (or `OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/traces`):
///   where the app's spans go over OTLP/HTTP — its sidecar's admin port
///   (`http://127.0.0.1:ADMIN/v1/traces`), which sends them on with its own.
/// - `OTEL_SERVICE_NAME`: the service the spans are of (default: the executable's name).
///
/// Without an endpoint the app records no spans of its own, but still passes every call's
/// trace context on, so its sidecars' spans join up.
public enum AppTracing {
  /// Installs the tracer; returns the exporter to run beside the app, if spans are exported.
  public static func bootstrap(
    service: String, environment: [String: String] = ProcessInfo.processInfo.environment,
    logger: Logger
  ) throws -> SpanExporter? {
    let endpoint =
      environment["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"].flatMap { $0.isEmpty ? nil : $0 }
      ?? environment["OTEL_EXPORTER_OTLP_ENDPOINT"].flatMap {
        $0.isEmpty ? nil : ($0.hasSuffix("/") ? String($0.dropLast()) : $0) + "/v1/traces"
      }
    guard let endpoint else {
      InstrumentationSystem.bootstrap(MeshTracer(sink: nil))
      return nil
    }
    let sender: OTLPHTTPSender
    do {
      sender = try OTLPHTTPSender(url: endpoint)
    } catch {
      throw OTLPEndpointError("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: \(error)")
    }
    let queue = SpanQueue()
    InstrumentationSystem.bootstrap(MeshTracer(sink: queue))
    let name = environment["OTEL_SERVICE_NAME"].flatMap { $0.isEmpty ? nil : $0 } ?? service
    return SpanExporter(
      queue: queue,
      resource: [
        .string(SpanAttribute.serviceName, name), .string(SpanAttribute.component, "app"),
      ],
      logger: logger, send: sender.send)
  }
}
