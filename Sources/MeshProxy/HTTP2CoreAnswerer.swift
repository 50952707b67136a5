import NIOCore
import NIOHPACK

/// The HTTP/2 core on its own, for `h2-core-bench`: it reads a client's bytes (preface,
/// SETTINGS, requests) through `HTTP2FrameReader` and `HTTP2Connection`, and answers every
/// request that ends with a gRPC response — HEADERS, one DATA echoing the request's bytes, and
/// trailers — encoded and framed as the sidecar writes them. What a sidecar does besides (the
/// call's routing, the other connection) is left out, so the figure is the core's own.
package struct HTTP2CoreAnswerer {
  private var connection: HTTP2Connection<Void>
  private var reader = HTTP2FrameReader(expectsPreface: true)
  private var output = ByteBuffer()
  private let response: HPACKHeaders = [":status": "200", "content-type": "application/grpc"]
  private let trailers: HPACKHeaders = ["grpc-status": "0"]
  private var time = NIODeadline.now()

  package init() {
    connection = HTTP2Connection(
      isServer: true, maxConcurrentStreams: 1_024, peerStreamLimit: 1_024, now: time)
  }

  /// Reads `bytes`; returns what the connection writes in answer.
  package mutating func read(_ bytes: inout ByteBuffer) throws -> ByteBuffer {
    while let frame = try reader.next(from: &bytes) {
      switch try connection.receive(frame, now: time) {
      case .request(let id, _, let endStream, let declaredLength):
        connection.open(id, (), endStream: endStream, declaredLength: declaredLength)
      case .data(_, let id, let payload, let endStream, let flow):
        connection.returnCredit(flow)
        if endStream { answer(id, payload) }
      default:
        break
      }
      for frame in connection.outbox {
        if case .windowUpdate(let id, let increment) = frame {
          output.writeFrameHeader(length: 4, type: FrameType.windowUpdate, flags: 0, stream: id)
          output.writeInteger(UInt32(increment))
        }
      }
      connection.outbox.removeAll(keepingCapacity: true)
    }
    defer { output.clear() }
    return output
  }

  private mutating func answer(_ id: UInt32, _ payload: ByteBuffer) {
    writeHeaders(response, endStream: false, on: id)
    guard connection.consumeSendWindow(payload.readableBytes, on: id) else { return }
    output.writeFrameHeader(
      length: payload.readableBytes, type: FrameType.data, flags: 0, stream: id)
    output.writeImmutableBuffer(payload)
    writeHeaders(trailers, endStream: true, on: id)
    _ = connection.endedHere(id)
  }

  private mutating func writeHeaders(_ headers: HPACKHeaders, endStream: Bool, on id: UInt32) {
    output.writeHeadersFrame(
      headers, endStream: endStream, stream: id, encoder: &connection.encoder)
  }
}
