/// Where a stream is forwarded: a host and port, and, for a mesh peer, the identity its
/// certificate must carry (secure naming).
public struct Endpoint: Hashable, Sendable, CustomStringConvertible {
  public var host: String
  public var port: Int
  /// The SPIFFE ID the peer must present; nil for a plaintext hop to the local app.
  public var expectedIdentity: String?

  public init(host: String, port: Int, expectedIdentity: String? = nil) {
    self.host = host
    self.port = port
    self.expectedIdentity = expectedIdentity
  }

  public var description: String { "\(host):\(port)" }
}
