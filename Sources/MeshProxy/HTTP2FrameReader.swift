import NIOCore

/// A frame as read off a connection: the fields of its 9-byte header, and its payload (a slice
/// of the bytes read, not a copy).
struct HTTP2Frame {
  var type: UInt8
  var flags: UInt8
  var stream: UInt32
  var payload: ByteBuffer

  func has(_ flag: UInt8) -> Bool { flags & flag != 0 }
}

/// Cuts a connection's bytes into frames (RFC 9113 §3.4, §4.1): on an accepted connection the
/// client preface first, then frames whose payload is at most `HTTP2Wire.defaultMaxFrameSize`,
/// the SETTINGS_MAX_FRAME_SIZE this side keeps. A frame not wholly read yet stays in the buffer
/// until more bytes come.
struct HTTP2FrameReader {
  /// Whether the client preface is still to come.
  private(set) var awaitingPreface: Bool

  init(expectsPreface: Bool) {
    awaitingPreface = expectsPreface
  }

  /// The next whole frame in `buffer` (its bytes consumed), or nil until more bytes come.
  mutating func next(from buffer: inout ByteBuffer) throws -> HTTP2Frame? {
    if awaitingPreface {
      let count = min(buffer.readableBytes, HTTP2Wire.preface.count)
      let matches = buffer.withUnsafeReadableBytes {
        $0.prefix(count).elementsEqual(HTTP2Wire.preface.prefix(count))
      }
      guard matches else {
        throw HTTP2ConnectionError(.protocolError, "not an HTTP/2 client preface")
      }
      guard count == HTTP2Wire.preface.count else { return nil }
      buffer.moveReaderIndex(forwardBy: count)
      awaitingPreface = false
    }
    guard buffer.readableBytes >= HTTP2Wire.frameHeaderLength else { return nil }
    // The header's three words at once: length and type, flags, stream.
    let (word, flags, stream) = buffer.withUnsafeReadableBytes { bytes in
      (
        UInt32(bigEndian: bytes.loadUnaligned(as: UInt32.self)), bytes[4],
        UInt32(bigEndian: bytes.loadUnaligned(fromByteOffset: 5, as: UInt32.self)) & 0x7FFF_FFFF
      )
    }
    let length = Int(word >> 8)
    guard length <= HTTP2Wire.defaultMaxFrameSize else {
      throw HTTP2ConnectionError(.frameSizeError, "frame of \(length) bytes")
    }
    guard buffer.readableBytes >= HTTP2Wire.frameHeaderLength + length else { return nil }
    let payload = buffer.getSlice(
      at: buffer.readerIndex + HTTP2Wire.frameHeaderLength, length: length)!
    buffer.moveReaderIndex(forwardBy: HTTP2Wire.frameHeaderLength + length)
    return HTTP2Frame(
      type: UInt8(truncatingIfNeeded: word), flags: flags, stream: stream, payload: payload)
  }
}
