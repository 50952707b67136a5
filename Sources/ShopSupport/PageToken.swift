import GRPCCore

/// The opaque `page_token` of list methods: the position after which the next page starts.
///
/// It carries the last row's sequence number and a fingerprint of the query it belongs to, so
/// a token used with another query (another user's orders) is refused instead of silently
/// skipping rows.
public struct PageToken: Equatable, Sendable {
  public let afterSequence: Int64
  let query: String

  public init(afterSequence: Int64, query: String) {
    self.afterSequence = afterSequence
    self.query = query
  }

  /// The token's text: base64url of `v1:<sequence>:<query>`.
  public var encoded: String {
    Base64URL.encode(Array("v1:\(afterSequence):\(query)".utf8))
  }

  /// Reads a client's token; INVALID_ARGUMENT when it is not one this service made for `query`.
  public init(decoding text: String, query: String) throws {
    guard let bytes = Base64URL.decode(text), let plain = String(validating: bytes, as: UTF8.self)
    else { throw RPCError(code: .invalidArgument, message: "page_token is not a valid token") }
    let parts = plain.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
    guard parts.count == 3, parts[0] == "v1", let sequence = Int64(parts[1]), sequence >= 0 else {
      throw RPCError(code: .invalidArgument, message: "page_token is not a valid token")
    }
    guard parts[2] == query else {
      throw RPCError(
        code: .invalidArgument,
        message: "page_token belongs to another query; repeat the request that returned it")
    }
    self.init(afterSequence: sequence, query: query)
  }

  /// The page size a request asks for: 0 means `defaultSize`, more than `maximum` is capped,
  /// a negative size is INVALID_ARGUMENT.
  public static func pageSize(
    _ requested: Int32, default defaultSize: Int = 50, maximum: Int = 1000
  )
    throws -> Int
  {
    guard requested >= 0 else {
      throw RPCError(code: .invalidArgument, message: "page_size must not be negative")
    }
    return requested == 0 ? defaultSize : min(Int(requested), maximum)
  }
}

enum Base64URL {
  private static let alphabet = Array(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)

  static func encode(_ bytes: [UInt8]) -> String {
    var out: [UInt8] = []
    var buffer: UInt32 = 0
    var bits = 0
    for byte in bytes {
      buffer = buffer << 8 | UInt32(byte)
      bits += 8
      while bits >= 6 {
        bits -= 6
        out.append(alphabet[Int(buffer >> UInt32(bits) & 63)])
      }
    }
    if bits > 0 { out.append(alphabet[Int(buffer << UInt32(6 - bits) & 63)]) }
    return String(decoding: out, as: UTF8.self)
  }

  static func decode(_ text: String) -> [UInt8]? {
    var out: [UInt8] = []
    var buffer: UInt32 = 0
    var bits = 0
    for char in text.utf8 {
      guard let value = alphabet.firstIndex(of: char) else { return nil }
      buffer = buffer << 6 | UInt32(value)
      bits += 6
      if bits >= 8 {
        bits -= 8
        out.append(UInt8(buffer >> UInt32(bits) & 0xff))
      }
    }
    return out
  }
}
