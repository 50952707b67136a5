import NIOHTTP2

extension NIOHTTP2Handler.ConnectionConfiguration {
  /// The mesh's HTTP/2 settings: at least 1,024 concurrent streams advertised (gRPC clients
  /// multiplex heavily), 1 MiB stream windows so a 4 MiB message does not stall on round trips,
  /// and a 16 KiB header-list limit against HPACK bombs.
  static var meshDefaults: Self {
    var configuration = Self()
    configuration.initialSettings = [
      HTTP2Setting(parameter: .maxConcurrentStreams, value: 1024),
      HTTP2Setting(parameter: .initialWindowSize, value: 1 << 20),
      HTTP2Setting(parameter: .maxHeaderListSize, value: 16 * 1024),
    ]
    return configuration
  }
}

extension NIOHTTP2Handler.StreamConfiguration {
  /// Stream windows matching the advertised initial window size.
  static var meshDefaults: Self {
    var configuration = Self()
    configuration.targetWindowSize = 1 << 20
    return configuration
  }
}
