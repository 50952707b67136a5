/// The proxy's HTTP/2 windows and stream limit, advertised on every connection.
enum HTTP2Windows {
  static let protocolDefault = 65_535
  /// Per stream: 64 KiB, as nginx and HAProxy advertise. It is also what the proxy holds at
  /// most for a stream whose reader has stopped reading (its window goes back to the sender
  /// only as the bytes leave for the reader's socket): 800 stalled streams hold 50 MiB at
  /// most, where 1 MiB windows let them hold 800 MiB.
  static let stream = 64 << 10
  /// Per connection: the most one connection's calls hold in the proxy at once.
  static let connection = 4 << 20
  /// GRPC clients multiplex heavily: 1,024 concurrent streams are advertised unless the
  /// bootstrap's `limits.maxConcurrentStreams` says otherwise.
  static let maxConcurrentStreams = 1024
}
