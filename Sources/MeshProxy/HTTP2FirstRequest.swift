import NIOCore
import NIOHPACK

/// The `:path` of a connection's first request, read from its first bytes (the client preface,
/// SETTINGS and whatever comes before the first HEADERS) without taking them: a listener that
/// serves some calls on one stack and the rest on another picks the stack by it, then hands
/// every byte on to the one it picked.
package struct HTTP2FirstRequest {
  /// The most a client may send before its first request's header block is whole.
  package static let limit = 64 << 10

  private var reader = HTTP2FrameReader(expectsPreface: true)
  private var unread = ByteBuffer()
  private var total = 0
  private var block: ByteBuffer?
  private var blockStream: UInt32 = 0

  package init() {}

  /// Reads the next bytes of the connection (a copy is read; the caller keeps them): the first
  /// request's path once its header block is whole, nil until then. Throws for bytes that are
  /// not HTTP/2, a header block without `:path`, or `limit` bytes without a request.
  package mutating func read(_ bytes: ByteBuffer) throws -> String? {
    total += bytes.readableBytes
    var bytes = bytes
    unread.writeBuffer(&bytes)
    while let frame = try reader.next(from: &unread) {
      if let path = try take(frame) { return path }
    }
    guard total < Self.limit else {
      throw HTTP2ConnectionError(.enhanceYourCalm, "\(Self.limit) bytes without a request")
    }
    return nil
  }

  private mutating func take(_ frame: HTTP2Frame) throws -> String? {
    var payload = frame.payload
    if var fragment = block {
      guard frame.type == FrameType.continuation, frame.stream == blockStream else {
        throw HTTP2ConnectionError(.protocolError, "a header block interrupted")
      }
      fragment.writeBuffer(&payload)
      block = fragment
    } else {
      guard frame.type == FrameType.headers else { return nil }
      if frame.has(FrameFlag.padded) {
        guard let pad = payload.readInteger(as: UInt8.self), Int(pad) <= payload.readableBytes
        else { throw HTTP2ConnectionError(.protocolError, "HEADERS with bad padding") }
        payload = payload.getSlice(
          at: payload.readerIndex, length: payload.readableBytes - Int(pad))!
      }
      if frame.has(FrameFlag.priority) {
        guard payload.readableBytes >= 5 else {
          throw HTTP2ConnectionError(.frameSizeError, "HEADERS too short for its priority")
        }
        payload.moveReaderIndex(forwardBy: 5)
      }
      block = payload
      blockStream = frame.stream
    }
    guard frame.has(FrameFlag.endHeaders), var whole = block else { return nil }
    var decoder = HPACKDecoder(allocator: ByteBufferAllocator())
    let headers: HPACKHeaders
    do {
      headers = try decoder.decodeHeaders(from: &whole)
    } catch {
      throw HTTP2ConnectionError(.compressionError, "the first header block: \(error)")
    }
    guard let path = headers.first(name: ":path"), !path.isEmpty else {
      throw HTTP2ConnectionError(.protocolError, "a request without :path")
    }
    return path
  }
}

/// A client's bytes with its first SETTINGS acknowledgement taken out, the rest as they came:
/// for a connection whose first SETTINGS was sent by a layer that then handed it to an HTTP/2
/// stack of its own, which never sent those SETTINGS and must not see them acknowledged.
package struct SettingsAckFilter {
  /// Whether the acknowledgement has been taken out (every byte passes after).
  package private(set) var done = false
  /// Bytes of a frame header held back until the rest of it comes.
  package var holding: Int { header.count }
  private var prefaceLeft = HTTP2Wire.preface.count
  private var header: [UInt8] = []
  private var frameLeft = 0

  package init() {}

  package mutating func filter(_ bytes: ByteBuffer) -> ByteBuffer {
    guard !done else { return bytes }
    var input = bytes
    var output = ByteBufferAllocator().buffer(capacity: input.readableBytes)
    while input.readableBytes > 0 {
      if done || prefaceLeft > 0 || frameLeft > 0 {
        let count =
          done
          ? input.readableBytes
          : min(prefaceLeft > 0 ? prefaceLeft : frameLeft, input.readableBytes)
        var slice = input.readSlice(length: count)!
        output.writeBuffer(&slice)
        if prefaceLeft > 0 { prefaceLeft -= count } else if !done { frameLeft -= count }
        continue
      }
      let count = min(HTTP2Wire.frameHeaderLength - header.count, input.readableBytes)
      header += input.readBytes(length: count)!
      guard header.count == HTTP2Wire.frameHeaderLength else { continue }
      let length = Int(header[0]) << 16 | Int(header[1]) << 8 | Int(header[2])
      let isAck = header[3] == FrameType.settings && header[4] & FrameFlag.ack != 0 && length == 0
      if isAck {
        done = true
      } else {
        output.writeBytes(header)
        frameLeft = length
      }
      header = []
    }
    return output
  }
}
