import NIOCore
import NIOHPACK

/// Runs the HTTP/2 core on bytes a peer might send — the target `scripts/fuzz` hands libFuzzer.
/// The first byte chooses the side (odd: an accepted connection, whose client preface is put
/// first; even: a pooled one, with three streams of its own open); the rest is the connection's
/// bytes, read in pieces whose sizes the input also chooses. Each event is carried out as the
/// sidecar would (streams opened, data credited, answers sent, now and then a stream reset),
/// and after each the connection's invariants are checked: a broken one traps. Every header
/// block that comes through is encoded again by the connection's `HPACKWriter` (whose table
/// size the peer's SETTINGS set) and must read back the same through another decoder. A
/// connection error ends the run, as it ends a connection.
package enum HTTP2FuzzInput {
  package static func run(_ input: [UInt8]) {
    guard let first = input.first else { return }
    let isServer = first & 1 == 1
    var connection = HTTP2Connection<UInt32>(
      isServer: isServer, maxConcurrentStreams: 16, peerStreamLimit: 100,
      now: .uptimeNanoseconds(0))
    var reader = HTTP2FrameReader(expectsPreface: isServer)
    if !isServer {
      for index in 0..<3 { _ = connection.openStream(UInt32(index), endStream: index == 0) }
    }
    var bytes = isServer ? HTTP2Wire.preface : []
    bytes += input.dropFirst()
    // Reads of 1 to 64 bytes, or all at once, by the second byte.
    let piece = input.count > 1 && input[1] & 0x80 != 0 ? Int(input[1] & 0x3F) + 1 : bytes.count
    if isServer { readFirstRequest(bytes, piece: max(piece, 1)) }
    var budget = HTTP2Windows.growthBudget
    var buffer = ByteBuffer()
    var offset = 0
    var frames = 0
    // Reads what the connection's encoder writes, as the peer would.
    var peerDecoder = HPACKDecoder(
      allocator: ByteBufferAllocator(), maxDynamicTableSize: HPACKDecoder.maxDynamicTableSize,
      maxHeaderListSize: 1 << 20)
    do {
      while offset < bytes.count {
        let end = min(bytes.count, offset + max(piece, 1))
        buffer.writeBytes(bytes[offset..<end])
        offset = end
        while let frame = try reader.next(from: &buffer) {
          frames += 1
          let now = NIODeadline.uptimeNanoseconds(UInt64(frames) * 1_000_000)
          let event = try connection.receive(frame, now: now)
          carryOut(event, on: &connection, budget: &budget)
          switch event {
          case .request(_, let request, _, _):
            roundTrip(request.headers, on: &connection, through: &peerDecoder)
          case .headers(_, _, let headers, _):
            roundTrip(headers, on: &connection, through: &peerDecoder)
          default:
            break
          }
          if frames % 16 == 0, let id = connection.streams.keys.min() {
            _ = connection.reset(id, .cancel)
          }
          connection.outbox.removeAll()
          if connection.needsPing { connection.sentPing() }
          check(connection)
        }
      }
    } catch is HTTP2ConnectionError {
      return
    } catch {
      preconditionFailure("not a connection error: \(error)")
    }
  }

  /// What the control plane's front does with a client's first bytes: `HTTP2FirstRequest`
  /// reads them (a path, nil, or an error, never a trap), and `SettingsAckFilter` hands them on
  /// with at most one 9-byte SETTINGS acknowledgement taken out, the rest unchanged.
  private static func readFirstRequest(_ bytes: [UInt8], piece: Int) {
    var reader = HTTP2FirstRequest()
    var filter = SettingsAckFilter()
    var filtered: [UInt8] = []
    var offset = 0
    var reading = true
    while offset < bytes.count {
      let end = min(bytes.count, offset + piece)
      let chunk = ByteBuffer(bytes: bytes[offset..<end])
      offset = end
      if reading {
        do {
          if try reader.read(chunk) != nil { reading = false }
        } catch {
          reading = false
        }
      }
      let wasDone = filter.done
      var out = filter.filter(chunk)
      filtered += out.readBytes(length: out.readableBytes)!
      precondition(!wasDone || filtered.count == end - 9, "bytes lost after the acknowledgement")
    }
    precondition(
      filtered.count + filter.holding == bytes.count - (filter.done ? 9 : 0),
      "the filter took more than one frame")
  }

  private static func carryOut(
    _ event: HTTP2Connection<UInt32>.Event, on connection: inout HTTP2Connection<UInt32>,
    budget: inout Int
  ) {
    let grow: (Int) -> Bool = { _ in false }
    switch event {
    case .none, .peerReset, .streamError:
      break
    case .request(let id, _, let endStream, let declaredLength):
      connection.open(id, id, endStream: endStream, declaredLength: declaredLength)
      if endStream { _ = connection.endedHere(id) }
    case .data(_, let id, _, let endStream, let flow):
      connection.returnCredit(flow)
      connection.returnStreamCredit(flow, on: id) { bytes in
        guard budget >= bytes else { return false }
        budget -= bytes
        return true
      }
      if endStream { _ = connection.endedHere(id) }
    case .headers(_, let id, _, let endStream):
      if endStream { _ = connection.endedHere(id) }
    case .credit(let id, let flow):
      connection.returnCredit(flow)
      connection.returnStreamCredit(flow, on: id, grow: grow)
    case .goAway(let lastStream, _):
      _ = connection.removeStreams(above: lastStream)
    case .windowsOpened:
      for id in connection.streams.keys.sorted().prefix(8) {
        _ = connection.consumeSendWindow(connection.sendable(on: id), on: id)
      }
    case .streamWindowOpened(let id):
      _ = connection.consumeSendWindow(connection.sendable(on: id), on: id)
    }
    // What may be sent is spent as the sidecar spends it (a negative amount is refused).
  }

  /// Encodes `headers` as the connection would send them, and reads them back.
  private static func roundTrip(
    _ headers: HPACKHeaders, on connection: inout HTTP2Connection<UInt32>,
    through decoder: inout HPACKDecoder
  ) {
    var block = ByteBuffer()
    connection.encoder.encode(headers: headers, to: &block)
    guard let decoded = try? decoder.decodeHeaders(from: &block) else {
      preconditionFailure("the encoder wrote a block that does not decode")
    }
    precondition(
      block.readableBytes == 0
        && decoded.elementsEqual(headers, by: { $0.name == $1.name && $0.value == $1.value }),
      "a header block read back different")
  }

  private static func check(_ connection: HTTP2Connection<UInt32>) {
    precondition(connection.receiveWindow >= 0, "the connection window went negative")
    precondition(connection.sendWindow <= HTTP2Wire.maxWindow)
    precondition(!connection.isServer || connection.streams.count <= 16, "over the stream limit")
    for (id, stream) in connection.streams {
      precondition(stream.attachment == id || !connection.isServer)
      precondition(stream.sendWindow <= HTTP2Wire.maxWindow, "a stream window past 2^31-1")
      precondition(stream.window <= HTTP2Windows.maximumStream)
      precondition(!(stream.localEnded && stream.remoteEnded), "a closed stream kept")
    }
  }
}
