import Foundation
import GRDB
import MeshProtos
import Testing

@testable import MeshControlPlane

/// The trace store on a real SQLite file: what an export stores, what the filters find, what
/// retention drops, and a store of the first schema carried over with its traces.
@Suite struct TraceStoreTests {
  let directory: String

  init() throws {
    directory =
      FileManager.default.temporaryDirectory
      .appendingPathComponent("trace-store-\(UUID().uuidString.prefix(8))").path
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
  }

  /// A span of `service`, `milliseconds` long from `start` (ms since the epoch).
  static func span(
    trace: UInt8, span: UInt8, parent: UInt8? = nil, name: String, start: UInt64,
    milliseconds: UInt64, failed: Bool = false
  ) -> OTLPSpan {
    var value = OTLPSpan()
    value.traceID = Data(repeating: trace, count: 16)
    value.spanID = Data(repeating: span, count: 8)
    if let parent { value.parentSpanID = Data(repeating: parent, count: 8) }
    value.name = name
    value.startTimeUnixNano = start * 1_000_000
    value.endTimeUnixNano = (start + milliseconds) * 1_000_000
    if failed { value.status.code = .error }
    return value
  }

  static func export(_ spans: [(service: String, span: OTLPSpan)]) -> OTLPExportRequest {
    var request = OTLPExportRequest()
    for (service, span) in spans {
      var resource = OTLPResourceSpans()
      var name = Opentelemetry_Proto_Common_V1_KeyValue()
      name.key = "service.name"
      name.value.stringValue = service
      resource.resource.attributes = [name]
      resource.scopeSpans = [Opentelemetry_Proto_Trace_V1_ScopeSpans()]
      resource.scopeSpans[0].spans = [span]
      request.resourceSpans.append(resource)
    }
    return request
  }

  /// An order (gateway → orders → payments, payments failing) and, later, a user's read.
  static let order = export([
    ("gateway", span(trace: 1, span: 1, name: "POST /v1/orders", start: 1_000, milliseconds: 30)),
    (
      "orders",
      span(
        trace: 1, span: 2, parent: 1, name: "shop.v1.OrderService/CreateOrder", start: 1_001,
        milliseconds: 28)
    ),
    (
      "payments",
      span(
        trace: 1, span: 3, parent: 2, name: "shop.v1.PaymentService/Charge", start: 1_002,
        milliseconds: 20, failed: true)
    ),
  ])
  static let read = export([
    (
      "users",
      span(trace: 2, span: 9, name: "shop.v1.UserService/GetUser", start: 2_000, milliseconds: 3)
    )
  ])

  func filter(_ body: (inout Trellis_Mesh_V1_TraceFilter) -> Void) -> Trellis_Mesh_V1_TraceFilter {
    var filter = Trellis_Mesh_V1_TraceFilter()
    body(&filter)
    return filter
  }

  @Test func spansAreStoredAndFoundByEachFilter() throws {
    let store = try TraceStore(directory: directory)
    try store.store(Self.order)
    try store.store(Self.read)
    // The same spans again (an exporter's retry) change nothing.
    try store.store(Self.order)
    #expect(try store.storedSpans == 4)

    let all = try store.list(filter { _ in })
    #expect(all.map(\.traceID) == [Data(repeating: 2, count: 16), Data(repeating: 1, count: 16)])
    let order = try #require(all.last)
    #expect(order.spanCount == 3 && order.error && order.durationNanos == 30_000_000)
    #expect(order.rootService == "gateway" && order.rootName == "POST /v1/orders")

    func found(_ body: (inout Trellis_Mesh_V1_TraceFilter) -> Void) throws -> [UInt8] {
      try store.list(filter(body)).map { $0.traceID.first ?? 0 }
    }
    #expect(try found { $0.service = "payments" } == [1])
    #expect(try found { $0.service = "users" } == [2])
    #expect(try found { $0.service = "nobody" } == [])
    #expect(try found { $0.method = "shop.v1.PaymentService/Charge" } == [1])
    #expect(try found { $0.method = "/shop.v1.UserService/*" } == [2])
    #expect(try found { $0.errorsOnly = true } == [1])
    #expect(try found { $0.minDurationNanos = 10_000_000 } == [1])
    #expect(try found { $0.sinceUnixNano = 1_500_000_000 } == [2])
    #expect(try found { $0.limit = 1 } == [2])

    let whole = try store.traces(ids: [Data(repeating: 1, count: 16)], filter: .init())
    let services = whole.first?.resourceSpans.map {
      $0.resource.attributes.first { $0.key == "service.name" }?.value.stringValue ?? ""
    }
    #expect(services == ["gateway", "orders", "payments"])
    #expect(whole.first?.resourceSpans.flatMap(\.scopeSpans).flatMap(\.spans).count == 3)
  }

  @Test func retentionDropsTheOldestTracesFirst() throws {
    let store = try TraceStore(
      directory: directory, retention: .init(maximumSpans: 10, maximumAge: .seconds(3600)))
    let now = UInt64(Date().timeIntervalSince1970 * 1000)
    for index in 0..<20 {
      try store.store(
        Self.export([
          (
            "users",
            Self.span(
              trace: UInt8(index + 1), span: 1, name: "shop.v1.UserService/GetUser",
              start: now - 60_000 + UInt64(index), milliseconds: 1)
          )
        ]))
    }
    // An old one, past the maximum age.
    try store.store(
      Self.export([
        (
          "users",
          Self.span(trace: 99, span: 1, name: "old", start: now - 7_200_000, milliseconds: 1)
        )
      ]))
    try store.enforceRetention()
    let kept = try store.list(filter { $0.limit = 100 }).map { Int($0.traceID.first ?? 0) }
    #expect(kept.count <= 10 && !kept.isEmpty)
    #expect(kept == Array((21 - kept.count)...20).reversed(), "\(kept)")
  }

  /// A store written by an earlier control plane (the first schema, keyed by trace id) is
  /// carried over to the current one with its traces, and goes on taking spans.
  @Test func aStoreOfTheFirstSchemaKeepsItsTraces() throws {
    let file = "\(directory)/traces.sqlite"
    let old = try DatabaseQueue(path: file)
    try old.write { db in
      try db.execute(
        sql: """
          CREATE TABLE grdb_migrations (identifier TEXT NOT NULL PRIMARY KEY);
          INSERT INTO grdb_migrations VALUES ('v1');
          CREATE TABLE spans (
            trace_id BLOB NOT NULL, span_id BLOB NOT NULL, parent_span_id BLOB,
            service TEXT NOT NULL, name TEXT NOT NULL, start_ns INTEGER NOT NULL,
            end_ns INTEGER NOT NULL, error INTEGER NOT NULL, resource BLOB NOT NULL,
            span BLOB NOT NULL, PRIMARY KEY (trace_id, span_id)
          ) WITHOUT ROWID;
          CREATE INDEX spans_by_service ON spans (service, trace_id);
          CREATE INDEX spans_by_name ON spans (name, trace_id);
          CREATE TABLE traces (
            trace_id BLOB PRIMARY KEY, start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL,
            span_count INTEGER NOT NULL, error INTEGER NOT NULL, root_service TEXT,
            root_name TEXT, root_status TEXT
          ) WITHOUT ROWID;
          CREATE INDEX traces_by_start ON traces (start_ns);
          """)
      let span = Self.order.resourceSpans[0].scopeSpans[0].spans[0]
      try db.execute(
        sql: "INSERT INTO spans VALUES (?, ?, NULL, 'gateway', ?, ?, ?, 0, ?, ?)",
        arguments: [
          span.traceID, span.spanID, span.name, Int64(span.startTimeUnixNano),
          Int64(span.endTimeUnixNano), try Self.order.resourceSpans[0].resource.serializedData(),
          try span.serializedData(),
        ])
      try db.execute(
        sql: "INSERT INTO traces VALUES (?, ?, ?, 1, 0, 'gateway', ?, NULL)",
        arguments: [
          span.traceID, Int64(span.startTimeUnixNano), Int64(span.endTimeUnixNano), span.name,
        ])
    }
    try old.close()

    let store = try TraceStore(directory: directory)
    var listed = try store.list(filter { _ in })
    #expect(
      listed.count == 1 && listed.first?.spanCount == 1 && listed.first?.rootService == "gateway")
    // The rest of the order arrives: the same trace, its other spans.
    try store.store(Self.order)
    listed = try store.list(filter { _ in })
    #expect(listed.count == 1 && listed.first?.spanCount == 3 && listed.first?.error == true)
    #expect(try store.list(filter { $0.service = "payments" }).count == 1)
  }
}
