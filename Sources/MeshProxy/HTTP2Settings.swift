import NIOHTTP2

/// The proxy's HTTP/2 windows and stream limit.
enum HTTP2Windows {
  static let protocolDefault = 65_535
  /// Per stream: 1 MiB, so a 4 MiB message does not stall on round trips.
  static let stream = 1 << 20
  /// Per connection: the most one connection's calls hold in the proxy at once.
  static let connection = 4 << 20
  /// GRPC clients multiplex heavily: at least 1,024 concurrent streams are advertised.
  static let maxConcurrentStreams: UInt32 = 1024
}

extension NIOHTTP2Handler.ConnectionConfiguration {
  /// The mesh's HTTP/2 settings: the windows and stream limit above, and a 16 KiB header-list
  /// limit against HPACK bombs.
  static var meshDefaults: Self {
    var configuration = Self()
    configuration.initialSettings = [
      HTTP2Setting(parameter: .maxConcurrentStreams, value: Int(HTTP2Windows.maxConcurrentStreams)),
      HTTP2Setting(parameter: .initialWindowSize, value: HTTP2Windows.stream),
      HTTP2Setting(parameter: .maxHeaderListSize, value: 16 * 1024),
    ]
    return configuration
  }
}

extension NIOHTTP2Handler.ConnectionConfiguration {
  /// For the proxy's own connections towards a peer sidecar or the local app. Header blocks
  /// were validated when they entered the proxy (the downstream connection validates what the
  /// caller sends); validating them again when re-sent upstream, and validating the answers,
  /// which the downstream connection validates on their way out, would pay twice for the same
  /// check.
  static var meshUpstream: Self {
    var configuration = meshDefaults
    configuration.headerBlockValidation = .disabled
    return configuration
  }
}
