import MeshTracing
import Synchronization
import Tracing

/// The trace context a task runs under, kept in its `ServiceContext`.
public enum TraceContextKey: ServiceContextKey {
  public typealias Value = TraceContext
  public static var nameOverride: String? { "trellis.trace" }
}

/// Asks the tracer to start a new trace at the next span when there is none: the sampling
/// decision for it. What an entry point (the API gateway) sets for each request it takes.
enum NewTraceKey: ServiceContextKey {
  typealias Value = Bool
}

extension ServiceContext {
  /// A context in which the next span starts a new trace, sampled or not — unless `trace` is
  /// set (a caller's context, which is continued).
  public static func startingTrace(sampled: Bool) -> ServiceContext {
    var context = ServiceContext.topLevel
    context[NewTraceKey.self] = sampled
    return context
  }

  /// The W3C trace context of the span the task runs under, if any.
  public var trace: TraceContext? {
    get { self[TraceContextKey.self] }
    set { self[TraceContextKey.self] = newValue }
  }

  /// The context an event's headers carry (`traceparent`, `tracestate`): its consumer's work
  /// runs under it, so the asynchronous hop joins the publisher's trace.
  public static func carried(by headers: [String: String]) -> ServiceContext {
    var context = ServiceContext.topLevel
    InstrumentationSystem.instrument.extract(headers, into: &context, using: HeaderExtractor())
    return context
  }

  /// The trace context as headers (`traceparent`, `tracestate`): what an event carries so its
  /// consumer joins the trace.
  public var traceHeaders: [String: String] {
    guard let trace else { return [:] }
    var headers = ["traceparent": trace.traceparent]
    if let state = trace.traceState { headers["tracestate"] = state }
    return headers
  }
}

/// The tracer apps on `MeshServiceKit` run with (swift-distributed-tracing's `Tracer`): W3C
/// `traceparent`/`tracestate` in and out, parent-based sampling — an app records a span only in
/// a trace its sidecar sampled; a span with no sampled parent records nothing and passes the
/// context on unchanged, so the sidecars' spans still join up.
public final class MeshTracer: Tracer {
  public typealias Span = MeshSpan

  /// Where recorded spans go; nil: none are recorded, the context is only passed on.
  let sink: (any SpanSink)?
  private let ids = Mutex(IDGenerator())

  public init(sink: (any SpanSink)?) {
    self.sink = sink
  }

  public func startSpan<Instant: TracerInstant>(
    _ operationName: String, context: @autoclosure () -> ServiceContext, ofKind kind: SpanKind,
    at instant: @autoclosure () -> Instant, function: String, file fileID: String, line: UInt
  ) -> MeshSpan {
    var context = context()
    let kind: MeshTracing.Span.Kind =
      switch kind {
      case .server: .server
      case .client: .client
      case .producer: .producer
      case .consumer: .consumer
      default: .internal
      }
    if context.trace == nil, let sampled = context[NewTraceKey.self] {
      // The root of a new trace.
      context[NewTraceKey.self] = nil
      let root = ids.withLock {
        TraceContext(traceID: $0.traceID(), spanID: $0.spanID(), sampled: sampled)
      }
      context.trace = root
      guard let sink, sampled else { return MeshSpan(context: context, recording: nil) }
      return MeshSpan(
        context: context,
        recording: .init(
          sink: sink, parent: nil, kind: kind, start: instant().nanosecondsSinceEpoch,
          parentIsRemote: false, name: operationName))
    }
    guard let sink, let parent = context.trace, parent.sampled else {
      return MeshSpan(context: context, recording: nil)
    }
    let own = parent.child(ids.withLock { $0.spanID() })
    context.trace = own
    return MeshSpan(
      context: context,
      recording: .init(
        sink: sink, parent: parent.spanID, kind: kind, start: instant().nanosecondsSinceEpoch,
        parentIsRemote: kind == .server, name: operationName))
  }

  public func forceFlush() {}

  public func extract<Carrier, Extract: Extractor>(
    _ carrier: Carrier, into context: inout ServiceContext, using extractor: Extract
  ) where Extract.Carrier == Carrier {
    guard let header = extractor.extract(key: "traceparent", from: carrier),
      case .success(var trace) = TraceContext.parseTraceparent(header)
    else { return }
    trace.traceState = extractor.extract(key: "tracestate", from: carrier)
    context.trace = trace
  }

  public func inject<Carrier, Inject: Injector>(
    _ context: ServiceContext, into carrier: inout Carrier, using injector: Inject
  ) where Inject.Carrier == Carrier {
    guard let trace = context.trace else { return }
    injector.inject(trace.traceparent, forKey: "traceparent", into: &carrier)
    if let state = trace.traceState {
      injector.inject(state, forKey: "tracestate", into: &carrier)
    }
  }
}

/// A span of an app: recorded when its trace is sampled, a carrier of the context otherwise.
public final class MeshSpan: Tracing.Span {
  struct Recording: Sendable {
    let sink: any SpanSink
    let parent: SpanID?
    let kind: MeshTracing.Span.Kind
    let start: UInt64
    let parentIsRemote: Bool
    var name: String
    var attributes = SpanAttributes()
    var events: [MeshTracing.Span.Event] = []
    var status: MeshTracing.Span.Status = .unset
    var ended = false
  }

  public let context: ServiceContext
  private let state: Mutex<Recording?>

  init(context: ServiceContext, recording: Recording?) {
    self.context = context
    self.state = Mutex(recording)
  }

  public var isRecording: Bool { state.withLock { $0.map { !$0.ended } ?? false } }

  public var operationName: String {
    get { state.withLock { $0?.name ?? "" } }
    set { state.withLock { $0?.name = newValue } }
  }

  public var attributes: SpanAttributes {
    get { state.withLock { $0?.attributes ?? [:] } }
    set { state.withLock { $0?.attributes = newValue } }
  }

  public func setStatus(_ status: SpanStatus) {
    state.withLock { recording in
      switch status.code {
      case .ok: recording?.status = .ok
      case .error: recording?.status = .error(status.message ?? "")
      }
    }
  }

  public func addEvent(_ event: SpanEvent) {
    state.withLock {
      $0?.events.append(
        .init(
          name: event.name, time: event.nanosecondsSinceEpoch,
          attributes: Self.convert(event.attributes)))
    }
  }

  public func recordError<Instant: TracerInstant>(
    _ error: any Error, attributes: SpanAttributes, at instant: @autoclosure () -> Instant
  ) {
    var attributes = attributes
    attributes["exception.message"] = "\(error)"
    attributes["exception.type"] = "\(type(of: error))"
    addEvent(SpanEvent(name: "exception", at: instant(), attributes: attributes))
  }

  public func addLink(_ link: SpanLink) {}

  public func end<Instant: TracerInstant>(at instant: @autoclosure () -> Instant) {
    let finished: (Recording, SpanID)? = state.withLock { recording in
      guard var done = recording, !done.ended, let own = context.trace?.spanID else { return nil }
      done.ended = true
      recording = done
      return (done, own)
    }
    guard let (recording, own) = finished, let trace = context.trace else { return }
    recording.sink.record(
      MeshTracing.Span(
        context: trace.child(own), parent: recording.parent, name: recording.name,
        kind: recording.kind, start: recording.start, end: instant().nanosecondsSinceEpoch,
        attributes: Self.convert(recording.attributes), events: recording.events,
        status: recording.status, parentIsRemote: recording.parentIsRemote))
  }

  static func convert(_ attributes: SpanAttributes) -> [Attribute] {
    var out: [Attribute] = []
    attributes.forEach { key, value in
      switch value {
      case .int32(let number): out.append(Attribute(key, .int(Int64(number))))
      case .int64(let number): out.append(Attribute(key, .int(number)))
      case .double(let number): out.append(Attribute(key, .double(number)))
      case .bool(let flag): out.append(Attribute(key, .bool(flag)))
      case .string(let text): out.append(Attribute(key, .string(text)))
      case .stringConvertible(let value): out.append(Attribute(key, .string(value.description)))
      default: out.append(Attribute(key, .string("\(value)")))
      }
    }
    return out.sorted { $0.key < $1.key }
  }
}

struct HeaderExtractor: Extractor {
  func extract(key: String, from carrier: [String: String]) -> String? { carrier[key] }
}
