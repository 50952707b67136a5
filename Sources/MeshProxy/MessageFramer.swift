import NIOCore

/// Follows the gRPC length-prefixed messages in one direction of a stream, across DATA frames
/// however they are split, to refuse a message larger than the limit as soon as its 5-byte
/// prefix is seen — before any of it is forwarded.
struct MessageFramer {
  /// 4 MiB, gRPC's usual default.
  static let defaultLimit = 4 << 20

  private var prefix: (UInt8, UInt8, UInt8, UInt8, UInt8) = (0, 0, 0, 0, 0)
  private var prefixBytes = 0
  /// Bytes of the current message still to come.
  private var remaining = 0

  /// Scans `buffer`; returns the length of the first message over `limit`, if any.
  mutating func scan(_ buffer: ByteBuffer, limit: Int) -> Int? {
    var index = buffer.readerIndex
    let end = buffer.writerIndex
    while index < end {
      if remaining > 0 {
        let skip = min(remaining, end - index)
        remaining -= skip
        index += skip
        continue
      }
      let byte = buffer.getInteger(at: index, as: UInt8.self)!
      index += 1
      switch prefixBytes {
      case 0: prefix.0 = byte
      case 1: prefix.1 = byte
      case 2: prefix.2 = byte
      case 3: prefix.3 = byte
      default: prefix.4 = byte
      }
      prefixBytes += 1
      if prefixBytes == 5 {
        prefixBytes = 0
        let length =
          Int(prefix.1) << 24 | Int(prefix.2) << 16 | Int(prefix.3) << 8 | Int(prefix.4)
        if length > limit { return length }
        remaining = length
      }
    }
    return nil
  }
}
