import MeshConfig
import MeshTracing
import NIOCore
import NIOHPACK
import Synchronization

/// The sidecar's tracing and access-log settings, shared by every event loop and changed by
/// the pushed config; and where finished spans go.
public final class CallTracing: Sendable {
  /// nil: nothing is exported, but sampling decisions are still made and passed on, so every
  /// hop of a trace agrees.
  let sink: (any SpanSink)?
  private let rate: Atomic<UInt64>
  private let accessLog: Atomic<Bool>

  public init(_ settings: Tracing, sink: (any SpanSink)?) {
    self.sink = sink
    rate = Atomic(Sampler(rate: settings.sampling).rate.bitPattern)
    accessLog = Atomic(settings.accessLog)
  }

  public func apply(_ settings: Tracing) {
    rate.store(Sampler(rate: settings.sampling).rate.bitPattern, ordering: .relaxed)
    accessLog.store(settings.accessLog, ordering: .relaxed)
  }

  var sampler: Sampler { Sampler(rate: Double(bitPattern: rate.load(ordering: .relaxed))) }
  var logsAccess: Bool { accessLog.load(ordering: .relaxed) }
}

/// One call's place in its trace, as this hop sees it: the span the hop records (client span
/// outbound, server span inbound), its parent, and what happened to the call on the way.
struct CallTrace {
  /// This hop's span: what the next hop is told is its parent, when the trace is sampled.
  var context: TraceContext
  var parent: SpanID?
  var start: UInt64
  var events: [Span.Event] = []
  /// Inbound: which attempt of the caller's this is (1 for the first).
  var attempt = 1

  mutating func event(_ name: String, _ attributes: [Attribute] = []) {
    guard context.sampled else { return }
    events.append(Span.Event(name: name, attributes: attributes))
  }
}

extension LoopState {
  /// Reads the request's trace headers and decides this hop's span. A valid W3C context is
  /// kept (and its sampling decision honoured); B3 is translated to W3C; a malformed header
  /// is replaced by a new trace. What goes on carries this hop's span as the parent when the
  /// trace is sampled, and always a decision, so the next hop never decides again.
  func beginTrace(_ headers: inout HPACKHeaders, inbound: Bool) -> CallTrace? {
    guard let tracing else { return nil }
    var found = TraceHeaders()
    for (name, value, _) in headers { found.note(name, value) }
    let incoming = IncomingTrace.extract { found.value($0) }
    var parent: TraceContext?
    var sampled: Bool
    var keepHeaders = false
    var replaced: String?
    switch incoming {
    case .context(let context, let format):
      parent = context
      sampled = context.sampled
      keepHeaders = !sampled && format == .w3c && !found.hasB3
    case .undecided(let context, _):
      parent = context
      sampled = tracing.sampler.samplesNewTrace(random: ids.unit())
    case .none:
      sampled = tracing.sampler.samplesNewTrace(random: ids.unit())
    case .malformed(let reason):
      sampled = tracing.sampler.samplesNewTrace(random: ids.unit())
      replaced = reason
    }
    let own = TraceContext(
      traceID: parent?.traceID ?? ids.traceID(), spanID: ids.spanID(), sampled: sampled,
      traceState: parent?.traceState)
    if !keepHeaders {
      if found.hasB3 {
        for name in IncomingTrace.headerNames where name != "traceparent" {
          headers.remove(name: name)
        }
      } else if parent?.traceState == nil, found.tracestate != nil {
        headers.remove(name: "tracestate")
      }
      // A value of its own on every call: kept out of HPACK's dynamic table, where it would
      // only push out the headers that do repeat. (Each `remove` walks the block: skipped
      // when the pass above saw no such header.)
      if found.traceparent == nil {
        headers.add(name: "traceparent", value: own.traceparent, indexing: .nonIndexable)
      } else {
        headers.replaceOrAdd(
          name: "traceparent", value: own.traceparent, indexing: .nonIndexable)
      }
      if let traceState = own.traceState {
        headers.replaceOrAdd(name: "tracestate", value: traceState)
      }
    }
    var trace = CallTrace(context: own, parent: parent?.spanID, start: WallClock.now())
    if inbound, let previous = found.previousAttempts.flatMap(Int.init), previous >= 0 {
      trace.attempt = previous + 1
    }
    if let replaced {
      trace.event("trace_header_replaced", [.string("reason", replaced)])
    }
    return trace
  }
}

/// The trace headers of a request, gathered in one pass over its headers.
private struct TraceHeaders {
  var traceparent: String?
  var tracestate: String?
  var b3: String?
  var b3TraceID: String?
  var b3SpanID: String?
  var b3Sampled: String?
  var b3Flags: String?
  var previousAttempts: String?
  var hasB3 = false

  /// Runs on every field of every request: names are told apart by length and first byte
  /// before a string is compared (a comparison that fails costs far more than one that
  /// succeeds), and nearly every name is none of these.
  mutating func note(_ name: String, _ value: String) {
    let utf8 = name.utf8
    switch (utf8.count, utf8.first) {
    case (11, UInt8(ascii: "t")) where name == "traceparent":
      if traceparent == nil { traceparent = value }
    case (10, UInt8(ascii: "t")) where name == "tracestate":
      tracestate = tracestate.map { $0 + "," + value } ?? value
    case (26, UInt8(ascii: "g")) where name == "grpc-previous-rpc-attempts":
      previousAttempts = value
    case (2, UInt8(ascii: "b")) where name == "b3": b3 = value; hasB3 = true
    case (10...17, UInt8(ascii: "x")):
      switch name {
      case "x-b3-traceid": b3TraceID = value; hasB3 = true
      case "x-b3-spanid": b3SpanID = value; hasB3 = true
      case "x-b3-sampled": b3Sampled = value; hasB3 = true
      case "x-b3-flags": b3Flags = value; hasB3 = true
      case "x-b3-parentspanid": hasB3 = true
      default: break
      }
    default: break
    }
  }

  func value(_ name: String) -> String? {
    switch name {
    case "traceparent": traceparent
    case "tracestate": tracestate
    case "b3": b3
    case "x-b3-traceid": b3TraceID
    case "x-b3-spanid": b3SpanID
    case "x-b3-sampled": b3Sampled
    case "x-b3-flags": b3Flags
    default: nil
    }
  }
}

/// What a finished call left behind: its span (when sampled) and its access-log line.
struct CallRecord {
  var direction: String
  var service: String
  /// `/package.Service/Method`.
  var path: String
  var code: Int?
  var codeName: String
  var message: String?
  var peer: String?
  var endpoint: Endpoint?
  var attempts: Int?
  var route: String?
  var seconds: Double

  func span(_ trace: CallTrace, end: UInt64) -> Span {
    let method = path.dropFirst()
    let slash = method.firstIndex(of: "/")
    var attributes: [Attribute] = [
      .string(SpanAttribute.rpcSystem, "grpc"),
      .string(SpanAttribute.rpcService, String(slash.map { method[..<$0] } ?? method)),
      .string(
        SpanAttribute.rpcMethod, String(slash.map { method[method.index(after: $0)...] } ?? "")),
      .string(SpanAttribute.direction, direction),
    ]
    if let code { attributes.append(.int(SpanAttribute.grpcStatusCode, code)) }
    if let peer { attributes.append(.string(SpanAttribute.peerIdentity, peer)) }
    if let endpoint {
      attributes.append(.string(SpanAttribute.endpoint, endpoint.description))
      attributes.append(.string(SpanAttribute.serverAddress, endpoint.host))
      attributes.append(.int(SpanAttribute.serverPort, endpoint.port))
    }
    if let attempts { attributes.append(.int(SpanAttribute.attempts, attempts)) }
    if direction == "inbound" { attributes.append(.int(SpanAttribute.attempt, trace.attempt)) }
    if let route { attributes.append(.string(SpanAttribute.route, route)) }
    let kind: Span.Kind = direction == "outbound" ? .client : .server
    return Span(
      context: trace.context, parent: trace.parent, name: String(method), kind: kind,
      start: trace.start, end: end, attributes: attributes, events: trace.events,
      status: status(kind: kind), parentIsRemote: trace.parent != nil)
  }

  /// OpenTelemetry's gRPC conventions: a client span is in error for every status but OK; a
  /// server span only for the statuses that say the server failed.
  private func status(kind: Span.Kind) -> Span.Status {
    guard let code, code != 0 else { return code == 0 ? .ok : .error(message ?? codeName) }
    let serverFailures: Set<Int> = [2, 4, 12, 13, 14, 15]
    guard kind == .client || serverFailures.contains(code) else { return .unset }
    return .error(message.map { "\(codeName): \($0)" } ?? codeName)
  }

  /// The access-log line: one JSON object.
  func accessLogLine(_ trace: CallTrace?, end: UInt64) -> String {
    var fields: [(String, String)] = [
      ("time", jsonString(WallClock.rfc3339(end, fractionDigits: 6)))
    ]
    if let trace {
      fields.append(("trace_id", jsonString("\(trace.context.traceID)")))
      fields.append(("span_id", jsonString("\(trace.context.spanID)")))
    }
    fields.append(("direction", jsonString(direction)))
    fields.append(("service", jsonString(service)))
    fields.append(("method", jsonString(path)))
    if let peer { fields.append(("peer", jsonString(peer))) }
    fields.append(("grpc_code", jsonString(codeName)))
    fields.append(("duration_ms", "\((seconds * 1_000_000).rounded() / 1000)"))
    fields.append(("attempts", "\(attempts ?? trace?.attempt ?? 1)"))
    if let endpoint { fields.append(("endpoint", jsonString(endpoint.description))) }
    return "{" + fields.map { "\"\($0.0)\":\($0.1)" }.joined(separator: ",") + "}\n"
  }
}

#if canImport(Glibc)
  import Glibc
#endif

/// The access log: one JSON line per call on standard output, each written whole.
enum AccessLog {
  static func write(_ line: String) {
    var line = line
    line.withUTF8 { bytes in
      var offset = 0
      while offset < bytes.count {
        let written = Glibc.write(1, bytes.baseAddress! + offset, bytes.count - offset)
        if written <= 0 {
          if written < 0, errno == EINTR { continue }
          return
        }
        offset += written
      }
    }
  }
}
