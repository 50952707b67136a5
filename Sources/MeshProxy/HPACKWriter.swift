import NIOCore
import NIOHPACK

/// Encodes the header blocks a connection sends (RFC 7541), with the dynamic table that saves
/// repeating a field, found by hash rather than by walking the tables.
///
/// Every block of every call goes through here, twice per sidecar, so the cost per field is
/// what counts: a field is hashed once (64 bits at a time), looked up in two open-addressed
/// indexes, the static table's (shared) and the live dynamic entries', and confirmed by
/// comparing its bytes; the block is written in place, in room reserved once. Strings are
/// written as they are (no Huffman coding: it costs more CPU than the bytes it saves on these
/// connections). swift-nio-http2's `HPACKEncoder`, which this replaces, walked the dynamic
/// table comparing names byte by byte without regard to case, and wrote the block a byte at a
/// time: a fifth to a quarter of a sidecar's instructions per call went to it.
///
/// What is indexed: any field the caller allows (`HPACKIndexing.indexable`), except the ones
/// whose values change with every call (trace context, deadlines, status messages), which
/// would only push out the entries that do repeat, and any larger than half the table.
/// Credentials (`authorization`, cookies) are never indexed, here or by a proxy further on
/// (RFC 7541 §7.1.3).
struct HPACKWriter {
  /// The table size this side uses at most, whatever larger size the peer allows.
  static let maximumTableSize = 4_096

  private struct Entry {
    let name: String
    let value: String
    /// The keys of the entry in `index`: for the whole field, and for its name alone.
    let fieldKey: UInt64
    let nameKey: UInt64
    var size: Int { name.utf8.count + value.utf8.count + 32 }
  }

  /// The dynamic table, oldest first.
  private var entries = CircularBuffer<Entry>(initialCapacity: 32)
  /// How many entries were ever inserted: the newest has the number `inserted - 1`, and its
  /// HPACK index is 62.
  private var inserted = 0
  private var size = 0
  /// The table size in force, as the peer's decoder knows it.
  private(set) var tableSize = HPACKWriter.maximumTableSize
  /// The smallest table size since the last block, when the size changed: a size update (or
  /// two) is owed at the start of the next block (RFC 7541 §4.2).
  private var smallestSizeSinceBlock: Int?
  /// The dynamic table's entries by key (their numbers).
  private var index = FieldIndex(capacity: 64)

  init() {}

  /// The peer's SETTINGS_HEADER_TABLE_SIZE.
  mutating func setTableSize(_ allowed: Int) {
    let newSize = min(max(allowed, 0), Self.maximumTableSize)
    guard newSize != tableSize else { return }
    smallestSizeSinceBlock = min(smallestSizeSinceBlock ?? newSize, newSize)
    tableSize = newSize
    evict(toFit: 0)
  }

  /// Appends the header block of `headers` to `buffer`, reserving room for it once and
  /// writing its bytes in place.
  mutating func encode(headers: HPACKHeaders, to buffer: inout ByteBuffer) {
    // Each field: its bytes, and three integers of at most 10 bytes each.
    var bound = 2 * BlockOutput.integerBound
    for (name, value, _) in headers { bound += name.utf8.count + value.utf8.count + 32 }
    buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: bound) { room in
      var output = BlockOutput(room.baseAddress!)
      if let smallest = smallestSizeSinceBlock {
        smallestSizeSinceBlock = nil
        if smallest < tableSize { output.integer(smallest, prefix: 5, flags: 0x20) }
        output.integer(tableSize, prefix: 5, flags: 0x20)
      }
      for (name, value, indexing) in headers {
        append(name: name, value: value, indexing, to: &output)
      }
      return output.count
    }
  }

  private mutating func append(
    name: String, value: String, _ indexing: HPACKIndexing, to output: inout BlockOutput
  ) {
    let nameKey = Self.key(name) ^ Self.nameSalt
    let fieldKey = Self.key(value, after: nameKey)
    // The fewest bytes first: the whole field, then its name alone.
    if let at = find(fieldKey, name, value) {
      return output.integer(at, prefix: 7, flags: 0x80)
    }
    let nameIndex = find(nameKey, name) ?? 0
    let fieldSize = name.utf8.count + value.utf8.count + 32
    switch indexing {
    case .neverIndexed,
      .indexable where Self.isCredential(name):
      output.integer(nameIndex, prefix: 4, flags: 0x10)
    case .indexable where fieldSize <= tableSize / 2 && Self.repeats(name):
      output.integer(nameIndex, prefix: 6, flags: 0x40)
      insert(Entry(name: name, value: value, fieldKey: fieldKey, nameKey: nameKey))
    default:
      output.integer(nameIndex, prefix: 4, flags: 0x00)
    }
    if nameIndex == 0 { output.string(name) }
    output.string(value)
  }

  // MARK: The tables

  /// The HPACK index of a field (`value` nil: of a name) filed under `key`: the static
  /// table's, or a live dynamic entry's.
  private func find(_ key: UInt64, _ name: String, _ value: String? = nil) -> Int? {
    var probe = Self.staticIndex.probe(key)
    while let number = Self.staticIndex.next(&probe, key) {
      let (staticName, staticValue) = Self.staticTable[number]
      if staticName == name && (value == nil || staticValue == value) { return number + 1 }
    }
    guard !entries.isEmpty else { return nil }
    let oldest = inserted - entries.count
    probe = index.probe(key)
    while let number = index.next(&probe, key) {
      let entry = entries[entries.index(entries.startIndex, offsetBy: number - oldest)]
      if entry.name == name && (value == nil || entry.value == value) {
        return Self.staticTable.count + inserted - number
      }
    }
    return nil
  }

  private mutating func insert(_ entry: Entry) {
    let entrySize = entry.size
    evict(toFit: entrySize)
    guard size + entrySize <= tableSize else { return }
    entries.append(entry)
    size += entrySize
    index.insert(entry.fieldKey, inserted)
    index.insert(entry.nameKey, inserted)
    inserted += 1
  }

  private mutating func evict(toFit incoming: Int) {
    while size + incoming > tableSize, let oldest = entries.popFirst() {
      let number = inserted - entries.count - 1
      size -= oldest.size
      index.remove(oldest.fieldKey, number)
      index.remove(oldest.nameKey, number)
    }
  }

  // MARK: Policy

  /// Whether a field of this name is worth a table entry: not one whose value changes with
  /// every call.
  private static func repeats(_ name: String) -> Bool {
    switch name.utf8.count {
    case 2: name != "b3"
    case 10: name != "tracestate"
    case 11: name != "traceparent" && name != "x-b3-spanid"
    case 12:
      name != "grpc-timeout" && name != "grpc-message" && name != "x-request-id"
        && name != "x-b3-traceid"
    case 17: name != "x-b3-parentspanid"
    default: true
    }
  }

  private static func isCredential(_ name: String) -> Bool {
    switch name.utf8.count {
    case 6: name == "cookie"
    case 10: name == "set-cookie"
    case 13: name == "authorization"
    case 19: name == "proxy-authorization"
    default: false
    }
  }

  // MARK: Keys

  private static let nameSalt: UInt64 = 0x5BD1_E995_7F4A_7C15

  /// A 64-bit key of `string`'s bytes, folded into `seed`.
  @inline(__always)
  static func key(_ string: String, after seed: UInt64 = 0) -> UInt64 {
    string.utf8.withContiguousStorageIfAvailable { key($0, after: seed) }
      ?? Array(string.utf8).withUnsafeBufferPointer { key($0, after: seed) }
  }

  static func key(_ bytes: UnsafeBufferPointer<UInt8>, after seed: UInt64) -> UInt64 {
    let multiplier: UInt64 = 0x9E37_79B9_7F4A_7C15
    var key = (seed ^ UInt64(bytes.count)) &* multiplier
    var offset = 0
    if let base = bytes.baseAddress {
      let raw = UnsafeRawPointer(base)
      while offset + 8 <= bytes.count {
        key = (key ^ raw.loadUnaligned(fromByteOffset: offset, as: UInt64.self)) &* multiplier
        key ^= key >> 29
        offset += 8
      }
    }
    var tail: UInt64 = 0
    var shift: UInt64 = 0
    while offset < bytes.count {
      tail |= UInt64(bytes[offset]) << shift
      shift += 8
      offset += 1
    }
    key = (key ^ tail) &* multiplier
    return key ^ key >> 32
  }

  // MARK: The static table (RFC 7541 Appendix A)

  static let staticTable: [(String, String)] = [
    (":authority", ""), (":method", "GET"), (":method", "POST"), (":path", "/"),
    (":path", "/index.html"), (":scheme", "http"), (":scheme", "https"), (":status", "200"),
    (":status", "204"), (":status", "206"), (":status", "304"), (":status", "400"),
    (":status", "404"), (":status", "500"), ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"), ("accept-language", ""), ("accept-ranges", ""),
    ("accept", ""), ("access-control-allow-origin", ""), ("age", ""), ("allow", ""),
    ("authorization", ""), ("cache-control", ""), ("content-disposition", ""),
    ("content-encoding", ""), ("content-language", ""), ("content-length", ""),
    ("content-location", ""), ("content-range", ""), ("content-type", ""), ("cookie", ""),
    ("date", ""), ("etag", ""), ("expect", ""), ("expires", ""), ("from", ""), ("host", ""),
    ("if-match", ""), ("if-modified-since", ""), ("if-none-match", ""), ("if-range", ""),
    ("if-unmodified-since", ""), ("last-modified", ""), ("link", ""), ("location", ""),
    ("max-forwards", ""), ("proxy-authenticate", ""), ("proxy-authorization", ""),
    ("range", ""), ("referer", ""), ("refresh", ""), ("retry-after", ""), ("server", ""),
    ("set-cookie", ""), ("strict-transport-security", ""), ("transfer-encoding", ""),
    ("user-agent", ""), ("vary", ""), ("via", ""), ("www-authenticate", ""),
  ]

  /// The static table by key (offsets into `staticTable`), shared by every writer.
  private static let staticIndex: FieldIndex = {
    var index = FieldIndex(capacity: 256)
    var named = Set<String>()
    for (offset, (name, value)) in staticTable.enumerated() {
      let nameKey = key(name) ^ nameSalt
      index.insert(key(value, after: nameKey), offset)
      // A name's first entry is enough.
      if named.insert(name).inserted { index.insert(nameKey, offset) }
    }
    return index
  }()
}

/// An open-addressed index from 64-bit keys to entry numbers (linear probing). Several entries
/// may share a key, so whoever looks one up confirms it; a removed entry leaves a tombstone
/// until the slots are rebuilt, which happens when fewer than a quarter of them are empty.
struct FieldIndex {
  private struct Slot {
    var key: UInt64
    var number: Int
  }

  private static let empty = Int.min
  private static let tombstone = Int.min + 1

  private var slots: [Slot]
  private var mask: Int
  /// Slots holding an entry or a tombstone.
  private var used = 0
  private(set) var count = 0

  /// `capacity`: a power of two.
  init(capacity: Int) {
    precondition(capacity > 0 && capacity & (capacity - 1) == 0)
    slots = Array(repeating: Slot(key: 0, number: Self.empty), count: capacity)
    mask = capacity - 1
  }

  /// Where a lookup of `key` starts.
  struct Probe {
    fileprivate var position: Int
  }

  func probe(_ key: UInt64) -> Probe {
    Probe(position: Int(truncatingIfNeeded: key) & mask)
  }

  /// The next entry number filed under `key`, or nil when there are no more.
  func next(_ probe: inout Probe, _ key: UInt64) -> Int? {
    while true {
      let slot = slots[probe.position]
      probe.position = (probe.position + 1) & mask
      if slot.number == Self.empty { return nil }
      if slot.key == key && slot.number != Self.tombstone { return slot.number }
    }
  }

  mutating func insert(_ key: UInt64, _ number: Int) {
    if (used + 1) * 4 > slots.count * 3 { rebuild() }
    var position = Int(truncatingIfNeeded: key) & mask
    while slots[position].number != Self.empty && slots[position].number != Self.tombstone {
      position = (position + 1) & mask
    }
    if slots[position].number == Self.empty { used += 1 }
    slots[position] = Slot(key: key, number: number)
    count += 1
  }

  mutating func remove(_ key: UInt64, _ number: Int) {
    var position = Int(truncatingIfNeeded: key) & mask
    while slots[position].number != Self.empty {
      if slots[position].key == key && slots[position].number == number {
        slots[position].number = Self.tombstone
        count -= 1
        return
      }
      position = (position + 1) & mask
    }
  }

  /// The same entries without tombstones, in twice the slots if they fill half.
  private mutating func rebuild() {
    let old = slots
    var rebuilt = FieldIndex(capacity: count * 2 >= old.count ? old.count * 2 : old.count)
    for slot in old where slot.number != Self.empty && slot.number != Self.tombstone {
      rebuilt.insert(slot.key, slot.number)
    }
    self = rebuilt
  }
}

/// The bytes of a header block, written in place into room reserved for them.
struct BlockOutput {
  /// The most bytes an integer takes (RFC 7541 §5.1: the prefix, then 7 bits a byte).
  static let integerBound = 10

  private let base: UnsafeMutableRawPointer
  private(set) var count = 0

  init(_ base: UnsafeMutableRawPointer) {
    self.base = base
  }

  mutating func byte(_ byte: UInt8) {
    base.storeBytes(of: byte, toByteOffset: count, as: UInt8.self)
    count += 1
  }

  /// RFC 7541 §5.1: `value` with an N-bit prefix, the first byte's other bits `flags`.
  mutating func integer(_ value: Int, prefix: Int, flags: UInt8) {
    let limit = (1 << prefix) - 1
    guard value >= limit else { return byte(flags | UInt8(value)) }
    byte(flags | UInt8(limit))
    var rest = value - limit
    while rest >= 128 {
      byte(UInt8(rest & 0x7F | 0x80))
      rest >>= 7
    }
    byte(UInt8(rest))
  }

  /// RFC 7541 §5.2, without Huffman coding.
  mutating func string(_ string: String) {
    integer(string.utf8.count, prefix: 7, flags: 0)
    let copied: Void? = string.utf8.withContiguousStorageIfAvailable { bytes in
      if let source = bytes.baseAddress {
        (base + count).copyMemory(from: source, byteCount: bytes.count)
      }
      count += bytes.count
    }
    if copied == nil {
      for byte in string.utf8 { self.byte(byte) }
    }
  }
}

extension ByteBuffer {
  /// A header block as `encoder` encodes `headers`: one HEADERS frame (END_STREAM if asked) when
  /// it fits `maxFrameSize`, as a response's headers and trailers do, else HEADERS and
  /// CONTINUATION frames, END_HEADERS on the last.
  mutating func writeHeadersFrame(
    _ headers: HPACKHeaders, endStream: Bool, stream: UInt32, encoder: inout HPACKWriter,
    maxFrameSize: Int = HTTP2Wire.defaultMaxFrameSize
  ) {
    let start = writerIndex
    let endFlag = endStream ? FrameFlag.endStream : 0
    writeFrameHeader(
      length: 0, type: FrameType.headers, flags: endFlag | FrameFlag.endHeaders, stream: stream)
    encoder.encode(headers: headers, to: &self)
    let length = writerIndex - start - HTTP2Wire.frameHeaderLength
    if length <= maxFrameSize {
      setFrameLength(length, at: start)
      return
    }
    // Too big for one frame: the block is copied out and written again in frames.
    var block = ByteBuffer(
      buffer: getSlice(at: start + HTTP2Wire.frameHeaderLength, length: length)!)
    moveWriterIndex(to: start)
    var first = true
    while block.readableBytes > 0 {
      let chunk = block.readSlice(length: min(maxFrameSize, block.readableBytes))!
      let last = block.readableBytes == 0
      writeFrameHeader(
        length: chunk.readableBytes, type: first ? FrameType.headers : FrameType.continuation,
        flags: (first ? endFlag : 0) | (last ? FrameFlag.endHeaders : 0), stream: stream)
      writeImmutableBuffer(chunk)
      first = false
    }
  }
}
