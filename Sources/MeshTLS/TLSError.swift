/// Why TLS could not be set up or went wrong on a connection.
public enum TLSError: Error, CustomStringConvertible, Equatable, Sendable {
  /// The system's OpenSSL 3 could not be loaded.
  case libraryUnavailable(String)
  /// A certificate, key or setting OpenSSL refused.
  case configuration(String)
  /// The handshake failed (OpenSSL's reasons).
  case handshake(String)
  /// The handshake did not finish in time.
  case handshakeTimedOut
  /// The peer's certificate chain was not accepted.
  case peerRejected(String)
  /// A record could not be read or written after the handshake (OpenSSL's reasons).
  case connection(String)

  public var description: String {
    switch self {
    case .libraryUnavailable(let reason): reason
    case .configuration(let reason): "TLS configuration: \(reason)"
    case .handshake(let reason): "TLS handshake failed: \(reason)"
    case .handshakeTimedOut: "TLS handshake not finished in time"
    case .peerRejected(let reason): "peer certificate rejected: \(reason)"
    case .connection(let reason): "TLS: \(reason)"
    }
  }
}
