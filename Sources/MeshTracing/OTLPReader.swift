/// Reads an OTLP `ExportTraceServiceRequest` from its protobuf bytes without decoding it into
/// messages: each span comes as its own encoding (what a store keeps) with the few fields a
/// trace store indexes, next to its resource's encoding and service name. What the reader does
/// not need it skips by wire type, as any protobuf decoder does with unknown fields.
///
/// Field numbers, from OTLP's `trace.proto` and `common.proto`: a request's `resource_spans` (1);
/// a `ResourceSpans`' `resource` (1) and `scope_spans` (2); a `Resource`'s `attributes` (1); a
/// `ScopeSpans`' `spans` (2); a `Span`'s `trace_id` (1), `span_id` (2), `parent_span_id` (4),
/// `name` (5), `start_time_unix_nano` (7, fixed64), `end_time_unix_nano` (8, fixed64),
/// `attributes` (9) and `status` (15, whose `code` is 3: 2 is ERROR); a `KeyValue`'s `key` (1)
/// and `value` (2); an `AnyValue`'s `string_value` (1) and `int_value` (3).
public enum OTLPReader {
  /// The bytes are not a protobuf encoding (a length runs past the end, a varint is too long,
  /// a wire type is unknown).
  public struct Malformed: Error, CustomStringConvertible {
    public var description: String
  }

  public struct Resource: Sendable {
    /// The `Resource` message's encoding (empty when the request has none).
    public var bytes: ArraySlice<UInt8>
    /// Its `service.name` attribute, when it is a string.
    public var serviceName: String?
  }

  public struct Span: Sendable {
    /// The `Span` message's encoding.
    public var bytes: ArraySlice<UInt8>
    public var traceID: ArraySlice<UInt8> = []
    public var spanID: ArraySlice<UInt8> = []
    public var parentSpanID: ArraySlice<UInt8> = []
    public var name = ""
    public var startTimeUnixNano: UInt64 = 0
    public var endTimeUnixNano: UInt64 = 0
    /// Its status code is ERROR.
    public var failed = false
    /// Its `rpc.grpc.status_code` attribute, when it is an integer.
    public var grpcStatusCode: Int64?
  }

  /// Calls `body` with every span of the request, in order, and its resource.
  public static func forEachSpan(
    in request: [UInt8], _ body: (Resource, Span) throws -> Void
  ) throws {
    var wire = Wire(request, request.startIndex..<request.endIndex)
    while let (field, type) = try wire.next() {
      guard field == 1, type == 2 else {
        try wire.skip(type)
        continue
      }
      let resourceSpans = try wire.delimited()
      // The resource may follow the spans on the wire: find it first.
      var resource = Resource(bytes: [], serviceName: nil)
      var scan = Wire(request, resourceSpans)
      while let (field, type) = try scan.next() {
        if field == 1, type == 2 {
          let range = try scan.delimited()
          resource = Resource(
            bytes: request[range], serviceName: try serviceName(request, range))
        } else {
          try scan.skip(type)
        }
      }
      var spans = Wire(request, resourceSpans)
      while let (field, type) = try spans.next() {
        guard field == 2, type == 2 else {
          try spans.skip(type)
          continue
        }
        var scope = Wire(request, try spans.delimited())
        while let (field, type) = try scope.next() {
          guard field == 2, type == 2 else {
            try scope.skip(type)
            continue
          }
          try body(resource, try span(request, try scope.delimited()))
        }
      }
    }
  }

  /// The `service.name` attribute of the `Resource` at `range`.
  private static func serviceName(_ bytes: [UInt8], _ range: Range<Int>) throws -> String? {
    var wire = Wire(bytes, range)
    var name: String?
    while let (field, type) = try wire.next() {
      guard field == 1, type == 2 else {
        try wire.skip(type)
        continue
      }
      let (key, value) = try keyValue(bytes, try wire.delimited())
      if key == "service.name", case .string(let text) = value { name = text }
    }
    return name
  }

  private enum Value {
    case string(String)
    case int(Int64)
    case other
  }

  private static func keyValue(_ bytes: [UInt8], _ range: Range<Int>) throws -> (String, Value) {
    var wire = Wire(bytes, range)
    var key = ""
    var value = Value.other
    while let (field, type) = try wire.next() {
      switch (field, type) {
      case (1, 2): key = String(decoding: bytes[try wire.delimited()], as: UTF8.self)
      case (2, 2):
        var any = Wire(bytes, try wire.delimited())
        while let (field, type) = try any.next() {
          switch (field, type) {
          case (1, 2): value = .string(String(decoding: bytes[try any.delimited()], as: UTF8.self))
          case (3, 0): value = .int(Int64(bitPattern: try any.varint()))
          default:
            value = .other
            try any.skip(type)
          }
        }
      default: try wire.skip(type)
      }
    }
    return (key, value)
  }

  private static func span(_ bytes: [UInt8], _ range: Range<Int>) throws -> Span {
    var span = Span(bytes: bytes[range])
    var wire = Wire(bytes, range)
    while let (field, type) = try wire.next() {
      switch (field, type) {
      case (1, 2): span.traceID = bytes[try wire.delimited()]
      case (2, 2): span.spanID = bytes[try wire.delimited()]
      case (4, 2): span.parentSpanID = bytes[try wire.delimited()]
      case (5, 2): span.name = String(decoding: bytes[try wire.delimited()], as: UTF8.self)
      case (7, 1): span.startTimeUnixNano = try wire.fixed64()
      case (8, 1): span.endTimeUnixNano = try wire.fixed64()
      case (9, 2):
        let (key, value) = try keyValue(bytes, try wire.delimited())
        if key == "rpc.grpc.status_code", case .int(let code) = value { span.grpcStatusCode = code }
      case (15, 2):
        var status = Wire(bytes, try wire.delimited())
        while let (field, type) = try status.next() {
          if field == 3, type == 0 {
            span.failed = try status.varint() == 2
          } else {
            try status.skip(type)
          }
        }
      default: try wire.skip(type)
      }
    }
    return span
  }

  /// A position in protobuf bytes, within `end`.
  struct Wire {
    let bytes: [UInt8]
    var index: Int
    let end: Int

    init(_ bytes: [UInt8], _ range: Range<Int>) {
      self.bytes = bytes
      index = range.lowerBound
      end = range.upperBound
    }

    /// The next field's number and wire type; nil at the end.
    mutating func next() throws -> (Int, Int)? {
      guard index < end else { return nil }
      let tag = try varint()
      let field = Int(truncatingIfNeeded: tag >> 3)
      guard field > 0 else { throw Malformed(description: "a field number is 0") }
      return (field, Int(tag & 7))
    }

    mutating func varint() throws -> UInt64 {
      var value: UInt64 = 0
      var shift: UInt64 = 0
      while true {
        guard index < end else { throw Malformed(description: "a varint runs past the end") }
        let byte = bytes[index]
        index += 1
        value |= UInt64(byte & 0x7f) << shift
        if byte & 0x80 == 0 { return value }
        shift += 7
        guard shift < 64 else { throw Malformed(description: "a varint is longer than 10 bytes") }
      }
    }

    mutating func fixed64() throws -> UInt64 {
      guard end - index >= 8 else { throw Malformed(description: "a fixed64 runs past the end") }
      var value: UInt64 = 0
      for offset in 0..<8 { value |= UInt64(bytes[index + offset]) << (8 * UInt64(offset)) }
      index += 8
      return value
    }

    /// A length-delimited field's bytes, as a range of `bytes`.
    mutating func delimited() throws -> Range<Int> {
      let length = try varint()
      guard length <= UInt64(end - index) else {
        throw Malformed(description: "a length of \(length) runs past the end")
      }
      let range = index..<(index + Int(length))
      index = range.upperBound
      return range
    }

    mutating func skip(_ type: Int) throws {
      switch type {
      case 0: _ = try varint()
      case 1: _ = try fixed64()
      case 2: _ = try delimited()
      case 5:
        guard end - index >= 4 else { throw Malformed(description: "a fixed32 runs past the end") }
        index += 4
      default: throw Malformed(description: "wire type \(type) is not one proto3 uses")
      }
    }
  }
}
