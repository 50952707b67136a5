import Foundation
import MeshProtos
import MeshTracing
import Testing

/// The span exporter's own protobuf writer against SwiftProtobuf's generated OTLP types: what
/// it writes decodes to the same span, field by field, and is byte for byte what SwiftProtobuf
/// writes for that message.
@Suite struct OTLPEncodingTests {
  let trace = TraceID(hex: "4bf92f3577b34da6a3ce929d0e0e4736")!

  func spans() -> [MeshTracing.Span] {
    [
      Span(
        context: TraceContext(
          traceID: trace, spanID: SpanID(hex: "00f067aa0ba902b7")!, sampled: true,
          traceState: "rojo=00f067aa0ba902b7"),
        parent: SpanID(hex: "b7ad6b7169203331")!, name: "shop.v1.OrderService/CreateOrder",
        kind: .client, start: 1_796_145_625_185_236_701, end: 1_796_145_625_282_278_928,
        attributes: [
          .string("rpc.system", "grpc"), .int("rpc.grpc.status_code", 14),
          .int("negative", -3), .bool("flag", true), Attribute("ratio", .double(0.25)),
          .string("unicode", "naïve ✓ 日本"), .string("long", String(repeating: "x", count: 300)),
        ],
        events: [
          Span.Event(
            name: "retry", time: 1_796_145_625_200_000_000,
            attributes: [.int("attempt", 2), .string("reason", "UNAVAILABLE")]),
          Span.Event(name: "deadline_exceeded", time: 1_796_145_625_280_000_000),
        ],
        status: .error("UNAVAILABLE: no endpoint"), parentIsRemote: true),
      Span(
        context: TraceContext(traceID: trace, spanID: SpanID(7), sampled: false), parent: nil,
        name: "work", kind: .internal, start: 5, end: 9, status: .ok),
      Span(
        context: TraceContext(traceID: trace, spanID: SpanID(8), sampled: true), parent: nil,
        name: "", kind: .server, start: 0, end: 0, status: .error("")),
    ]
  }

  @Test func theEncodingIsOTLP() throws {
    let resource: [Attribute] = [
      .string("service.name", "orders"), .string("trellis.component", "sidecar"),
    ]
    let bytes = OTLPEncoder.exportRequest([
      OTLPEncoder.resourceSpans(resource: resource, spans: spans())
    ])
    let decoded = try OTLPExportRequest(serializedBytes: bytes)
    let reference: [UInt8] = try decoded.serializedBytes()
    let firstDifference = zip(reference, bytes).enumerated().first { $0.element.0 != $0.element.1 }?
      .offset
    #expect(
      reference == bytes,
      "SwiftProtobuf writes \(reference.count) bytes, first different at \(firstDifference.map(String.init) ?? "the end")"
    )

    let resourceSpans = try #require(decoded.resourceSpans.first)
    #expect(resourceSpans.resource.attributes.map(\.key) == ["service.name", "trellis.component"])
    #expect(resourceSpans.resource.attributes[0].value.stringValue == "orders")
    let scope = try #require(resourceSpans.scopeSpans.first)
    #expect(scope.scope.name == "trellis")
    #expect(scope.spans.count == 3)

    let span = scope.spans[0]
    #expect(span.traceID == Data(trace.bytes))
    #expect(span.spanID == Data(SpanID(hex: "00f067aa0ba902b7")!.bytes))
    #expect(span.parentSpanID == Data(SpanID(hex: "b7ad6b7169203331")!.bytes))
    #expect(span.traceState == "rojo=00f067aa0ba902b7")
    #expect(span.name == "shop.v1.OrderService/CreateOrder")
    #expect(span.kind == .client)
    #expect(span.startTimeUnixNano == 1_796_145_625_185_236_701)
    #expect(span.endTimeUnixNano == 1_796_145_625_282_278_928)
    #expect(span.flags == 0x301)
    let attributes = Dictionary(uniqueKeysWithValues: span.attributes.map { ($0.key, $0.value) })
    #expect(attributes["rpc.system"]?.stringValue == "grpc")
    #expect(attributes["rpc.grpc.status_code"]?.intValue == 14)
    #expect(attributes["negative"]?.intValue == -3)
    #expect(attributes["flag"]?.boolValue == true)
    #expect(attributes["ratio"]?.doubleValue == 0.25)
    #expect(attributes["unicode"]?.stringValue == "naïve ✓ 日本")
    #expect(attributes["long"]?.stringValue.count == 300)
    #expect(span.events.map(\.name) == ["retry", "deadline_exceeded"])
    #expect(span.events[0].timeUnixNano == 1_796_145_625_200_000_000)
    #expect(span.events[0].attributes.map(\.key) == ["attempt", "reason"])
    #expect(span.events[0].attributes[0].value.intValue == 2)
    #expect(span.status.code == .error && span.status.message == "UNAVAILABLE: no endpoint")

    let root = scope.spans[1]
    #expect(root.parentSpanID.isEmpty && root.kind == .internal && root.flags == 0x100)
    #expect(root.status.code == .ok && root.attributes.isEmpty)
    #expect(scope.spans[2].status.code == .error && scope.spans[2].kind == .server)
  }

  /// Requests concatenated are one request: how posted spans travel on with the sidecar's own.
  @Test func requestsConcatenate() throws {
    let one = OTLPEncoder.exportRequest([
      OTLPEncoder.resourceSpans(resource: [.string("service.name", "a")], spans: spans())
    ])
    let two = OTLPEncoder.exportRequest([
      OTLPEncoder.resourceSpans(resource: [.string("service.name", "b")], spans: [])
    ])
    let both = try OTLPExportRequest(serializedBytes: one + two)
    #expect(both.resourceSpans.map { $0.resource.attributes[0].value.stringValue } == ["a", "b"])
  }
}
