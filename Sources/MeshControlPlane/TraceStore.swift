import Foundation
import GRDB
import MeshConfig
import MeshProtos
import MeshTracing

/// The mesh's spans, as sidecars and apps export them, in SQLite (`traces.sqlite`, apart from
/// the control plane's own state, so a flood of spans never slows a config write). Every span
/// is kept whole (its OTLP bytes and its resource's), with the columns queries filter on; a
/// row per trace sums its spans up. Spans are telemetry, not state: written with
/// `synchronous = NORMAL`, and the oldest traces go first once the store holds more than
/// `maximumSpans` or they are older than `maximumAge`.
public final class TraceStore: Sendable {
  public struct Retention: Sendable {
    public var maximumSpans: Int
    public var maximumAge: Duration

    public init(maximumSpans: Int = 200_000, maximumAge: Duration = .seconds(24 * 3600)) {
      self.maximumSpans = maximumSpans
      self.maximumAge = maximumAge
    }
  }

  private let database: DatabasePool
  public let retention: Retention

  public init(directory: String, retention: Retention = Retention()) throws {
    // A page cache of 32 MB (SQLite's default is 2 MB): the indexes by trace id, where every
    // span lands on a page of its own, stay in memory rather than being read back for each.
    database = try SQLiteControlStore.open(
      "traces.sqlite", in: directory, synchronous: "NORMAL", cacheKilobytes: 32_768)
    self.retention = retention
    try Self.migrator.migrate(database)
  }

  private static var migrator: DatabaseMigrator {
    var migrator = DatabaseMigrator()
    migrator.registerMigration("v1") { db in
      try db.execute(
        sql: """
          CREATE TABLE spans (
            trace_id BLOB NOT NULL,
            span_id BLOB NOT NULL,
            parent_span_id BLOB,
            service TEXT NOT NULL,
            name TEXT NOT NULL,
            start_ns INTEGER NOT NULL,
            end_ns INTEGER NOT NULL,
            error INTEGER NOT NULL,
            resource BLOB NOT NULL,
            span BLOB NOT NULL,
            PRIMARY KEY (trace_id, span_id)
          ) WITHOUT ROWID;
          CREATE INDEX spans_by_service ON spans (service, trace_id);
          CREATE INDEX spans_by_name ON spans (name, trace_id);
          CREATE TABLE traces (
            trace_id BLOB PRIMARY KEY,
            start_ns INTEGER NOT NULL,
            end_ns INTEGER NOT NULL,
            span_count INTEGER NOT NULL,
            error INTEGER NOT NULL,
            root_service TEXT,
            root_name TEXT,
            root_status TEXT
          ) WITHOUT ROWID;
          CREATE INDEX traces_by_start ON traces (start_ns);
          """)
    }
    // Rows in arrival order, and indexes whose keys grow with time where they can. Keyed by
    // trace id (random), every span landed on a page of its own in each of four trees — and
    // whole rows, resource and span bytes included, in two of them — so each batch rewrote
    // hundreds of pages to the WAL. Now only the two indexes by trace id take random keys, and
    // their entries are small.
    migrator.registerMigration("v2") { db in
      try db.execute(
        sql: """
          CREATE TABLE spans_v2 (
            trace_id BLOB NOT NULL,
            span_id BLOB NOT NULL,
            parent_span_id BLOB,
            service TEXT NOT NULL,
            name TEXT NOT NULL,
            start_ns INTEGER NOT NULL,
            end_ns INTEGER NOT NULL,
            error INTEGER NOT NULL,
            resource BLOB NOT NULL,
            span BLOB NOT NULL
          );
          INSERT INTO spans_v2 SELECT trace_id, span_id, parent_span_id, service, name, start_ns,
            end_ns, error, resource, span FROM spans ORDER BY start_ns;
          DROP TABLE spans;
          ALTER TABLE spans_v2 RENAME TO spans;
          CREATE UNIQUE INDEX spans_by_trace ON spans (trace_id, span_id);
          CREATE INDEX spans_by_service ON spans (service, start_ns, trace_id);
          CREATE INDEX spans_by_name ON spans (name, start_ns, trace_id);
          CREATE TABLE traces_v2 (
            trace_id BLOB NOT NULL UNIQUE,
            start_ns INTEGER NOT NULL,
            end_ns INTEGER NOT NULL,
            span_count INTEGER NOT NULL,
            error INTEGER NOT NULL,
            root_service TEXT,
            root_name TEXT,
            root_status TEXT
          );
          INSERT INTO traces_v2 SELECT trace_id, start_ns, end_ns, span_count, error, root_service,
            root_name, root_status FROM traces ORDER BY start_ns;
          DROP TABLE traces;
          ALTER TABLE traces_v2 RENAME TO traces;
          CREATE INDEX traces_by_start ON traces (start_ns);
          """)
    }
    return migrator
  }

  /// What the spans of one export add to a trace's row.
  private struct TraceUpdate {
    var start: Int64
    var end: Int64
    var spans = 0
    var error = 0
    var rootService: String?
    var rootName: String?
    var rootStatus: String?
  }

  /// Stores what an export carries; returns how many spans were refused (ids of the wrong
  /// length) and why.
  @discardableResult
  public func store(_ request: OTLPExportRequest) throws -> (rejected: Int, reason: String?) {
    try store(encoded: try request.serializedBytes())
  }

  /// Stores what an export carries, read from its encoding (`OTLPReader`): each span is kept as
  /// it came, never decoded and encoded again. A trace's row is written once per export, with
  /// all its new spans. Throws `OTLPReader.Malformed` for bytes that are not a request.
  @discardableResult
  public func store(encoded request: [UInt8]) throws -> (rejected: Int, reason: String?) {
    var rejected = 0
    var reason: String?
    try database.write { db in
      var traces: [Data: TraceUpdate] = [:]
      var order: [Data] = []
      var resource: (bytes: ArraySlice<UInt8>, data: Data) = ([], Data())
      try OTLPReader.forEachSpan(in: request) { resourceSpans, span in
        guard span.traceID.count == 16, span.spanID.count == 8,
          span.parentSpanID.isEmpty || span.parentSpanID.count == 8,
          span.traceID.contains(where: { $0 != 0 }), span.spanID.contains(where: { $0 != 0 })
        else {
          rejected += 1
          reason = "a span's trace id must be 16 bytes and its span id 8, neither all zeros"
          return
        }
        // Spans of one resource come together: its bytes are copied once for them all.
        if resourceSpans.bytes.startIndex != resource.bytes.startIndex
          || resourceSpans.bytes.count != resource.bytes.count
        {
          resource = (resourceSpans.bytes, Data(resourceSpans.bytes))
        }
        let service = resourceSpans.serviceName ?? "unknown"
        let traceID = Data(span.traceID)
        let start = Int64(bitPattern: span.startTimeUnixNano)
        let end = max(start, Int64(bitPattern: span.endTimeUnixNano))
        let error = span.failed ? 1 : 0
        try db.cachedStatement(
          sql: """
            INSERT OR IGNORE INTO spans
              (trace_id, span_id, parent_span_id, service, name, start_ns, end_ns, error,
               resource, span)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """
        ).execute(
          arguments: [
            traceID, Data(span.spanID), span.parentSpanID.isEmpty ? nil : Data(span.parentSpanID),
            service, span.name, start, end, error, resource.data, Data(span.bytes),
          ])
        guard db.changesCount > 0 else { return }  // the same span sent twice
        var update =
          traces[traceID]
          ?? {
            order.append(traceID)
            return TraceUpdate(start: start, end: end)
          }()
        update.start = min(update.start, start)
        update.end = max(update.end, end)
        update.spans += 1
        update.error = max(update.error, error)
        if span.parentSpanID.isEmpty {
          update.rootService = service
          update.rootName = span.name
          update.rootStatus = span.grpcStatusCode.map { GRPCStatusName.of(Int($0)) }
        }
        traces[traceID] = update
      }
      for id in order {
        guard let update = traces[id] else { continue }
        try db.cachedStatement(
          sql: """
            INSERT INTO traces (trace_id, start_ns, end_ns, span_count, error, root_service,
                                root_name, root_status)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (trace_id) DO UPDATE SET
              start_ns = MIN(start_ns, excluded.start_ns),
              end_ns = MAX(end_ns, excluded.end_ns),
              span_count = span_count + excluded.span_count,
              error = MAX(error, excluded.error),
              root_service = COALESCE(excluded.root_service, root_service),
              root_name = COALESCE(excluded.root_name, root_name),
              root_status = COALESCE(excluded.root_status, root_status)
            """
        ).execute(
          arguments: [
            id, update.start, update.end, update.spans, update.error, update.rootService,
            update.rootName, update.rootStatus,
          ])
      }
    }
    return (rejected, reason)
  }

  /// Drops the oldest traces beyond the retention limits; returns how many spans went.
  @discardableResult
  public func enforceRetention(now: Date = Date()) throws -> Int {
    try database.write { db in
      var removed = 0
      let cutoff = Int64((now.timeIntervalSince1970 - retention.maximumAge.timeInterval) * 1e9)
      removed += try deleteTraces(
        db, where: "start_ns < ?", arguments: [cutoff])
      var stored = try Int.fetchOne(db, sql: "SELECT COALESCE(SUM(span_count), 0) FROM traces") ?? 0
      while stored > retention.maximumSpans {
        // A tenth of the limit at a time, so the store is not trimmed on every export.
        let excess = stored - retention.maximumSpans + retention.maximumSpans / 10
        let rows = try Row.fetchAll(
          db.cachedStatement(
            sql: "SELECT trace_id, span_count FROM traces ORDER BY start_ns LIMIT ?"),
          arguments: [max(1, excess / 2)])
        var ids: [Data] = []
        var spans = 0
        for row in rows where spans < excess {
          ids.append(row["trace_id"])
          spans += row["span_count"] as Int
        }
        guard !ids.isEmpty else { break }
        let marks = ids.map { _ in "?" }.joined(separator: ",")
        let deleted = try deleteTraces(
          db, where: "trace_id IN (\(marks))", arguments: StatementArguments(ids))
        removed += deleted
        stored -= deleted
      }
      return removed
    }
  }

  private func deleteTraces(
    _ db: Database, where condition: String, arguments: StatementArguments
  )
    throws -> Int
  {
    let ids = try Data.fetchAll(
      db, sql: "SELECT trace_id FROM traces WHERE \(condition)", arguments: arguments)
    guard !ids.isEmpty else { return 0 }
    var spans = 0
    for id in ids {
      try db.cachedStatement(sql: "DELETE FROM spans WHERE trace_id = ?").execute(arguments: [id])
      spans += db.changesCount
      try db.cachedStatement(sql: "DELETE FROM traces WHERE trace_id = ?").execute(arguments: [id])
    }
    return spans
  }

  public var storedSpans: Int {
    get throws {
      try database.read { db in
        try Int.fetchOne(db, sql: "SELECT COALESCE(SUM(span_count), 0) FROM traces") ?? 0
      }
    }
  }

  // MARK: Queries

  /// The newest traces `filter` matches, newest first.
  public func list(_ filter: Trellis_Mesh_V1_TraceFilter) throws -> [Trellis_Mesh_V1_TraceSummary] {
    try database.read { db in
      let (condition, arguments) = Self.condition(filter)
      let limit = filter.limit == 0 ? 20 : Int(min(filter.limit, 10_000))
      let rows = try Row.fetchAll(
        db,
        sql: """
          SELECT trace_id, start_ns, end_ns, span_count, error, root_service, root_name,
                 root_status
          FROM traces WHERE \(condition) ORDER BY start_ns DESC LIMIT \(limit)
          """, arguments: arguments)
      return try rows.map { row in
        var summary = Trellis_Mesh_V1_TraceSummary()
        summary.traceID = row["trace_id"]
        let start: Int64 = row["start_ns"]
        summary.startUnixNano = UInt64(max(0, start))
        summary.durationNanos = (row["end_ns"] as Int64) - start
        summary.spanCount = UInt32(row["span_count"] as Int)
        summary.error = (row["error"] as Int) != 0
        if let service: String = row["root_service"], let name: String = row["root_name"] {
          summary.rootService = service
          summary.rootName = name
          summary.status = row["root_status"] ?? ""
        } else if let earliest = try Row.fetchOne(
          db,
          sql: "SELECT service, name FROM spans WHERE trace_id = ? ORDER BY start_ns LIMIT 1",
          arguments: [summary.traceID])
        {
          // The root span never arrived (it was not sampled here, or was dropped).
          summary.rootService = earliest["service"]
          summary.rootName = earliest["name"]
        }
        return summary
      }
    }
  }

  /// Whole traces, their spans grouped by resource: the ones named, or those `filter` matches.
  public func traces(ids: [Data], filter: Trellis_Mesh_V1_TraceFilter) throws -> [OTLPExportRequest]
  {
    try database.read { db in
      var wanted = ids
      if wanted.isEmpty {
        let (condition, arguments) = Self.condition(filter)
        let limit = filter.limit == 0 ? 20 : Int(min(filter.limit, 10_000))
        wanted = try Data.fetchAll(
          db,
          sql:
            "SELECT trace_id FROM traces WHERE \(condition) ORDER BY start_ns DESC LIMIT \(limit)",
          arguments: arguments)
      }
      return try wanted.compactMap { id in
        let rows = try Row.fetchAll(
          db.cachedStatement(
            sql: "SELECT resource, span FROM spans WHERE trace_id = ? ORDER BY start_ns"),
          arguments: [id])
        guard !rows.isEmpty else { return nil }
        var byResource: [(Data, [OTLPSpan])] = []
        for row in rows {
          let resource: Data = row["resource"]
          let span = try OTLPSpan(serializedBytes: row["span"] as Data)
          if let index = byResource.firstIndex(where: { $0.0 == resource }) {
            byResource[index].1.append(span)
          } else {
            byResource.append((resource, [span]))
          }
        }
        var request = OTLPExportRequest()
        for (resource, spans) in byResource {
          var resourceSpans = OTLPResourceSpans()
          resourceSpans.resource = try .init(serializedBytes: resource)
          var scope = Opentelemetry_Proto_Trace_V1_ScopeSpans()
          scope.scope.name = "trellis"
          scope.spans = spans
          resourceSpans.scopeSpans = [scope]
          request.resourceSpans.append(resourceSpans)
        }
        return request
      }
    }
  }

  /// The SQL condition on `traces` a filter makes.
  private static func condition(
    _ filter: Trellis_Mesh_V1_TraceFilter
  ) -> (
    String, StatementArguments
  ) {
    var parts = ["1"]
    var arguments: [(any DatabaseValueConvertible)?] = []
    if !filter.service.isEmpty {
      parts.append("trace_id IN (SELECT trace_id FROM spans WHERE service = ?)")
      arguments.append(filter.service)
    }
    if !filter.method.isEmpty {
      let method = filter.method.hasPrefix("/") ? String(filter.method.dropFirst()) : filter.method
      if method.hasSuffix("/*") {
        parts.append("trace_id IN (SELECT trace_id FROM spans WHERE name LIKE ? ESCAPE '\\')")
        arguments.append(likeEscaped(String(method.dropLast())) + "%")
      } else {
        parts.append("trace_id IN (SELECT trace_id FROM spans WHERE name = ?)")
        arguments.append(method)
      }
    }
    if filter.minDurationNanos > 0 {
      parts.append("end_ns - start_ns >= ?")
      arguments.append(filter.minDurationNanos)
    }
    if filter.errorsOnly { parts.append("error = 1") }
    if filter.sinceUnixNano > 0 {
      parts.append("start_ns >= ?")
      arguments.append(Int64(bitPattern: filter.sinceUnixNano))
    }
    return (parts.joined(separator: " AND "), StatementArguments(arguments))
  }

  private static func likeEscaped(_ text: String) -> String {
    text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "%", with: "\\%")
      .replacingOccurrences(of: "_", with: "\\_")
  }
}
