import NIOHPACK

/// gRPC status codes the proxy answers with itself.
enum ProxyStatus: Int {
  case cancelled = 1
  case deadlineExceeded = 4
  case permissionDenied = 7
  case resourceExhausted = 8
  case unimplemented = 12
  case internalError = 13
  case unavailable = 14
}

/// A Trailers-Only gRPC response: HTTP 200, the status and a percent-encoded message in one
/// HEADERS frame that ends the stream — what every gRPC client understands, never a bare HTTP
/// error.
func trailersOnly(_ status: ProxyStatus, _ message: String) -> HPACKHeaders {
  [
    ":status": "200", "content-type": "application/grpc", "grpc-status": "\(status.rawValue)",
    "grpc-message": percentEncodeGRPCMessage(message),
  ]
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
