import NIOCore

/// The `grpc-timeout` request header: at most 8 digits and a unit (`H`, `M`, `S`, `m`, `u`,
/// `n`), as gRPC over HTTP/2 defines it.
enum GRPCTimeout {
  /// The timeout `text` names; nil if it is not a valid `grpc-timeout` value.
  static func parse(_ text: String) -> TimeAmount? {
    let bytes = text.utf8
    guard bytes.count >= 2, bytes.count <= 9, let unit = bytes.last else { return nil }
    var value: Int64 = 0
    for byte in bytes.dropLast() {
      guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
      value = value * 10 + Int64(byte - UInt8(ascii: "0"))
    }
    switch unit {
    case UInt8(ascii: "H"): return .hours(value)
    case UInt8(ascii: "M"): return .minutes(value)
    case UInt8(ascii: "S"): return .seconds(value)
    case UInt8(ascii: "m"): return .milliseconds(value)
    case UInt8(ascii: "u"): return .microseconds(value)
    case UInt8(ascii: "n"): return .nanoseconds(value)
    default: return nil
    }
  }

  /// `amount` as a header value, in the finest unit that fits in 8 digits (rounded up, so a
  /// forwarded timeout never expires before the caller's).
  static func format(_ amount: TimeAmount) -> String {
    let nanoseconds = max(amount.nanoseconds, 1)
    let units: [(Int64, Character)] = [
      (1, "n"), (1_000, "u"), (1_000_000, "m"), (1_000_000_000, "S"), (60_000_000_000, "M"),
      (3_600_000_000_000, "H"),
    ]
    for (size, unit) in units {
      let value = (nanoseconds + size - 1) / size
      if value < 100_000_000 { return "\(value)\(unit)" }
    }
    return "99999999H"
  }
}
