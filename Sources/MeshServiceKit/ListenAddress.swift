/// A `HOST:PORT` to listen on or connect to: `127.0.0.1:50051`, `[::1]:50051`, `localhost:0`
/// or `:50051` (loopback). Port 0 asks the system for a free port.
public struct HostPort: Sendable, Equatable, CustomStringConvertible {
  public let host: String
  public let port: Int

  public init(host: String, port: Int) {
    self.host = host
    self.port = port
  }

  /// Parses `HOST:PORT`; the error says what is wrong with the text.
  public init(parsing text: String) throws(HostPortError) {
    var host: Substring
    let portText: Substring
    if text.hasPrefix("[") {
      guard let close = text.firstIndex(of: "]") else { throw HostPortError(text, "missing ']'") }
      host = text[text.index(after: text.startIndex)..<close]
      let rest = text[text.index(after: close)...]
      guard rest.hasPrefix(":") else { throw HostPortError(text, "expected ':PORT' after ']'") }
      portText = rest.dropFirst()
    } else {
      guard let colon = text.lastIndex(of: ":") else {
        throw HostPortError(text, "expected HOST:PORT")
      }
      host = text[..<colon]
      portText = text[text.index(after: colon)...]
      if host.contains(":") {
        throw HostPortError(text, "write an IPv6 host in brackets, [::1]:PORT")
      }
    }
    guard let port = Int(portText), (0...65535).contains(port) else {
      throw HostPortError(text, "port \"\(portText)\" is not a number from 0 to 65535")
    }
    if host.isEmpty || host == "localhost" { host = "127.0.0.1" }
    self.host = String(host)
    self.port = port
  }

  /// Whether the host is an IPv6 literal.
  public var isIPv6: Bool { host.contains(":") }

  public var description: String { isIPv6 ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

/// Text that is not a `HOST:PORT`.
public struct HostPortError: Error, CustomStringConvertible {
  public let description: String
  init(_ text: String, _ problem: String) {
    description = "invalid address \"\(text)\": \(problem)"
  }
}
