/// The proxy's HTTP/2 windows and stream limit, advertised on every connection.
enum HTTP2Windows {
  static let protocolDefault = 65_535
  /// Per stream, at first: 16 KiB. It is also what the proxy holds at most for a stream whose
  /// reader has stopped reading (its window goes back to the sender only as the bytes leave
  /// for the reader's socket): 800 stalled streams hold 12.5 MiB.
  static let stream = 16 << 10
  /// What a stream's window grows to while its reader keeps up (doubling), so a 4 MiB message
  /// does not stall on round trips.
  static let maximumStream = 1 << 20
  /// What the windows of one event loop's streams may grow by in all: the most that stalled
  /// streams can hold beyond their first 16 KiB each. (`scripts/abuse`: 100 connections that
  /// never read, 8 streams each, take a release sidecar from 28 MB to 57 MB with 4 MiB here.)
  static let growthBudget = 4 << 20
  /// Per connection: the most one connection's calls hold in the proxy at once.
  static let connection = 4 << 20
  /// GRPC clients multiplex heavily: 1,024 concurrent streams are advertised unless the
  /// bootstrap's `limits.maxConcurrentStreams` says otherwise.
  static let maxConcurrentStreams = 1024
}
