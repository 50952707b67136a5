import Logging
import MeshTracing
import MeshTranscoding
import Tracing

#if canImport(FoundationEssentials)
  import FoundationEssentials
#else
  import Foundation
#endif

/// A swift-log handler that writes one JSON object per line to standard error:
/// `{"time":…,"level":…,"logger":…,"message":…, …metadata}`.
public struct JSONLogHandler: LogHandler {
  public var logLevel: Logger.Level = .info
  public var metadata: Logger.Metadata = [:]
  public var metadataProvider: Logger.MetadataProvider?
  private let label: String

  public init(label: String, metadataProvider: Logger.MetadataProvider? = nil) {
    self.label = label
    self.metadataProvider = metadataProvider
  }

  /// Makes every logger in the process a JSON-lines logger; call once, first thing in `main`.
  /// A line logged under a trace carries its `trace_id` and `span_id`.
  public static func bootstrap(level: Logger.Level = .info) {
    LoggingSystem.bootstrap(
      { label, provider in
        var handler = JSONLogHandler(label: label, metadataProvider: provider)
        handler.logLevel = level
        return handler
      }, metadataProvider: .traceContext)
  }

  public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
    get { metadata[key] }
    set { metadata[key] = newValue }
  }

  public func log(event: LogEvent) {
    var members: [(key: String, value: JSONValue)] = [
      ("time", .string(Self.timestamp())),
      ("level", .string(event.level.rawValue)),
      ("logger", .string(label)),
      ("message", .string(event.message.description)),
    ]
    var merged = metadataProvider?.get() ?? [:]
    merged.merge(metadata) { _, new in new }
    merged.merge(event.metadata ?? [:]) { _, new in new }
    for key in merged.keys.sorted() {
      members.append((key, Self.json(merged[key]!)))
    }
    let line = JSONValue.object(members).serialized(pretty: false) + "\n"
    StandardError.write(line)
  }

  private static func json(_ value: Logger.MetadataValue) -> JSONValue {
    switch value {
    case .string(let text): return .string(text)
    case .stringConvertible(let value):
      if let number = value as? any BinaryInteger { return .number("\(number)") }
      if let number = value as? Double, number.isFinite { return .number("\(number)") }
      return .string(value.description)
    case .array(let values): return .array(values.map(json))
    case .dictionary(let values):
      return .object(values.keys.sorted().map { ($0, json(values[$0]!)) })
    }
  }

  private static func timestamp() -> String {
    WallClock.rfc3339(WallClock.now(), fractionDigits: 3)
  }
}

extension Logger.MetadataProvider {
  /// The trace the task runs under: `trace_id` and `span_id`.
  public static let traceContext = Logger.MetadataProvider {
    guard let trace = ServiceContext.current?.trace else { return [:] }
    return ["trace_id": "\(trace.traceID)", "span_id": "\(trace.spanID)"]
  }
}
