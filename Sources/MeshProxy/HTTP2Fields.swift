import NIOHPACK

/// The rules RFC 9113 §8.2–8.3 set on a header block, checked before anything of it is
/// forwarded: a block that breaks one is malformed, a stream error (PROTOCOL_ERROR) that the
/// sidecar answers itself, so the app behind never sees it.
enum HTTP2Fields {
  /// What a header block is on its stream.
  enum Block {
    /// A request's HEADERS: pseudo-headers `:method`, `:scheme`, `:path` (each once),
    /// `:authority` at most once.
    case request
    /// A response's HEADERS: `:status` once.
    case response
    /// Trailers, either way: no pseudo-header at all.
    case trailers
  }

  /// What one pass over a header block finds.
  struct Inspection {
    /// Why the block is malformed, or nil.
    var fault: BlockFault?
    /// The `content-length` it declares: nil without one, or -1 for one that is not a single
    /// non-negative number (malformed).
    var contentLength: Int?
    /// Whether it carries `x-trellis-peer-identity`, which only the sidecar may set.
    var carriesPeerIdentity = false
    /// A request's `:path` and `:authority`, and any block's `content-type`: what routing reads.
    var path: String?
    var authority: String?
    var contentType: String?

    /// Why the block is malformed, in words, or nil.
    var problem: String? { fault?.problem }
  }

  /// What makes a block malformed; the words for it are made only when asked for.
  enum BlockFault: Equatable {
    case field(name: String, FieldFault)
    case pseudoAfterRegular(String)
    case pseudoOutOfPlace(String, Block)
    case emptyPath
    case connectionSpecific(String)
    case teOtherThanTrailers
    case missingOrRepeatedPseudo
    case missingOrRepeatedStatus

    var problem: String {
      switch self {
      case .field(let name, let fault): fault.problem(name: name)
      case .pseudoAfterRegular(let name): "pseudo-header \(name) after regular headers"
      case .pseudoOutOfPlace(let name, let block): "pseudo-header \(name) in \(block)"
      case .emptyPath: "empty :path"
      case .connectionSpecific(let name): "connection-specific header \(name)"
      case .teOtherThanTrailers: "te other than trailers"
      case .missingOrRepeatedPseudo: "missing or repeated pseudo-headers"
      case .missingOrRepeatedStatus: "missing or repeated :status"
      }
    }
  }

  /// Why `headers` are malformed as a `block`, or nil. `strict` (what callers send): values
  /// with white space at either end are malformed too; what an app answers may carry it (gRPC
  /// leaves spaces in `grpc-message` unencoded), and is passed on.
  static func malformed(_ headers: HPACKHeaders, as block: Block, strict: Bool) -> String? {
    inspect(headers, as: block, strict: strict).problem
  }

  /// The `content-length` a block declares: nil without one, or -1 for one that is not a
  /// single non-negative number (malformed). `inspect` reads the same in its pass.
  static func contentLength(_ headers: HPACKHeaders) -> Int? {
    headers.reduce(nil) { found, header in
      header.name == "content-length" ? declaring(header.value, after: found) : found
    }
  }

  /// Checks `headers` as a `block` (see `malformed`) and reads what the forwarding path needs
  /// of them, in one pass: it runs on every header block of every call, so it is kept small
  /// (one exit, faults worded only when asked for) as well as quick.
  static func inspect(_ headers: HPACKHeaders, as block: Block, strict: Bool) -> Inspection {
    var inspection = Inspection()
    inspection.fault = scan(headers, as: block, strict: strict, into: &inspection)
    return inspection
  }

  /// The pass of `inspect`: what it reads goes to `inspection`; it returns the first fault.
  private static func scan(
    _ headers: HPACKHeaders, as block: Block, strict: Bool, into inspection: inout Inspection
  ) -> BlockFault? {
    var pseudo = true
    // The pseudo-headers seen, a bit each, and whether one came twice.
    let (method, scheme, path, authority, status): (UInt8, UInt8, UInt8, UInt8, UInt8) =
      (1, 2, 4, 8, 16)
    var seen: UInt8 = 0
    var repeated = false
    for (name, value, _) in headers {
      if let fault = fieldFault(name: name, value: value, strict: strict) {
        return .field(name: name, fault)
      }
      let (length, first) = (name.utf8.count, name.utf8.first)
      if first == UInt8(ascii: ":") {
        guard pseudo else { return .pseudoAfterRegular(name) }
        // Told apart by length first: a string comparison that fails costs far more than one
        // that succeeds.
        let kind: UInt8
        switch (block, length) {
        case (.request, 7) where name == ":method": kind = method
        case (.request, 7) where name == ":scheme": kind = scheme
        case (.request, 5) where name == ":path":
          guard !value.isEmpty else { return .emptyPath }
          kind = path
          inspection.path = value
        case (.request, 10) where name == ":authority":
          kind = authority
          inspection.authority = value
        case (.response, 7) where name == ":status": kind = status
        default:
          return .pseudoOutOfPlace(name, block)
        }
        repeated = repeated || seen & kind != 0
        seen |= kind
        continue
      }
      pseudo = false
      // The names the rules pick out, told apart by length and first byte before a string
      // is compared.
      switch (length, first) {
      case (10, UInt8(ascii: "c")) where name == "connection",
        (10, UInt8(ascii: "k")) where name == "keep-alive",
        (16, UInt8(ascii: "p")) where name == "proxy-connection",
        (17, UInt8(ascii: "t")) where name == "transfer-encoding",
        (7, UInt8(ascii: "u")) where name == "upgrade":
        return .connectionSpecific(name)
      case (2, UInt8(ascii: "t")) where name == "te":
        guard value == "trailers" else { return .teOtherThanTrailers }
      case (14, UInt8(ascii: "c")) where name == "content-length":
        inspection.contentLength = declaring(value, after: inspection.contentLength)
      case (23, UInt8(ascii: "x")) where name == "x-trellis-peer-identity":
        inspection.carriesPeerIdentity = true
      case (12, UInt8(ascii: "c")) where name == "content-type" && inspection.contentType == nil:
        inspection.contentType = value
      default:
        break
      }
    }
    switch block {
    case .request:
      // :method, :scheme and :path once each, :authority at most once.
      let required = method | scheme | path
      return !repeated && seen & required == required ? nil : .missingOrRepeatedPseudo
    case .response:
      return !repeated && seen == status ? nil : .missingOrRepeatedStatus
    case .trailers:
      return nil
    }
  }

  /// The length a block declares once a `content-length` field of `value` follows what the
  /// block's earlier ones declared (`found`): they must all agree, or it is -1 (malformed).
  private static func declaring(_ value: String, after found: Int?) -> Int {
    let length = declaredLength(value)
    return found == nil || found == length ? length : -1
  }

  /// A `content-length` value: one non-negative number, or a list of that number repeated
  /// (RFC 9110 §8.6); -1 for anything else.
  private static func declaredLength(_ value: String) -> Int {
    func number<Text: StringProtocol>(_ text: Text) -> Int? {
      guard !text.isEmpty, text.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else { return nil }
      return Int(text)
    }
    if let length = number(value) { return length }
    var length: Int?
    for part in value.split(separator: ",", omittingEmptySubsequences: false) {
      let isBlank: (Character) -> Bool = { $0 == " " || $0 == "\t" }
      let trimmed = part.drop(while: isBlank)
      guard let last = trimmed.lastIndex(where: { !isBlank($0) }),
        let each = number(trimmed[...last]), length == nil || length == each
      else { return -1 }
      length = each
    }
    return length ?? -1
  }

  /// Why a field breaks RFC 9113 §8.2.1, or nil. A name is lower-case token characters (a
  /// pseudo-header's leading colon aside): no upper case, space, colon, control or non-ASCII
  /// byte. A value holds no NUL, CR or LF, and (`strict`) neither starts nor ends with a space
  /// or tab.
  static func fieldProblem(name: String, value: String, strict: Bool = true) -> String? {
    fieldFault(name: name, value: value, strict: strict).map { $0.problem(name: name) }
  }

  /// What is wrong with a field; the words for it are made only when something is.
  enum FieldFault: Equatable {
    case emptyName, upperCaseName, nameByte(UInt8), controlInValue, spaceAroundValue

    func problem(name: String) -> String {
      switch self {
      case .emptyName: "empty header name"
      case .upperCaseName: "upper-case header name"
      case .nameByte(let byte): "header name with byte \(byte)"
      case .controlInValue: "header \(name) with NUL, CR or LF in its value"
      case .spaceAroundValue: "header \(name) with white space around its value"
      }
    }
  }

  /// On every header of every call: names and values are read in place (every string here is
  /// native, so contiguous), eight bytes at a time.
  @inline(__always)
  private static func fieldFault(name: String, value: String, strict: Bool) -> FieldFault? {
    guard let nameFault = name.utf8.withContiguousStorageIfAvailable(nameFault) else {
      return copiedFieldFault(name: name, value: value, strict: strict)
    }
    if let nameFault { return nameFault }
    let valueFault = value.utf8.withContiguousStorageIfAvailable {
      Self.valueFault($0, strict: strict)
    }
    guard let valueFault else { return copiedFieldFault(name: name, value: value, strict: strict) }
    return valueFault
  }

  /// `fieldFault` for strings that are not stored contiguously (bridged ones; never on the
  /// forwarding path, whose strings are all native).
  @inline(never)
  private static func copiedFieldFault(name: String, value: String, strict: Bool) -> FieldFault? {
    if let fault = Array(name.utf8).withUnsafeBufferPointer(nameFault) { return fault }
    return Array(value.utf8).withUnsafeBufferPointer { valueFault($0, strict: strict) }
  }

  @inline(__always)
  private static func valueFault(_ bytes: UnsafeBufferPointer<UInt8>, strict: Bool) -> FieldFault? {
    if holdsNULCROrLF(bytes) { return .controlInValue }
    guard strict, let first = bytes.first, let last = bytes.last else { return nil }
    return first == 0x20 || first == 0x09 || last == 0x20 || last == 0x09
      ? .spaceAroundValue : nil
  }

  @inline(__always)
  private static func nameFault(_ bytes: UnsafeBufferPointer<UInt8>) -> FieldFault? {
    guard let first = bytes.first else { return .emptyName }
    // A pseudo-header's leading colon aside.
    if allNameBytes(bytes, from: first == UInt8(ascii: ":") ? 1 : 0) { return nil }
    return firstNameFault(bytes)
  }

  /// Which byte of a name that is not all token characters is wrong.
  @inline(never)
  private static func firstNameFault(_ bytes: UnsafeBufferPointer<UInt8>) -> FieldFault? {
    for index in bytes.indices where !isNameByte(bytes[index]) {
      let byte = bytes[index]
      if index == 0 && byte == UInt8(ascii: ":") { continue }
      return byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z")
        ? .upperCaseName : .nameByte(byte)
    }
    return nil
  }

  /// RFC 9110's token characters, lower case only, as bits by byte: 0–63 and 64–127.
  /// (`!#$%&'*+-.` and digits; `^_` and `` ` ``, `a`–`z`, `|` and `~`.)
  private static let tokenBytesBelow64: UInt64 = 0x03FF_6CFA_0000_0000
  private static let tokenBytesFrom64: UInt64 = 0x57FF_FFFF_C000_0000

  @inline(__always)
  private static func isNameByte(_ byte: UInt8) -> Bool {
    byte < 64
      ? tokenBytesBelow64 >> UInt64(byte) & 1 != 0
      : byte < 128 && tokenBytesFrom64 >> UInt64(byte &- 64) & 1 != 0
  }

  /// Whether `bytes` from `start` are all token characters: eight at a time while they are the
  /// bytes of nearly every name (lower-case letters, digits and `-`), one by one otherwise.
  @inline(__always)
  private static func allNameBytes(_ bytes: UnsafeBufferPointer<UInt8>, from start: Int) -> Bool {
    every(of: bytes, from: start, wordPasses: commonNameBytes, bytePasses: isNameByte)
  }

  /// Whether all eight bytes of `word` are lower-case letters, digits or `-`. For bytes below
  /// 0x80, adding `0x80 - low` to a byte sets its high bit exactly when it is at least `low`,
  /// and adding `0x7F - top` exactly when it is above `top`, with no carry into the next byte.
  @inline(__always)
  private static func commonNameBytes(_ word: UInt64) -> Bool {
    let ones: UInt64 = 0x0101_0101_0101_0101
    let high = ones &* 0x80
    guard word & high == 0 else { return false }
    func within(_ low: UInt64, _ top: UInt64) -> UInt64 {
      (word &+ ones &* (0x80 - low)) & ~(word &+ ones &* (0x7F - top)) & high
    }
    let letters = within(UInt64(UInt8(ascii: "a")), UInt64(UInt8(ascii: "z")))
    let digits = within(UInt64(UInt8(ascii: "0")), UInt64(UInt8(ascii: "9")))
    let dash = within(UInt64(UInt8(ascii: "-")), UInt64(UInt8(ascii: "-")))
    return letters | digits | dash == high
  }

  @inline(__always)
  private static func isNULCROrLF(_ byte: UInt8) -> Bool {
    let belowFourteen: UInt16 = 1 << 0 | 1 << 10 | 1 << 13
    return byte < 14 && belowFourteen >> UInt16(byte) & 1 != 0
  }

  /// Whether `bytes` hold NUL (0), LF (10) or CR (13). A word with no byte below 14 passes at
  /// once: `(w - 0x0E…0E) & ~w & 0x80…80` is zero exactly when no byte of `w` is below 14.
  @inline(__always)
  private static func holdsNULCROrLF(_ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
    let ones: UInt64 = 0x0101_0101_0101_0101
    return !every(
      of: bytes, from: 0, wordPasses: { ($0 &- ones &* 14) & ~$0 & (ones &* 0x80) == 0 },
      bytePasses: { !isNULCROrLF($0) })
  }

  /// Whether every byte of `bytes` from `start` passes `bytePasses`, read eight at a time: a
  /// word that `wordPasses` (a test that may refuse a word whose bytes would all pass, never
  /// the other way) is passed at once, and any other word and the tail are tested byte by
  /// byte.
  @inline(__always)
  private static func every(
    of bytes: UnsafeBufferPointer<UInt8>, from start: Int, wordPasses: (UInt64) -> Bool,
    bytePasses: (UInt8) -> Bool
  ) -> Bool {
    var index = start
    if let base = bytes.baseAddress {
      let raw = UnsafeRawPointer(base)
      while index + 8 <= bytes.count {
        if !wordPasses(raw.loadUnaligned(fromByteOffset: index, as: UInt64.self)) {
          for offset in index..<index + 8 where !bytePasses(bytes[offset]) { return false }
        }
        index += 8
      }
    }
    for offset in index..<bytes.count where !bytePasses(bytes[offset]) { return false }
    return true
  }
}

/// A request's header block, checked, with what routing reads of it found in the same pass (a
/// lookup by name walks the block and compares names case-insensitively).
struct HTTP2Request {
  var headers: HPACKHeaders
  /// There is exactly one, not empty.
  var path: String
  var authority: String?
  var contentType: String?
  /// Whether the caller sent `x-trellis-peer-identity`, which only the sidecar may set.
  var carriesPeerIdentity: Bool
}

extension HPACKHeaders {
  /// The value of the first field named `name` (lower case), in a block that `HTTP2Fields`
  /// checked: its names are lower case too, so they compare exactly, told apart by length
  /// first. (`first(name:)` compares every name case-insensitively, byte by byte.)
  func checkedValue(_ name: String) -> String? {
    let count = name.utf8.count
    for (field, value, _) in self where field.utf8.count == count && field == name {
      return value
    }
    return nil
  }
}
