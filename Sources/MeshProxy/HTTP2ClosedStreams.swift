/// The streams a connection closed most recently, and how, so that a frame arriving on one is
/// judged as RFC 9113 §5.1 asks: the `capacity` last closed streams are remembered, in a ring
/// of fixed size (4 KiB). A frame on a stream closed longer ago than that is dropped.
struct HTTP2ClosedStreams {
  /// How a stream was closed.
  enum Closing: Equatable {
    /// This side reset it. Frames the peer had sent before it saw the RST_STREAM may still
    /// come: they are dropped until the peer acknowledges PING number `ping` (the first one this
    /// side sent after the reset), which it does only after reading the RST_STREAM.
    case resetHere(ping: UInt64)
    /// The peer reset it: any frame but PRIORITY after that is the peer's error.
    case resetByPeer
    /// Both sides ended it with END_STREAM.
    case completed
  }

  static let capacity = 256

  private var ring: [(stream: UInt32, closing: Closing)] = []
  private var next = 0

  /// Remembers that `stream` closed, forgetting the oldest entry if the ring is full.
  mutating func record(_ stream: UInt32, _ closing: Closing) {
    if ring.count < Self.capacity {
      ring.append((stream, closing))
    } else {
      ring[next] = (stream, closing)
      next = (next + 1) % Self.capacity
    }
  }

  /// How `stream` was closed, if it is among the last remembered.
  func closing(of stream: UInt32) -> Closing? {
    // Stream IDs are never reused, so at most one entry matches.
    for entry in ring where entry.stream == stream { return entry.closing }
    return nil
  }

  var count: Int { ring.count }
}
