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
    StandardError.write(line(for: event))
  }

  /// `event` as its line, newline included. Written straight into one string: this runs for
  /// every call a service answers.
  func line(for event: LogEvent) -> String {
    var line = "{\"time\":\""
    line.reserveCapacity(320)
    line += Self.timestamp()
    line += "\",\"level\":\""
    line += event.level.rawValue
    line += "\",\"logger\":"
    JSONValue.append(string: label, to: &line)
    line += ",\"message\":"
    JSONValue.append(string: event.message.description, to: &line)
    var merged = metadataProvider?.get() ?? [:]
    if !metadata.isEmpty { merged.merge(metadata) { _, new in new } }
    if let extra = event.metadata, !extra.isEmpty { merged.merge(extra) { _, new in new } }
    for (key, value) in merged.sorted(by: { $0.key < $1.key }) {
      line += ","
      JSONValue.append(string: key, to: &line)
      line += ":"
      Self.json(value).append(to: &line)
    }
    line += "}\n"
    return line
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
