import NIOHPACK

/// The rules RFC 9113 §8.2–8.3 set on a header block, checked before anything of it is
/// forwarded: a block that breaks one is malformed, a stream error (PROTOCOL_ERROR) that the
/// sidecar answers itself, so the app behind never sees it.
enum HTTP2Fields {
  /// What a header block is on its stream.
  enum Block {
    /// A request's HEADERS: pseudo-headers `:method`, `:scheme`, `:path` (each once),
    /// `:authority` at most once.
    case request
    /// A response's HEADERS: `:status` once.
    case response
    /// Trailers, either way: no pseudo-header at all.
    case trailers
  }

  /// Why `headers` are malformed as a `block`, or nil. `strict` (what callers send): values
  /// with white space at either end are malformed too; what an app answers may carry it (gRPC
  /// leaves spaces in `grpc-message` unencoded), and is passed on.
  static func malformed(_ headers: HPACKHeaders, as block: Block, strict: Bool) -> String? {
    var pseudo = true
    var counts = (method: 0, scheme: 0, path: 0, authority: 0, status: 0)
    for header in headers {
      if let problem = fieldProblem(name: header.name, value: header.value, strict: strict) {
        return problem
      }
      if header.name.utf8.first == UInt8(ascii: ":") {
        guard pseudo else { return "pseudo-header \(header.name) after regular headers" }
        switch (block, header.name) {
        case (.request, ":method"): counts.method += 1
        case (.request, ":scheme"): counts.scheme += 1
        case (.request, ":path"):
          counts.path += 1
          if header.value.isEmpty { return "empty :path" }
        case (.request, ":authority"): counts.authority += 1
        case (.response, ":status"): counts.status += 1
        default: return "pseudo-header \(header.name) in \(block)"
        }
        continue
      }
      pseudo = false
      switch header.name {
      case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade":
        return "connection-specific header \(header.name)"
      case "te" where header.value != "trailers":
        return "te other than trailers"
      default:
        break
      }
    }
    switch block {
    case .request:
      guard counts.method == 1, counts.scheme == 1, counts.path == 1, counts.authority <= 1
      else { return "missing or repeated pseudo-headers" }
    case .response:
      guard counts.status == 1 else { return "missing or repeated :status" }
    case .trailers:
      break
    }
    return nil
  }

  /// Why a field breaks RFC 9113 §8.2.1, or nil. A name is lower-case token characters (a
  /// pseudo-header's leading colon aside): no upper case, space, colon, control or non-ASCII
  /// byte. A value holds no NUL, CR or LF, and (`strict`) neither starts nor ends with a space
  /// or tab. On every header of every call: one pass over each, with a table per name byte.
  static func fieldProblem(name: String, value: String, strict: Bool = true) -> String? {
    var name = name
    let nameProblem: String? = name.withUTF8 { bytes in
      guard !bytes.isEmpty else { return "empty header name" }
      for index in bytes.indices where !nameBytes[Int(bytes[index])] {
        let byte = bytes[index]
        if index == 0 && byte == UInt8(ascii: ":") { continue }
        return byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z")
          ? "upper-case header name" : "header name with byte \(byte)"
      }
      return nil
    }
    if let nameProblem { return nameProblem }
    var value = value
    return value.withUTF8 { bytes in
      // NUL (0), LF (10) and CR (13), tested at once below 14.
      let forbidden: UInt16 = 1 << 0 | 1 << 10 | 1 << 13
      for byte in bytes where byte < 14 && forbidden & (1 << UInt16(byte)) != 0 {
        return "header \(name) with NUL, CR or LF in its value"
      }
      guard strict, let first = bytes.first, let last = bytes.last else { return nil }
      if first == 0x20 || first == 0x09 || last == 0x20 || last == 0x09 {
        return "header \(name) with white space around its value"
      }
      return nil
    }
  }

  /// RFC 9110's token characters, lower case only, by byte.
  private static let nameBytes: [Bool] = (0..<256).map { value in
    let byte = UInt8(value)
    switch byte {
    case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"): return true
    default: return Array("!#$%&'*+-.^_`|~".utf8).contains(byte)
    }
  }

  /// The `content-length` a block declares: nil without one, or -1 for one that is not a
  /// single non-negative number (malformed).
  static func contentLength(_ headers: HPACKHeaders) -> Int? {
    var found: Int?
    for value in headers[canonicalForm: "content-length"] {
      guard let length = Int(value), length >= 0, found == nil || found == length else {
        return -1
      }
      found = length
    }
    return found
  }
}
