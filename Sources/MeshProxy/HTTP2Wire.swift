import NIOCore

/// The facts of the HTTP/2 wire (RFC 9113) the proxy's own framing layer needs.
enum HTTP2Wire {
  /// What a client sends before its first frame.
  static let preface: [UInt8] = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)
  static let frameHeaderLength = 9
  /// The largest frame payload either side may send until told otherwise, and the largest this
  /// proxy accepts.
  static let defaultMaxFrameSize = 16_384
  static let maxWindow = Int(Int32.max)
}

/// Frame types.
enum FrameType {
  static let data: UInt8 = 0x0
  static let headers: UInt8 = 0x1
  static let priority: UInt8 = 0x2
  static let rstStream: UInt8 = 0x3
  static let settings: UInt8 = 0x4
  static let pushPromise: UInt8 = 0x5
  static let ping: UInt8 = 0x6
  static let goAway: UInt8 = 0x7
  static let windowUpdate: UInt8 = 0x8
  static let continuation: UInt8 = 0x9
}

/// Frame flags.
enum FrameFlag {
  static let endStream: UInt8 = 0x1
  static let ack: UInt8 = 0x1
  static let endHeaders: UInt8 = 0x4
  static let padded: UInt8 = 0x8
  static let priority: UInt8 = 0x20
}

/// SETTINGS parameters.
enum SettingID {
  static let headerTableSize: UInt16 = 0x1
  static let enablePush: UInt16 = 0x2
  static let maxConcurrentStreams: UInt16 = 0x3
  static let initialWindowSize: UInt16 = 0x4
  static let maxFrameSize: UInt16 = 0x5
  static let maxHeaderListSize: UInt16 = 0x6
}

/// An HTTP/2 error code, as carried by RST_STREAM and GOAWAY.
struct H2Error: Hashable, CustomStringConvertible {
  let code: UInt32

  static let noError = H2Error(code: 0x0)
  static let protocolError = H2Error(code: 0x1)
  static let internalError = H2Error(code: 0x2)
  static let flowControlError = H2Error(code: 0x3)
  static let settingsTimeout = H2Error(code: 0x4)
  static let streamClosed = H2Error(code: 0x5)
  static let frameSizeError = H2Error(code: 0x6)
  static let refusedStream = H2Error(code: 0x7)
  static let cancel = H2Error(code: 0x8)
  static let compressionError = H2Error(code: 0x9)
  static let enhanceYourCalm = H2Error(code: 0xB)

  private static let names = [
    "NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR", "SETTINGS_TIMEOUT",
    "STREAM_CLOSED", "FRAME_SIZE_ERROR", "REFUSED_STREAM", "CANCEL", "COMPRESSION_ERROR",
    "CONNECT_ERROR", "ENHANCE_YOUR_CALM", "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED",
  ]

  var description: String {
    code < Self.names.count ? Self.names[Int(code)] : "error \(code)"
  }
}

/// A connection error (RFC 9113 §5.4.1): the connection ends with GOAWAY carrying `code`.
struct HTTP2ConnectionError: Error, CustomStringConvertible {
  let code: H2Error
  let reason: String

  /// The reason is an autoclosure, and this is never inlined, so that the words (often an
  /// interpolation) are code beside the rare path that throws, not in the hot one around it.
  @inline(never)
  init(_ code: H2Error, _ reason: @autoclosure () -> String) {
    self.code = code
    self.reason = reason()
  }

  var description: String { "\(code): \(reason)" }
}

extension ByteBuffer {
  /// Writes the 9-byte frame header.
  @inline(__always)
  /// One write: each write to a buffer is a check of its storage, which counts on a path that
  /// writes a frame header per frame.
  mutating func writeFrameHeader(length: Int, type: UInt8, flags: UInt8, stream: UInt32) {
    let head =
      UInt64(truncatingIfNeeded: length & 0xFF_FFFF) << 40 | UInt64(type) << 32
      | UInt64(flags) << 24 | UInt64(stream >> 8)
    writeWithUnsafeMutableBytes(minimumWritableBytes: HTTP2Wire.frameHeaderLength) { room in
      room.storeBytes(of: head.bigEndian, toByteOffset: 0, as: UInt64.self)
      room.storeBytes(of: UInt8(truncatingIfNeeded: stream), toByteOffset: 8, as: UInt8.self)
      return HTTP2Wire.frameHeaderLength
    }
  }

  /// Overwrites the 3-byte length of the frame header at `index` (within the readable bytes).
  @inline(__always)
  mutating func setFrameLength(_ length: Int, at index: Int) {
    let offset = index - readerIndex
    withUnsafeMutableReadableBytes { bytes in
      bytes[offset] = UInt8(truncatingIfNeeded: length >> 16)
      bytes[offset + 1] = UInt8(truncatingIfNeeded: length >> 8)
      bytes[offset + 2] = UInt8(truncatingIfNeeded: length)
    }
  }
}
