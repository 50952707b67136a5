#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import MeshProtos
import MeshTracing


/// The mesh's spans in OTLP's protobuf form.
extension OTLPSpan {
  public init(_ span: MeshTracing.Span) {
    self.init()
    traceID = Data(span.context.traceID.bytes)
    spanID = Data(span.context.spanID.bytes)
    if let parent = span.parent { parentSpanID = Data(parent.bytes) }
    if let state = span.context.traceState { traceState = state }
    // W3C flags in the low byte; bit 8 says the remote bit is known, bit 9 that it is set.
    flags = (span.context.sampled ? 1 : 0) | 0x100 | (span.parentIsRemote ? 0x200 : 0)
    name = span.name
    switch span.kind {
    case .internal: kind = .internal
    case .server: kind = .server
    case .client: kind = .client
    }
    startTimeUnixNano = span.start
    endTimeUnixNano = span.end
    attributes = span.attributes.map(Opentelemetry_Proto_Common_V1_KeyValue.init)
    events = span.events.map { event in
      var out = Opentelemetry_Proto_Trace_V1_Span.Event()
      out.name = event.name
      out.timeUnixNano = event.time
      out.attributes = event.attributes.map(Opentelemetry_Proto_Common_V1_KeyValue.init)
      return out
    }
    switch span.status {
    case .unset: break
    case .ok: status.code = .ok
    case .error(let message):
      status.code = .error
      status.message = message
    }
  }
}

extension Opentelemetry_Proto_Common_V1_KeyValue {
  public init(_ attribute: Attribute) {
    self.init()
    key = attribute.key
    switch attribute.value {
    case .string(let text): value.stringValue = text
    case .int(let number): value.intValue = number
    case .double(let number): value.doubleValue = number
    case .bool(let flag): value.boolValue = flag
    }
  }
}

extension OTLPResourceSpans {
  /// `spans` of one resource, under the mesh's instrumentation scope.
  public init(resource: [Attribute], spans: [MeshTracing.Span]) {
    self.init()
    self.resource.attributes = resource.map(Opentelemetry_Proto_Common_V1_KeyValue.init)
    var scope = Opentelemetry_Proto_Trace_V1_ScopeSpans()
    scope.scope.name = "trellis"
    scope.spans = spans.map(OTLPSpan.init)
    scopeSpans = [scope]
  }

  /// The spans it carries.
  public var spanCount: Int { scopeSpans.reduce(0) { $0 + $1.spans.count } }

  /// A resource attribute's string value.
  public func resourceAttribute(_ key: String) -> String? {
    resource.attributes.first { $0.key == key }.map { $0.value.stringValue }
  }
}
