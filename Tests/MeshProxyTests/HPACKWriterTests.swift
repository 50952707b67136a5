import NIOCore
import NIOHPACK
import Testing

@testable import MeshProxy

/// RFC 7541 from the encoding side: the bytes of the RFC's own examples, and every block read
/// back by an independent decoder (swift-nio-http2's) through table-size changes and eviction.
@Suite struct HPACKWriterTests {
  func encode(_ fields: [(String, String)], with writer: inout HPACKWriter) -> [UInt8] {
    var buffer = ByteBuffer()
    writer.encode(headers: HPACKHeaders(fields), to: &buffer)
    return Array(buffer.readableBytesView)
  }

  func hex(_ text: String) -> [UInt8] {
    let digits = Array(text.filter { !$0.isWhitespace })
    return stride(from: 0, to: digits.count, by: 2).map {
      UInt8(String(digits[$0...$0 + 1]), radix: 16)!
    }
  }

  /// RFC 7541 Appendix C.3: three requests, without Huffman coding, on one table.
  @Test func theRFCsRequestExamplesByteForByte() {
    var writer = HPACKWriter()
    let first = [
      (":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com"),
    ]
    #expect(
      encode(first, with: &writer) == hex("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d"))
    #expect(
      encode(first + [("cache-control", "no-cache")], with: &writer)
        == hex("8286 84be 5808 6e6f 2d63 6163 6865"))
    let third = [
      (":method", "GET"), (":scheme", "https"), (":path", "/index.html"),
      (":authority", "www.example.com"), ("custom-key", "custom-value"),
    ]
    #expect(
      encode(third, with: &writer)
        == hex("8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65"))
  }

  @Test func integersTakeTheirPrefixThenSevenBitsAtATime() {
    // RFC 7541 C.1: 10 and 1337 with a 5-bit prefix, 42 with an 8-bit one.
    for (value, prefix, bytes) in [
      (10, 5, [0x0A]), (1337, 5, [0x1F, 0x9A, 0x0A]), (42, 8, [0x2A]),
    ] {
      var room = [UInt8](repeating: 0, count: BlockOutput.integerBound)
      let count = room.withUnsafeMutableBytes { room in
        var output = BlockOutput(room.baseAddress!)
        output.integer(value, prefix: prefix, flags: 0)
        return output.count
      }
      #expect(Array(room.prefix(count)) == bytes.map(UInt8.init))
    }
  }

  @Test func valuesThatChangeWithEveryCallAreNotIndexed() {
    var writer = HPACKWriter()
    let trace = ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    let first = encode([trace], with: &writer)
    // Literal without indexing, new name: 0x00.
    #expect(first.first == 0x00)
    #expect(encode([trace], with: &writer) == first)
    #expect(encode([("grpc-timeout", "99m")], with: &writer).first == 0x00)
  }

  @Test func credentialsAreNeverIndexed() {
    var writer = HPACKWriter()
    // authorization is the static table's 23: never indexed, with a 4-bit prefix (0x1F, 8).
    let bytes = encode([("authorization", "Bearer x")], with: &writer)
    #expect(Array(bytes.prefix(2)) == [0x1F, 0x08])
    #expect(encode([("authorization", "Bearer x")], with: &writer) == bytes)
    var marked = HPACKHeaders()
    marked.add(name: "x-secret", value: "s", indexing: .neverIndexed)
    var buffer = ByteBuffer()
    writer.encode(headers: marked, to: &buffer)
    #expect(buffer.readableBytesView.first == 0x10)
  }

  @Test func aSmallerTableIsAnnouncedBeforeTheNextBlock() throws {
    var writer = HPACKWriter()
    var decoder = HPACKDecoder(allocator: ByteBufferAllocator())
    var buffer = ByteBuffer()
    writer.encode(headers: HPACKHeaders([("x-a", "1")]), to: &buffer)
    _ = try decoder.decodeHeaders(from: &buffer)
    // Down to 0 and back, between two blocks: both sizes are announced, the smallest first.
    writer.setTableSize(0)
    writer.setTableSize(4_096)
    writer.encode(headers: HPACKHeaders([("x-a", "1")]), to: &buffer)
    #expect(Array(buffer.readableBytesView.prefix(4)) == [0x20, 0x3F, 0xE1, 0x1F])
    #expect(try decoder.decodeHeaders(from: &buffer) == HPACKHeaders([("x-a", "1")]))
    // A peer that allows more than 4 KiB changes nothing.
    writer.setTableSize(65_536)
    writer.encode(headers: HPACKHeaders([("x-a", "1")]), to: &buffer)
    #expect(buffer.readableBytesView.first! & 0x80 == 0x80)
    _ = try decoder.decodeHeaders(from: &buffer)
  }

  /// Random blocks of fields that repeat, vary and grow, read back by swift-nio-http2's
  /// decoder, while the peer's table size moves: what comes out is what went in.
  @Test func everyBlockReadsBackThroughAnotherDecoder() throws {
    var random = SplitMix(seed: 7)
    var writer = HPACKWriter()
    var decoder = HPACKDecoder(allocator: ByteBufferAllocator())
    let names = [
      ":path", ":authority", "content-type", "user-agent", "x-custom", "grpc-timeout",
      "traceparent", "x-trellis-peer-identity", "cookie", "accept-encoding", "x-long",
    ]
    for block in 0..<2_000 {
      if block % 97 == 0 {
        writer.setTableSize([0, 64, 256, 4_096, 100_000][Int(random.next() % 5)])
      }
      var fields: [(String, String)] = []
      for _ in 0..<Int(random.next() % 12) {
        let name = names[Int(random.next() % UInt64(names.count))]
        let length = name == "x-long" ? Int(random.next() % 3_000) : Int(random.next() % 40)
        let value = String(repeating: "v", count: length) + "\(random.next() % 20)"
        fields.append((name, value))
      }
      var buffer = ByteBuffer()
      writer.encode(headers: HPACKHeaders(fields), to: &buffer)
      let decoded = try decoder.decodeHeaders(from: &buffer)
      #expect(decoded.map { "\($0.name): \($0.value)" } == fields.map { "\($0.0): \($0.1)" })
      #expect(buffer.readableBytes == 0)
    }
  }

  @Test func theIndexFindsEveryKeyUntilRemovedThroughRebuilds() {
    var index = FieldIndex(capacity: 8)
    // Keys that collide on purpose (the same low bits), and one filed twice.
    for number in 0..<100 { index.insert(UInt64(number % 10) << 32 | 3, number) }
    for number in 0..<100 where number % 3 == 0 {
      index.remove(UInt64(number % 10) << 32 | 3, number)
    }
    for key in 0..<10 {
      var probe = index.probe(UInt64(key) << 32 | 3)
      var found: [Int] = []
      while let number = index.next(&probe, UInt64(key) << 32 | 3) { found.append(number) }
      let expected = (0..<100).filter { $0 % 10 == key && $0 % 3 != 0 }
      #expect(found.sorted() == expected)
    }
    #expect(index.count == (0..<100).filter { $0 % 3 != 0 }.count)
  }
}

/// A small seeded generator, so that a failure can be replayed.
struct SplitMix: RandomNumberGenerator {
  var state: UInt64
  init(seed: UInt64) { state = seed }
  mutating func next() -> UInt64 {
    state &+= 0x9E37_79B9_7F4A_7C15
    var z = state
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
  }
}
