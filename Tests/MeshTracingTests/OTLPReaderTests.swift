import MeshTracing
import Testing

/// Reading an export request from its bytes, as the trace store does: against what the mesh's
/// own encoder writes, against fields in an order the encoder does not use, and against bytes
/// that are not a request.
@Suite struct OTLPReaderTests {
  let trace = TraceID(high: 0x0102_0304_0506_0708, low: 0x090a_0b0c_0d0e_0f10)

  func span(_ id: UInt64, parent: UInt64?, failed: Bool = false) -> Span {
    Span(
      context: TraceContext(traceID: trace, spanID: SpanID(id), sampled: true),
      parent: parent.map(SpanID.init), name: "shop.v1.OrderService/CreateOrder", kind: .server,
      start: 1_000 + id, end: 2_000 + id,
      attributes: [.string("rpc.system", "grpc"), .int("rpc.grpc.status_code", failed ? 13 : 0)],
      events: [Span.Event(name: "retry", time: 1_500)], status: failed ? .error("boom") : .unset)
  }

  @Test func readsWhatTheEncoderWrites() throws {
    let first = OTLPEncoder.resourceSpans(
      resource: [.string("service.name", "orders"), .int("pid", 7)],
      spans: [span(1, parent: nil), span(2, parent: 1, failed: true)])
    let second = OTLPEncoder.resourceSpans(resource: [], spans: [span(3, parent: 2)])
    let request = OTLPEncoder.exportRequest([first, second])

    var seen: [(String?, OTLPReader.Span)] = []
    try OTLPReader.forEachSpan(in: request) { resource, span in
      seen.append((resource.serviceName, span))
    }
    #expect(seen.map(\.0) == ["orders", "orders", nil])
    let spans = seen.map(\.1)
    #expect(spans.map { Array($0.spanID) } == [SpanID(1).bytes, SpanID(2).bytes, SpanID(3).bytes])
    #expect(spans.allSatisfy { Array($0.traceID) == trace.bytes })
    #expect(spans.map { Array($0.parentSpanID) } == [[], SpanID(1).bytes, SpanID(2).bytes])
    #expect(spans.map(\.name) == Array(repeating: "shop.v1.OrderService/CreateOrder", count: 3))
    #expect(spans.map(\.startTimeUnixNano) == [1_001, 1_002, 1_003])
    #expect(spans.map(\.endTimeUnixNano) == [2_001, 2_002, 2_003])
    #expect(spans.map(\.failed) == [false, true, false])
    #expect(spans.map(\.grpcStatusCode) == [0, 13, 0])
    // Each span's bytes are its whole encoding: read again alone, they give the same span.
    for span in spans {
      var again: OTLPReader.Span?
      let scope: [UInt8] = [0x12] + varint(UInt64(span.bytes.count)) + Array(span.bytes)
      let alone = OTLPEncoder.exportRequest([[0x12] + varint(UInt64(scope.count)) + scope])
      try OTLPReader.forEachSpan(in: alone) { _, read in again = read }
      #expect(again.map { Array($0.bytes) } == Array(span.bytes))
      #expect(again?.name == span.name && again?.failed == span.failed)
    }
  }

  /// The resource after the spans, a field the reader does not know (a fixed32, a varint):
  /// read as any protobuf decoder reads them.
  @Test func fieldsComeInAnyOrderAndUnknownOnesAreSkipped() throws {
    let spanBytes: [UInt8] =
      [0x2a, 0x03] + Array("get".utf8)  // name
      + [0x0a, 0x10] + trace.bytes  // trace_id
      + [0x12, 0x08] + SpanID(9).bytes  // span_id
      + [0xfd, 0x07, 1, 2, 3, 4]  // field 127, fixed32
      + [0x39] + [5, 0, 0, 0, 0, 0, 0, 0]  // start_time_unix_nano = 5
    let scope: [UInt8] = [0x12] + varint(UInt64(spanBytes.count)) + spanBytes
    let name: [UInt8] = [0x0a, 0x0c] + Array("service.name".utf8)
    let value: [UInt8] = [0x12, 0x07, 0x0a, 0x05] + Array("users".utf8)
    let keyValue: [UInt8] = name + value
    let resource: [UInt8] = [0x0a] + varint(UInt64(keyValue.count)) + keyValue
    let resourceSpans: [UInt8] =
      [0x12] + varint(UInt64(scope.count)) + scope  // scope_spans first
      + [0x18, 0x2a]  // field 3 as a varint: not what the schema says, skipped
      + [0x0a] + varint(UInt64(resource.count)) + resource
    let request: [UInt8] = [0x0a] + varint(UInt64(resourceSpans.count)) + resourceSpans
    var seen: [(String?, OTLPReader.Span)] = []
    try OTLPReader.forEachSpan(in: request) { seen.append(($0.serviceName, $1)) }
    #expect(seen.count == 1)
    #expect(seen.first?.0 == "users")
    #expect(seen.first?.1.name == "get" && seen.first?.1.startTimeUnixNano == 5)
    #expect(seen.first.map { Array($0.1.spanID) } == SpanID(9).bytes)
  }

  @Test func bytesThatAreNotARequestAreRefused() {
    for bytes: [UInt8] in [
      [0x0a, 0x05, 0x12, 0x03],  // a length past the end
      [0x0a, 0x02, 0x12, 0xff],  // a varint cut short
      [0x0b],  // wire type 3 (a group)
      [0x00, 0x00],  // field number 0
      [0x0a] + Array(repeating: 0xff, count: 11),  // a varint longer than 10 bytes
    ] {
      #expect(throws: OTLPReader.Malformed.self, "\(bytes)") {
        try OTLPReader.forEachSpan(in: bytes) { _, _ in }
      }
    }
    // Nothing at all is a request with no spans.
    #expect(throws: Never.self) { try OTLPReader.forEachSpan(in: []) { _, _ in } }
  }

  func varint(_ value: UInt64) -> [UInt8] {
    var value = value
    var bytes: [UInt8] = []
    while value >= 0x80 {
      bytes.append(UInt8(value & 0x7f) | 0x80)
      value >>= 7
    }
    return bytes + [UInt8(value)]
  }
}
