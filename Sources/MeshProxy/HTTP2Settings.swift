/// The proxy's HTTP/2 windows and stream limit, advertised on every connection.
enum HTTP2Windows {
  static let protocolDefault = 65_535
  /// Per stream: 1 MiB, so a 4 MiB message does not stall on round trips.
  static let stream = 1 << 20
  /// Per connection: the most one connection's calls hold in the proxy at once.
  static let connection = 4 << 20
  /// GRPC clients multiplex heavily: 1,024 concurrent streams are advertised unless the
  /// bootstrap's `limits.maxConcurrentStreams` says otherwise.
  static let maxConcurrentStreams = 1024
}
