import GRPCCore
import ShopProtos
import SwiftProtobuf

/// Request checks shared by the shop services. Each failure is INVALID_ARGUMENT naming the
/// field, as Google's API design asks ("email: … is not a valid email address").
public enum Validate {
  public static func invalid(_ field: String, _ problem: String) -> RPCError {
    RPCError(code: .invalidArgument, message: "\(field): \(problem)")
  }

  /// A required, non-blank string field.
  public static func required(_ value: String, _ field: String, maxLength: Int = 200) throws {
    if value.allSatisfy(\.isWhitespace) { throw invalid(field, "is required") }
    if value.count > maxLength { throw invalid(field, "is longer than \(maxLength) characters") }
  }

  /// An amount: a three-letter upper-case currency code and a minor-unit count.
  public static func money(_ money: Shop_V1_Money, _ field: String, positive: Bool) throws {
    let code = money.currencyCode
    guard code.count == 3, code.allSatisfy({ $0.isASCII && $0.isUppercase }) else {
      throw invalid(
        "\(field).currency_code", "\"\(code)\" is not an ISO 4217 code such as USD")
    }
    if positive ? money.minorUnits <= 0 : money.minorUnits < 0 {
      throw invalid(
        "\(field).minor_units", positive ? "must be greater than 0" : "must not be negative")
    }
  }
}

extension Google_Protobuf_Timestamp {
  /// A timestamp from nanoseconds since the Unix epoch, as the services store them.
  public init(nanosSinceEpoch nanos: Int64) {
    self.init(
      seconds: nanos / 1_000_000_000 - (nanos % 1_000_000_000 < 0 ? 1 : 0),
      nanos: Int32((nanos % 1_000_000_000 + 1_000_000_000) % 1_000_000_000))
  }

  /// Nanoseconds since the Unix epoch, as the services store them.
  public var nanosSinceEpoch: Int64 { seconds * 1_000_000_000 + Int64(nanos) }
}

extension String {
  /// The string without leading and trailing whitespace.
  public func trimmingWhitespace() -> String {
    String(drop(while: \.isWhitespace).reversed().drop(while: \.isWhitespace).reversed())
  }
}
