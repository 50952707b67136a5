/// Writes spans as OTLP's protobuf (`opentelemetry.proto.trace.v1.ResourceSpans`) straight
/// from the mesh's span model: sizes are worked out first, so every byte is written once into
/// one buffer, with no message objects in between — what keeps recording every call cheap.
/// Field numbers are OTLP's (`proto/opentelemetry/proto/trace/v1/trace.proto`); fields at their
/// default value are left out, as proto3 writes them, so the bytes are what SwiftProtobuf would
/// write for the same message.
public enum OTLPEncoder {
  /// One `ResourceSpans`: the resource's attributes and the spans, under the `trellis` scope.
  public static func resourceSpans(resource: [Attribute], spans: [Span]) -> [UInt8] {
    let resourceBody = resource.reduce(0) { $0 + field(keyValueSize($1)) }
    let spanSizes = spans.map(spanSize)
    let scope = field(scopeName.count)
    let scopeBody = field(scope) + spanSizes.reduce(0) { $0 + field($1) }
    var out = Writer(capacity: field(resourceBody) + field(scopeBody))
    out.message(1, size: resourceBody)
    for attribute in resource { out.keyValue(1, attribute) }
    out.message(2, size: scopeBody)
    out.message(1, size: scope)
    out.bytes(1, scopeName)
    for (span, size) in zip(spans, spanSizes) {
      out.message(2, size: size)
      out.span(span)
    }
    return out.bytes
  }

  /// An `ExportTraceServiceRequest` of `ResourceSpans` already encoded.
  public static func exportRequest(_ resourceSpans: [[UInt8]]) -> [UInt8] {
    var out = Writer(capacity: resourceSpans.reduce(0) { $0 + field($1.count) })
    for encoded in resourceSpans {
      out.message(1, size: encoded.count)
      out.raw(encoded)
    }
    return out.bytes
  }

  private static let scopeName = Array("trellis".utf8)

  // MARK: Sizes

  /// A length-delimited field of `size` bytes, with its tag (field numbers under 16).
  static func field(_ size: Int) -> Int { 1 + varintSize(UInt64(size)) + size }

  static func varintSize(_ value: UInt64) -> Int {
    var value = value
    var size = 1
    while value >= 0x80 {
      value >>= 7
      size += 1
    }
    return size
  }

  static func anyValueSize(_ value: Attribute.Value) -> Int {
    switch value {
    case .string(let text): field(text.utf8.count)
    case .bool: 2
    case .int(let number): 1 + varintSize(UInt64(bitPattern: number))
    case .double: 9
    }
  }

  /// A string field, left out when empty.
  static func stringSize(_ text: String) -> Int {
    text.isEmpty ? 0 : field(text.utf8.count)
  }

  /// A fixed64 field, left out when zero.
  static func fixed64Size(_ value: UInt64) -> Int { value == 0 ? 0 : 9 }

  static func keyValueSize(_ attribute: Attribute) -> Int {
    stringSize(attribute.key) + field(anyValueSize(attribute.value))
  }

  static func eventSize(_ event: Span.Event) -> Int {
    fixed64Size(event.time) + stringSize(event.name)
      + event.attributes.reduce(0) { $0 + field(keyValueSize($1)) }
  }

  static func statusSize(_ status: Span.Status) -> Int {
    switch status {
    case .unset: 0
    case .ok: 2
    case .error(let message): stringSize(message) + 2
    }
  }

  static func spanSize(_ span: Span) -> Int {
    var size =
      field(16) + field(8) + stringSize(span.name) + 2 + fixed64Size(span.start)
      + fixed64Size(span.end) + 6
    if let state = span.context.traceState { size += stringSize(state) }
    if span.parent != nil { size += field(8) }
    for attribute in span.attributes { size += field(keyValueSize(attribute)) }
    for event in span.events { size += field(eventSize(event)) }
    let status = statusSize(span.status)
    if status > 0 { size += field(status) }
    return size
  }

  // MARK: Writing

  struct Writer {
    var bytes: [UInt8] = []

    init(capacity: Int) { bytes.reserveCapacity(capacity) }

    mutating func varint(_ value: UInt64) {
      var value = value
      while value >= 0x80 {
        bytes.append(UInt8(truncatingIfNeeded: value) | 0x80)
        value >>= 7
      }
      bytes.append(UInt8(value))
    }

    mutating func tag(_ number: Int, _ wireType: UInt8) {
      varint(UInt64(number) << 3 | UInt64(wireType))
    }

    mutating func message(_ number: Int, size: Int) {
      tag(number, 2)
      varint(UInt64(size))
    }

    mutating func bytes(_ number: Int, _ value: [UInt8]) {
      message(number, size: value.count)
      bytes += value
    }

    mutating func string(_ number: Int, _ value: String) {
      guard !value.isEmpty else { return }
      message(number, size: value.utf8.count)
      bytes += value.utf8
    }

    /// A string of a `oneof`: written even when empty, since it says which member is set.
    mutating func member(_ number: Int, _ value: String) {
      message(number, size: value.utf8.count)
      bytes += value.utf8
    }

    mutating func raw(_ value: [UInt8]) { bytes += value }

    mutating func fixed64(_ number: Int, _ value: UInt64, always: Bool = false) {
      guard value != 0 || always else { return }
      tag(number, 1)
      for shift in stride(from: 0, to: 64, by: 8) {
        bytes.append(UInt8(truncatingIfNeeded: value >> UInt64(shift)))
      }
    }

    mutating func fixed32(_ number: Int, _ value: UInt32) {
      tag(number, 5)
      for shift in stride(from: 0, to: 32, by: 8) {
        bytes.append(UInt8(truncatingIfNeeded: value >> UInt32(shift)))
      }
    }

    mutating func keyValue(_ number: Int, _ attribute: Attribute) {
      message(number, size: OTLPEncoder.keyValueSize(attribute))
      string(1, attribute.key)
      message(2, size: OTLPEncoder.anyValueSize(attribute.value))
      switch attribute.value {
      case .string(let text): member(1, text)
      case .bool(let flag):
        tag(2, 0)
        bytes.append(flag ? 1 : 0)
      case .int(let number):
        tag(3, 0)
        varint(UInt64(bitPattern: number))
      case .double(let number): fixed64(4, number.bitPattern, always: true)
      }
    }

    mutating func span(_ span: Span) {
      bytes(1, span.context.traceID.bytes)
      bytes(2, span.context.spanID.bytes)
      if let state = span.context.traceState { string(3, state) }
      if let parent = span.parent { bytes(4, parent.bytes) }
      string(5, span.name)
      tag(6, 0)
      varint(UInt64(span.kind.rawValue))
      fixed64(7, span.start)
      fixed64(8, span.end)
      for attribute in span.attributes { keyValue(9, attribute) }
      for event in span.events {
        message(11, size: OTLPEncoder.eventSize(event))
        fixed64(1, event.time)
        string(2, event.name)
        for attribute in event.attributes { keyValue(3, attribute) }
      }
      let status = OTLPEncoder.statusSize(span.status)
      if status > 0 {
        message(15, size: status)
        switch span.status {
        case .unset: break
        case .ok:
          tag(3, 0)
          varint(1)
        case .error(let text):
          if !text.isEmpty { string(2, text) }
          tag(3, 0)
          varint(2)
        }
      }
      // W3C flags in the low byte; bit 8: the remote bit is known, bit 9: it is set.
      fixed32(16, (span.context.sampled ? 1 : 0) | 0x100 | (span.parentIsRemote ? 0x200 : 0))
    }
  }
}
