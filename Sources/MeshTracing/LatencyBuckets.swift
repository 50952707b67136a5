#if canImport(Glibc)
  import Glibc
#elseif canImport(Darwin)
  import Darwin
#endif

/// The latency histogram live figures travel in: bucket `i` holds calls that took up to
/// 50 µs × 1.1^i, so any percentile read from it is within 10 % of the truth, from 50 µs to a
/// minute (the last bucket holds everything slower).
public enum LatencyBuckets {
  public static let count = 148
  static let first = 50e-6
  static let growth = 1.1

  public static func index(seconds: Double) -> Int {
    guard seconds > first else { return 0 }
    return min(count - 1, Int((log(seconds / first) / log(growth)).rounded(.up)))
  }

  /// The upper bound of bucket `index`, in seconds.
  public static func upperBound(_ index: Int) -> Double {
    first * pow(growth, Double(index))
  }

  /// The `quantile` (0 to 1) of the calls counted, in seconds, placed geometrically within
  /// its bucket; nil when nothing was counted.
  public static func quantile(_ quantile: Double, of counts: [UInt64]) -> Double? {
    let total = counts.reduce(0, +)
    guard total > 0 else { return nil }
    let rank = max(1, (quantile * Double(total)).rounded(.up))
    var seen: UInt64 = 0
    for (index, count) in counts.enumerated() where count > 0 {
      if Double(seen + count) >= rank {
        let within = (rank - Double(seen)) / Double(count)
        let low = index == 0 ? upperBound(0) / growth : upperBound(index - 1)
        return low * pow(upperBound(index) / low, within)
      }
      seen += count
    }
    return upperBound(counts.count - 1)
  }
}
