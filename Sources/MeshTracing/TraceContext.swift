/// A trace's 16-byte id, as two big-endian halves. All zeros is not a valid id.
public struct TraceID: Hashable, Sendable, CustomStringConvertible {
  public var high: UInt64
  public var low: UInt64

  public init(high: UInt64, low: UInt64) {
    self.high = high
    self.low = low
  }

  public var isValid: Bool { high != 0 || low != 0 }

  /// 32 lowercase hex digits, as W3C and OTLP's JSON write it.
  public var description: String { hex16(high) + hex16(low) }

  /// The 16 bytes, as OTLP's protobuf carries them.
  public var bytes: [UInt8] { bigEndianBytes(high) + bigEndianBytes(low) }

  /// 32 hex digits; 16 (B3's short form) are the low half. Nil for anything else.
  public init?(hex: some StringProtocol) {
    let digits = Array(hex.utf8)
    switch digits.count {
    case 32:
      guard let high = parseHex(digits[0..<16]), let low = parseHex(digits[16..<32]) else {
        return nil
      }
      self.init(high: high, low: low)
    case 16:
      guard let low = parseHex(digits[...]) else { return nil }
      self.init(high: 0, low: low)
    default:
      return nil
    }
  }

  public init?(bytes: some Collection<UInt8>) {
    guard bytes.count == 16 else { return nil }
    let all = Array(bytes)
    self.init(high: fromBigEndian(all[0..<8]), low: fromBigEndian(all[8..<16]))
  }
}

/// A span's 8-byte id. Zero is not a valid id.
public struct SpanID: Hashable, Sendable, CustomStringConvertible {
  public var value: UInt64

  public init(_ value: UInt64) { self.value = value }

  public var isValid: Bool { value != 0 }
  public var description: String { hex16(value) }
  public var bytes: [UInt8] { bigEndianBytes(value) }

  public init?(hex: some StringProtocol) {
    let digits = Array(hex.utf8)
    guard digits.count == 16, let value = parseHex(digits[...]) else { return nil }
    self.init(value)
  }

  public init?(bytes: some Collection<UInt8>) {
    guard bytes.count == 8 else { return nil }
    self.init(fromBigEndian(Array(bytes)[...]))
  }
}

/// Where a call stands in its trace: the trace, the span that made the call (the parent of
/// whatever the receiver records), whether the trace is recorded, and the vendors' state.
public struct TraceContext: Hashable, Sendable {
  public var traceID: TraceID
  public var spanID: SpanID
  public var sampled: Bool
  /// W3C `tracestate`, passed on as received.
  public var traceState: String?

  public init(traceID: TraceID, spanID: SpanID, sampled: Bool, traceState: String? = nil) {
    self.traceID = traceID
    self.spanID = spanID
    self.sampled = sampled
    self.traceState = traceState
  }

  /// The W3C `traceparent` header's value: version 00.
  public var traceparent: String {
    "00-\(traceID)-\(spanID)-\(sampled ? "01" : "00")"
  }

  /// The same trace and sampling decision, under span `span`: what a hop passes on once it
  /// records a span of its own.
  public func child(_ span: SpanID) -> TraceContext {
    TraceContext(traceID: traceID, spanID: span, sampled: sampled, traceState: traceState)
  }
}

/// What a request's headers say of its trace.
public enum IncomingTrace: Equatable, Sendable {
  /// No trace header: the receiver starts a trace.
  case none
  case context(TraceContext, format: Format)
  /// A B3 trace that leaves the sampling decision to the receiver: it decides as for a new
  /// trace, and keeps the ids.
  case undecided(TraceContext, format: Format)
  /// A trace header that is not valid: it must be replaced by a new trace, never passed on.
  case malformed(String)

  public enum Format: String, Sendable {
    case w3c, b3Single = "b3", b3Multi = "b3-multi"
  }

  /// The trace context the headers carry: W3C `traceparent` first (with `tracestate`), then B3
  /// single (`b3`), then B3 multi (`x-b3-*`). `header` looks a header up by lowercase name.
  public static func extract(_ header: (String) -> String?) -> IncomingTrace {
    if let traceparent = header("traceparent") {
      switch TraceContext.parseTraceparent(traceparent) {
      case .success(var context):
        context.traceState = header("tracestate").flatMap(TraceContext.acceptableTraceState)
        return .context(context, format: .w3c)
      case .failure(let reason):
        return .malformed("traceparent: \(reason)")
      }
    }
    if let single = header("b3") {
      return TraceContext.parseB3(single)
    }
    if let traceID = header("x-b3-traceid") {
      return TraceContext.parseB3(
        traceID: traceID, spanID: header("x-b3-spanid"), sampled: header("x-b3-sampled"),
        flags: header("x-b3-flags"))
    }
    return .none
  }

  /// The headers this module reads and writes, which a hop replaces with its own.
  public static let headerNames = [
    "traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid",
    "x-b3-sampled", "x-b3-flags",
  ]
}

/// Why a trace header was refused.
public struct TraceHeaderError: Error, Equatable, CustomStringConvertible {
  public var description: String
  init(_ description: String) { self.description = description }
}

extension TraceContext {
  /// Parses `traceparent` as W3C Trace Context level 1 says: `version-traceid-parentid-flags`,
  /// lowercase hex. Version ff is invalid; version 00 is exactly 55 characters; a later version
  /// may append fields after a dash, which are ignored. Zero ids are invalid.
  public static func parseTraceparent(_ value: String) -> Result<TraceContext, TraceHeaderError> {
    // Read in place: the header arrives with every call a sidecar forwards.
    var value = value
    return value.withUTF8 { parseTraceparent(bytes: $0) }
  }

  private static func parseTraceparent(
    bytes: UnsafeBufferPointer<UInt8>
  ) -> Result<TraceContext, TraceHeaderError> {
    guard bytes.count >= 55 else {
      return .failure(.init("\(bytes.count) characters, expected 55"))
    }
    guard bytes[2] == dash, bytes[35] == dash, bytes[52] == dash else {
      return .failure(.init("expected VERSION-TRACEID-PARENTID-FLAGS"))
    }
    guard let version = parseHex(bytes[0..<2], lowercaseOnly: true) else {
      return .failure(.init("version is not two lowercase hex digits"))
    }
    guard version != 0xff else { return .failure(.init("version ff is invalid")) }
    if version == 0, bytes.count != 55 {
      return .failure(.init("\(bytes.count) characters, expected 55 for version 00"))
    }
    if bytes.count > 55, bytes[55] != dash {
      return .failure(.init("unexpected characters after the flags"))
    }
    guard let high = parseHex(bytes[3..<19], lowercaseOnly: true),
      let low = parseHex(bytes[19..<35], lowercaseOnly: true)
    else { return .failure(.init("trace id is not 32 lowercase hex digits")) }
    let traceID = TraceID(high: high, low: low)
    guard traceID.isValid else { return .failure(.init("trace id is all zeros")) }
    guard let span = parseHex(bytes[36..<52], lowercaseOnly: true) else {
      return .failure(.init("parent id is not 16 lowercase hex digits"))
    }
    guard span != 0 else { return .failure(.init("parent id is all zeros")) }
    guard let flags = parseHex(bytes[53..<55], lowercaseOnly: true) else {
      return .failure(.init("flags are not two lowercase hex digits"))
    }
    return .success(
      TraceContext(traceID: traceID, spanID: SpanID(span), sampled: flags & 1 == 1))
  }

  /// `tracestate` is passed on unless it is too long to be valid (512 characters, W3C's
  /// limit for what a vendor must propagate) or holds control characters.
  static func acceptableTraceState(_ value: String) -> String? {
    guard !value.isEmpty, value.utf8.count <= 512,
      value.utf8.allSatisfy({ $0 >= 0x20 && $0 < 0x7f })
    else { return nil }
    return value
  }

  /// B3 single header: `TRACEID-SPANID[-SAMPLED[-PARENTSPANID]]`, or a sampling decision
  /// alone (`0`, `1`, `d`), which starts a trace with that decision.
  static func parseB3(_ value: String) -> IncomingTrace {
    let parts = value.split(separator: "-", omittingEmptySubsequences: false)
    if parts.count == 1 {
      switch parts[0] {
      case "0", "1", "d": return .none  // a decision without a trace: a new trace
      default: return .malformed("b3: expected TRACEID-SPANID[-SAMPLED[-PARENTSPANID]]")
      }
    }
    guard parts.count <= 4 else {
      return .malformed("b3: expected TRACEID-SPANID[-SAMPLED[-PARENTSPANID]]")
    }
    return parseB3(
      traceID: String(parts[0]), spanID: String(parts[1]),
      sampled: parts.count > 2 ? String(parts[2]) : nil, flags: nil, single: true)
  }

  static func parseB3(
    traceID: String, spanID: String?, sampled: String?, flags: String?, single: Bool = false
  ) -> IncomingTrace {
    let name = single ? "b3" : "x-b3-traceid"
    guard let trace = TraceID(hex: traceID.lowercased()), trace.isValid else {
      return .malformed("\(name): trace id is not 16 or 32 hex digits, or is zero")
    }
    guard let spanID, let span = SpanID(hex: spanID.lowercased()), span.isValid else {
      return .malformed(
        "\(single ? "b3" : "x-b3-spanid"): span id is not 16 hex digits, or is zero")
    }
    // Debug (`d`, or flags 1) means sampled; no decision means the receiver's own.
    let decision: Bool?
    switch (sampled?.lowercased(), flags) {
    case (_, "1"), ("d", _), ("1", _), ("true", _): decision = true
    case ("0", _), ("false", _): decision = false
    case (nil, _): decision = nil
    default: return .malformed("\(single ? "b3" : "x-b3-sampled"): sampled is not 0, 1 or d")
    }
    let format: IncomingTrace.Format = single ? .b3Single : .b3Multi
    guard let decision else {
      return .undecided(TraceContext(traceID: trace, spanID: span, sampled: false), format: format)
    }
    return .context(TraceContext(traceID: trace, spanID: span, sampled: decision), format: format)
  }
}

// MARK: Hex

private let dash = UInt8(ascii: "-")

func parseHex<Digits: Collection<UInt8>>(_ digits: Digits, lowercaseOnly: Bool = false) -> UInt64? {
  guard !digits.isEmpty, digits.count <= 16 else { return nil }
  var value: UInt64 = 0
  for digit in digits {
    let nibble: UInt8
    switch digit {
    case UInt8(ascii: "0")...UInt8(ascii: "9"): nibble = digit - UInt8(ascii: "0")
    case UInt8(ascii: "a")...UInt8(ascii: "f"): nibble = digit - UInt8(ascii: "a") + 10
    case UInt8(ascii: "A")...UInt8(ascii: "F") where !lowercaseOnly:
      nibble = digit - UInt8(ascii: "A") + 10
    default: return nil
    }
    value = value << 4 | UInt64(nibble)
  }
  return value
}

private let hexDigits = Array("0123456789abcdef".utf8)

func hex16(_ value: UInt64) -> String {
  String(unsafeUninitializedCapacity: 16) { buffer in
    for index in 0..<16 {
      buffer[index] = hexDigits[Int((value >> UInt64(60 - 4 * index)) & 0xf)]
    }
    return 16
  }
}

func bigEndianBytes(_ value: UInt64) -> [UInt8] {
  (0..<8).map { UInt8(truncatingIfNeeded: value >> UInt64(56 - 8 * $0)) }
}

func fromBigEndian(_ bytes: ArraySlice<UInt8>) -> UInt64 {
  bytes.reduce(0) { $0 << 8 | UInt64($1) }
}
