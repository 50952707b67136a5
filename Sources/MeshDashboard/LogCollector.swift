import Foundation
import Synchronization

/// One line of a process's log, as the dashboard and `meshctl logs --trace` show it.
public struct LogLine: Sendable, Encodable, Equatable {
  /// Nanoseconds since the epoch: the line's own time, or (a line without one) the last time
  /// its file showed.
  public var unixNano: UInt64
  public var process: String
  public var service: String
  /// `info`, `warning`, `error`…; empty when the line does not say.
  public var level: String
  public var message: String
  public var traceId: String?
  /// The line as written (cut at 4 KiB).
  public var text: String

  /// Reads a line: the mesh's JSON log lines (`time`, `level`, `message`, `trace_id`, as the
  /// services, sidecars and their access logs write them; etcd's `ts`), or text that starts
  /// with a time as PostgreSQL's does. `previous` dates a line that carries no time.
  public static func parse(
    _ text: Substring, process: String, service: String, previous: UInt64
  ) -> LogLine? {
    let trimmed = text.trimmingCharacters(in: .whitespaces)
    guard !trimmed.isEmpty else { return nil }
    var line = LogLine(
      unixNano: previous, process: process, service: service, level: "", message: "",
      traceId: nil, text: String(trimmed.prefix(4096)))
    if trimmed.hasPrefix("{"),
      let object = (try? JSONSerialization.jsonObject(with: Data(trimmed.utf8))) as? [String: Any]
    {
      if let time = (object["time"] ?? object["ts"]) as? String, let nanos = Self.nanos(time) {
        line.unixNano = nanos
      }
      line.level = (object["level"] as? String) ?? ""
      line.message = (object["message"] ?? object["msg"]) as? String ?? ""
      line.traceId = (object["trace_id"] as? String).flatMap { $0.isEmpty ? nil : $0.lowercased() }
    } else {
      // `2026-12-07 11:29:39.074 UTC [26196] LOG:  listening …`
      let stamp = trimmed.prefix(23).replacingOccurrences(of: " ", with: "T") + "Z"
      if let nanos = Self.nanos(stamp) { line.unixNano = nanos }
      line.message = trimmed
      for level in ["ERROR", "FATAL", "PANIC", "WARNING", "LOG"]
      where trimmed.contains(" \(level):") {
        line.level = level == "LOG" ? "info" : level.lowercased()
        break
      }
    }
    return line
  }

  static func nanos(_ text: String) -> UInt64? {
    guard
      let date = try? Date(
        text,
        strategy: .iso8601.year().month().day()
          .time(includingFractionalSeconds: true).timeZone(separator: .omitted))
        ?? (try? Date(text, strategy: .iso8601))
    else { return nil }
    // To the microsecond: a Double holds that much of the epoch exactly.
    return UInt64(max(0, (date.timeIntervalSince1970 * 1e6).rounded())) * 1000
  }
}

/// The log lines of the mesh's processes, gathered from their files as they grow (what
/// `meshctl up` started writes to `.trellis/logs/`): searched by trace id, service, level and
/// text. It keeps the newest `capacity` lines; a file seen for the first time is read from its
/// last `firstRead` bytes.
public final class LogCollector: Sendable {
  public struct Source: Sendable, Equatable {
    public var process: String
    public var service: String
    public var path: String

    public init(process: String, service: String, path: String) {
      self.process = process
      self.service = service
      self.path = path
    }
  }

  private struct FileState {
    var offset: UInt64
    var partial = Data()
    var lastTime: UInt64 = 0
  }

  private struct State {
    var files: [String: FileState] = [:]
    var lines: [LogLine] = []
  }

  private let sources: @Sendable () -> [Source]
  private let capacity: Int
  private let firstRead: UInt64
  private let state = Mutex(State())

  public init(
    capacity: Int = 200_000, firstRead: UInt64 = 16 << 20,
    sources: @escaping @Sendable () -> [Source]
  ) {
    self.sources = sources
    self.capacity = capacity
    self.firstRead = firstRead
  }

  /// Reads what the files gained since the last look.
  public func refresh() {
    for source in sources() {
      guard let handle = FileHandle(forReadingAtPath: source.path) else { continue }
      defer { try? handle.close() }
      let size = (try? handle.seekToEnd()) ?? 0
      var file = state.withLock {
        $0.files[source.path] ?? FileState(offset: size > firstRead ? size - firstRead : 0)
      }
      if size < file.offset { file = FileState(offset: 0) }  // truncated or replaced
      guard size > file.offset else { continue }
      try? handle.seek(toOffset: file.offset)
      let data = (try? handle.read(upToCount: Int(size - file.offset))) ?? Data()
      file.offset += UInt64(data.count)
      var chunk = file.partial + data
      var fresh: [LogLine] = []
      if let end = chunk.lastIndex(of: UInt8(ascii: "\n")) {
        let complete = chunk[chunk.startIndex..<end]
        file.partial = Data(chunk[chunk.index(after: end)...])
        for text in String(decoding: complete, as: UTF8.self).split(separator: "\n") {
          if let line = LogLine.parse(
            text, process: source.process, service: source.service, previous: file.lastTime)
          {
            file.lastTime = line.unixNano
            fresh.append(line)
          }
        }
      } else {
        file.partial = chunk
        chunk = Data()
      }
      state.withLock { state in
        state.files[source.path] = file
        state.lines += fresh
        if state.lines.count > capacity { state.lines.removeFirst(state.lines.count - capacity) }
      }
    }
  }

  /// The lines that match every condition given, in time order (the newest `limit`).
  public func search(
    trace: String? = nil, service: String? = nil, level: String? = nil, text: String? = nil,
    limit: Int = 500
  ) -> [LogLine] {
    refresh()
    let trace = trace?.lowercased()
    let lines = state.withLock { $0.lines }
    let matching = lines.filter { line in
      (trace == nil || line.traceId == trace || line.text.contains(trace!))
        && (service == nil || line.service == service || line.process == service)
        && (level == nil || line.level == level)
        && (text == nil || line.text.localizedCaseInsensitiveContains(text!))
    }
    return Array(matching.sorted { $0.unixNano < $1.unixNano }.suffix(limit))
  }
}
