#if canImport(Glibc)
  import Glibc
#elseif canImport(Darwin)
  import Darwin
#endif

/// The time spans are stamped with: nanoseconds since the Unix epoch.
public enum WallClock {
  public static func now() -> UInt64 {
    var time = timespec()
    clock_gettime(CLOCK_REALTIME, &time)
    return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
  }

  /// `nanos` (since the Unix epoch) as an RFC 3339 UTC timestamp with `fractionDigits` (0–9)
  /// digits of the second, always that many: `2026-12-06T03:50:15.123Z`. Log lines carry
  /// these, so that lines of every process sort and merge as text.
  public static func rfc3339(_ nanos: UInt64, fractionDigits: Int = 3) -> String {
    var seconds = time_t(nanos / 1_000_000_000)
    var civil = tm()
    gmtime_r(&seconds, &civil)
    func pad(_ value: Int, _ width: Int) -> String {
      let text = String(value)
      return String(repeating: "0", count: max(0, width - text.count)) + text
    }
    var text = pad(Int(civil.tm_year) + 1900, 4) + "-" + pad(Int(civil.tm_mon) + 1, 2) + "-"
    text += pad(Int(civil.tm_mday), 2) + "T" + pad(Int(civil.tm_hour), 2) + ":"
    text += pad(Int(civil.tm_min), 2) + ":" + pad(Int(civil.tm_sec), 2)
    let digits = min(max(fractionDigits, 0), 9)
    if digits > 0 {
      var fraction = Int(nanos % 1_000_000_000)
      for _ in digits..<9 { fraction /= 10 }
      text += "." + pad(fraction, digits)
    }
    return text + "Z"
  }
}
