import MeshTracing
import Testing

/// Trace headers as W3C Trace Context (level 1) and B3 define them, valid and not.
@Suite struct TraceContextTests {
  let trace = "4bf92f3577b34da6a3ce929d0e0e4736"
  let parent = "00f067aa0ba902b7"

  func incoming(_ headers: [String: String]) -> IncomingTrace {
    IncomingTrace.extract { headers[$0] }
  }

  @Test func aValidTraceparentIsRead() throws {
    guard
      case .context(let context, .w3c) = incoming([
        "traceparent": "00-\(trace)-\(parent)-01",
        "tracestate": "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
      ])
    else {
      Issue.record("not read")
      return
    }
    #expect(context.traceID.description == trace)
    #expect(context.spanID.description == parent)
    #expect(context.sampled)
    #expect(context.traceState == "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")
    #expect(context.traceparent == "00-\(trace)-\(parent)-01")
    // Only the low bit of the flags is the sampling decision.
    guard case .context(let other, _) = incoming(["traceparent": "00-\(trace)-\(parent)-02"]) else {
      Issue.record("flags 02 not read")
      return
    }
    #expect(!other.sampled)
  }

  @Test func aLaterVersionMayAppendFields() {
    guard
      case .context(let context, _) = incoming([
        "traceparent": "cc-\(trace)-\(parent)-01-what-the-future-holds"
      ])
    else {
      Issue.record("a later version's extra fields are ignored, not refused")
      return
    }
    #expect(context.sampled)
  }

  @Test(arguments: [
    ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "version ff"),
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", "for version 00"),
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1", "characters"),
    ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", "trace id is all zeros"),
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", "parent id is all zeros"),
    ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", "trace id"),
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01", "parent id"),
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g", "flags"),
    ("00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01", "expected"),
    ("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x", "after the flags"),
  ])
  func aMalformedTraceparentIsRefused(_ value: String, _ reason: String) {
    guard case .malformed(let why) = incoming(["traceparent": value]) else {
      Issue.record("\(value) was accepted")
      return
    }
    #expect(why.contains(reason), "\(why)")
  }

  @Test func anOverlongTracestateIsDropped() {
    let long = String(repeating: "a=b,", count: 200)
    guard
      case .context(let context, _) = incoming([
        "traceparent": "00-\(trace)-\(parent)-01", "tracestate": long,
      ])
    else { return }
    #expect(context.traceState == nil)
  }

  @Test func b3SingleIsTranslated() {
    guard
      case .context(let context, .b3Single) = incoming([
        "b3": "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90"
      ])
    else {
      Issue.record("not read")
      return
    }
    #expect(context.traceID.description == "80f198ee56343ba864fe8b2a57d3eff7")
    #expect(context.spanID.description == "e457b5a2e4d86bd1")
    #expect(context.sampled)
    // A 64-bit trace id is the low half.
    guard case .context(let short, _) = incoming(["b3": "a3ce929d0e0e4736-00f067aa0ba902b7-d"])
    else {
      Issue.record("a 64-bit trace id is valid B3")
      return
    }
    #expect(short.traceID.description == "0000000000000000a3ce929d0e0e4736")
    #expect(short.sampled, "debug means sampled")
    // A decision alone starts a new trace; no decision leaves it to the receiver.
    #expect(incoming(["b3": "0"]) == .none)
    guard case .undecided = incoming(["b3": "a3ce929d0e0e4736-00f067aa0ba902b7"]) else {
      Issue.record("no decision")
      return
    }
    guard case .malformed = incoming(["b3": "a3ce929d0e0e4736-00f067aa0ba902b7-yes"]) else {
      Issue.record("a bad decision is refused")
      return
    }
  }

  @Test func b3MultiIsTranslated() {
    guard
      case .context(let context, .b3Multi) = incoming([
        "x-b3-traceid": "80F198EE56343BA864FE8B2A57D3EFF7", "x-b3-spanid": "e457b5a2e4d86bd1",
        "x-b3-flags": "1",
      ])
    else {
      Issue.record("not read")
      return
    }
    #expect(context.traceID.description == "80f198ee56343ba864fe8b2a57d3eff7")
    #expect(context.sampled)
    guard
      case .malformed = incoming([
        "x-b3-traceid": "80f198ee56343ba8", "x-b3-spanid": "0000000000000000",
      ])
    else {
      Issue.record("a zero span id is refused")
      return
    }
  }

  @Test func traceparentWinsOverB3() {
    guard
      case .context(_, .w3c) = incoming([
        "traceparent": "00-\(trace)-\(parent)-01", "b3": "a3ce929d0e0e4736-00f067aa0ba902b7-1",
      ])
    else {
      Issue.record("W3C first")
      return
    }
  }

  @Test func traceIDsBeginWithWhenTheyBeganAndAreRandomAfter() {
    var ids = IDGenerator()
    let second: UInt64 = 1_796_601_600  // 2026-12-07T00:00:00Z
    let first = ids.traceID(now: second * 1_000_000_000 + 500_000_000)
    #expect(first.high >> 32 == second, "\(first)")
    #expect(first.high >> 16 & 0xFFFF == 0x8000, "half a second: \(first)")
    #expect(first.description.hasPrefix(String(second, radix: 16) + "8000"), "\(first)")
    // Ids of later instants (1/65536 s apart or more) sort after; ids of one instant differ
    // in their other 10 bytes.
    var previous = first
    var tails = Set<String>()
    for offset in 1...1000 {
      let instant = second * 1_000_000_000 + 500_000_000 + UInt64(offset / 10) * 20_000
      let id = ids.traceID(now: instant)
      #expect(id.isValid && id.high >> 32 == second)
      if offset % 10 == 0 { #expect(id.description > previous.description) }
      previous = id
      tails.insert(String(id.description.dropFirst(12)))
    }
    #expect(tails.count == 1000)
    let last = ids.traceID(now: second * 1_000_000_000 + 999_999_999)
    #expect(last.high >> 16 & 0xFFFF == 0xFFFF && last.high >> 32 == second)
  }

  @Test func idsAndSampling() {
    var ids = IDGenerator()
    var seen = Set<UInt64>()
    for _ in 0..<10_000 {
      let id = ids.spanID()
      #expect(id.isValid)
      seen.insert(id.value)
      let unit = ids.unit()
      #expect(unit >= 0 && unit < 1)
    }
    #expect(seen.count == 10_000)
    #expect(ids.traceID().isValid)
    let never = Sampler(rate: 0)
    let always = Sampler(rate: 1)
    let tenth = Sampler(rate: 0.1)
    var sampled = 0
    for _ in 0..<100_000 {
      let random = ids.unit()
      #expect(!never.samplesNewTrace(random: random))
      #expect(always.samplesNewTrace(random: random))
      if tenth.samplesNewTrace(random: random) { sampled += 1 }
    }
    #expect((9_000...11_000).contains(sampled), "\(sampled) of 100,000 at 10 %")
    #expect(Sampler(rate: 7).rate == 1 && Sampler(rate: -1).rate == 0)
  }

  @Test func theQueueDropsAndCountsWhatDoesNotFit() {
    let queue = SpanQueue(capacity: 3)
    var ids = IDGenerator()
    for index in 0..<5 {
      queue.record(
        Span(
          context: TraceContext(traceID: ids.traceID(), spanID: ids.spanID(), sampled: true),
          parent: nil, name: "s\(index)", kind: .client, start: 1, end: 2))
    }
    #expect(queue.count == 3 && queue.dropped == 2 && queue.recorded == 3)
    #expect(queue.take(2).map(\.name) == ["s0", "s1"])
    #expect(queue.take(10).map(\.name) == ["s2"])
    #expect(queue.count == 0)
  }
}
