import Foundation
import MeshProtos
import MeshTracing

/// One trace as `meshctl trace` and the dashboard draw it: its spans in tree order (a parent before its
/// children, siblings by start time), each with its depth, on a common time axis.
public struct TraceTree: Sendable {
  public struct Row: Sendable {
    public var span: SpanView
    public var depth: Int
  }

  public let traceID: String
  public let rows: [Row]
  public let start: UInt64
  public let end: UInt64

  public var duration: UInt64 { end - start }
  public var root: SpanView? { rows.first?.span }

  /// Spans of one trace (a span whose parent is missing is drawn as a root).
  public init(traceID: String, spans: [SpanView]) {
    self.traceID = traceID
    let ids = Set(spans.map(\.spanID))
    var children: [String: [SpanView]] = [:]
    var roots: [SpanView] = []
    for span in spans {
      if let parent = span.parentID, ids.contains(parent), parent != span.spanID {
        children[parent, default: []].append(span)
      } else {
        roots.append(span)
      }
    }
    var rows: [Row] = []
    var seen = Set<String>()
    func visit(_ span: SpanView, depth: Int) {
      guard seen.insert(span.spanID).inserted else { return }
      rows.append(Row(span: span, depth: depth))
      for child in (children[span.spanID] ?? []).sorted(by: SpanView.byStart) {
        visit(child, depth: depth + 1)
      }
    }
    for root in roots.sorted(by: SpanView.byStart) { visit(root, depth: 0) }
    self.rows = rows
    start = spans.map(\.start).min() ?? 0
    end = max(spans.map(\.end).max() ?? 0, start)
  }

  /// Every trace in some export requests, newest first.
  public static func trees(_ requests: [OTLPExportRequest]) -> [TraceTree] {
    var byTrace: [String: [SpanView]] = [:]
    var order: [String] = []
    for request in requests {
      for resourceSpans in request.resourceSpans {
        for scope in resourceSpans.scopeSpans {
          for span in scope.spans {
            let view = SpanView(span, resource: resourceSpans.resource)
            if byTrace[view.traceID] == nil { order.append(view.traceID) }
            byTrace[view.traceID, default: []].append(view)
          }
        }
      }
    }
    return order.map { TraceTree(traceID: $0, spans: byTrace[$0]!) }.sorted { $0.start > $1.start }
  }
}

/// A span's facts, read from OTLP.
public struct SpanView: Sendable {
  public var traceID: String
  public var spanID: String
  public var parentID: String?
  public var service: String
  /// `sidecar` or `app` (the `trellis.component` resource attribute), empty when unknown.
  public var component: String
  public var name: String
  public var kind: String
  public var start: UInt64
  public var end: UInt64
  public var isError: Bool
  public var statusMessage: String
  public var attributes: [(String, String)]
  public var events: [(time: UInt64, name: String, attributes: [(String, String)])]

  public init(_ span: OTLPSpan, resource: Opentelemetry_Proto_Resource_V1_Resource) {
    traceID = hex(span.traceID)
    spanID = hex(span.spanID)
    parentID = span.parentSpanID.isEmpty ? nil : hex(span.parentSpanID)
    service = resource.attributes.first { $0.key == "service.name" }?.value.stringValue ?? "?"
    component = resource.attributes.first { $0.key == "trellis.component" }?.value.stringValue ?? ""
    name = span.name
    switch span.kind {
    case .server: kind = "server"
    case .client: kind = "client"
    case .producer: kind = "producer"
    case .consumer: kind = "consumer"
    default: kind = "internal"
    }
    start = span.startTimeUnixNano
    end = max(span.endTimeUnixNano, span.startTimeUnixNano)
    isError = span.status.code == .error
    statusMessage = span.status.message
    attributes = span.attributes.map { ($0.key, describe($0.value)) }
    events = span.events.map { event in
      (event.timeUnixNano, event.name, event.attributes.map { ($0.key, describe($0.value)) })
    }
  }

  public static func byStart(_ a: SpanView, _ b: SpanView) -> Bool {
    (a.start, a.spanID) < (b.start, b.spanID)
  }

  public func attribute(_ key: String) -> String? { attributes.first { $0.0 == key }?.1 }

  public var duration: UInt64 { end - start }

  /// `users (sidecar)`, or the service alone for an app's span.
  public var origin: String { component == "sidecar" ? "\(service) sidecar" : service }

  /// The gRPC status name, when the span has one; else OK or ERROR from the span status.
  public var status: String {
    if let code = attribute("rpc.grpc.status_code").flatMap(Int.init) {
      return GRPCStatusName.of(code)
    }
    return isError ? "ERROR" : "-"
  }

  /// Attempts: `2 attempts` on a client span that retried, `attempt 2` on the server span of
  /// a retry.
  public var attempts: String {
    if let attempts = attribute("trellis.attempts").flatMap(Int.init), attempts > 1 {
      return "\(attempts) attempts"
    }
    if let attempt = attribute("trellis.attempt").flatMap(Int.init), attempt > 1 {
      return "attempt \(attempt)"
    }
    return ""
  }
}

public func describe(_ value: Opentelemetry_Proto_Common_V1_AnyValue) -> String {
  switch value.value {
  case .stringValue(let text): text
  case .boolValue(let flag): flag ? "true" : "false"
  case .intValue(let number): "\(number)"
  case .doubleValue(let number): "\(number)"
  case .arrayValue(let array): "[" + array.values.map(describe).joined(separator: ", ") + "]"
  case .kvlistValue(let list):
    "{" + list.values.map { "\($0.key): \(describe($0.value))" }.joined(separator: ", ") + "}"
  case .bytesValue(let bytes): hex(bytes)
  case nil: ""
  }
}

public func hex(_ bytes: Data) -> String {
  bytes.map { String(format: "%02x", $0) }.joined()
}

/// A duration in nanoseconds, as people read it: `850 µs`, `12.4 ms`, `2.31 s`.
public func formatNanos(_ nanos: UInt64) -> String {
  let value = Double(nanos)
  if value < 1_000_000 { return String(format: "%.0f µs", value / 1000) }
  if value < 1_000_000_000 { return String(format: "%.2f ms", value / 1_000_000) }
  return String(format: "%.2f s", value / 1_000_000_000)
}
