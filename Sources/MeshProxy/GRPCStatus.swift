import NIOHPACK

/// A gRPC status code the proxy answers with itself: its own refusals, and any code a fault
/// injection names.
struct ProxyStatus: RawRepresentable, Equatable {
  var rawValue: Int
  init(rawValue: Int) { self.rawValue = rawValue }

  static let cancelled = ProxyStatus(rawValue: 1)
  static let invalidArgument = ProxyStatus(rawValue: 3)
  static let deadlineExceeded = ProxyStatus(rawValue: 4)
  static let permissionDenied = ProxyStatus(rawValue: 7)
  static let resourceExhausted = ProxyStatus(rawValue: 8)
  static let unimplemented = ProxyStatus(rawValue: 12)
  static let internalError = ProxyStatus(rawValue: 13)
  static let unavailable = ProxyStatus(rawValue: 14)
}

/// A Trailers-Only gRPC response: HTTP 200, the status and a percent-encoded message in one
/// HEADERS frame that ends the stream — what every gRPC client understands, never a bare HTTP
/// error. `httpStatus` is other than 200 only for a request that is not gRPC at all (415).
func trailersOnly(_ status: ProxyStatus, _ message: String, httpStatus: Int = 200) -> HPACKHeaders {
  [
    ":status": "\(httpStatus)", "content-type": "application/grpc",
    "grpc-status": "\(status.rawValue)", "grpc-message": percentEncodeGRPCMessage(message),
  ]
}

/// Whether a request's content-type is gRPC's: `application/grpc`, alone or followed by `+`
/// (a codec) or `;` (parameters).
func isGRPCContentType(_ value: String?) -> Bool {
  guard let value, value.hasPrefix("application/grpc") else { return false }
  let rest = value.utf8.dropFirst("application/grpc".utf8.count)
  return rest.isEmpty || rest.first == UInt8(ascii: "+") || rest.first == UInt8(ascii: ";")
}

/// Percent-encodes a grpc-message as the gRPC HTTP/2 protocol requires: bytes outside
/// printable ASCII and '%' itself.
func percentEncodeGRPCMessage(_ message: String) -> String {
  var out = ""
  for byte in message.utf8 {
    if byte >= 0x20, byte <= 0x7E, byte != UInt8(ascii: "%") {
      out.unicodeScalars.append(Unicode.Scalar(byte))
    } else {
      let hex = String(byte, radix: 16, uppercase: true)
      out += "%" + (hex.count == 1 ? "0" + hex : hex)
    }
  }
  return out
}
