// The well-known types whose JSON form is not an object of their fields, as the proto3 JSON
// mapping defines them: Any, Timestamp, Duration, FieldMask, Struct/Value/ListValue, wrappers.
// Empty needs nothing special: it is an object with no members.

/// Timestamps are limited to years 0001 through 9999, as the mapping requires.
private let minTimestampSeconds: Int64 = -62_135_596_800
private let maxTimestampSeconds: Int64 = 253_402_300_799
private let maxDurationSeconds: Int64 = 315_576_000_000

extension JSONWriter {
  func wellKnownJSON(
    _ message: DynamicMessage, type: WellKnownType, path: String
  ) throws
    -> JSONValue
  {
    let fields = message.descriptor.fields
    func field(_ number: Int32) -> FieldDescriptor { message.descriptor.field(number: number)! }
    switch type {
    case .timestamp:
      let seconds = message.int64(field(1))
      let nanos = message.int32(field(2))
      guard (minTimestampSeconds...maxTimestampSeconds).contains(seconds),
        (0...999_999_999).contains(nanos)
      else { throw JSONMappingError(path, "timestamp \(seconds)s \(nanos)ns is out of range") }
      return .string(formatTimestamp(seconds: seconds, nanos: nanos))
    case .duration:
      let seconds = message.int64(field(1))
      let nanos = message.int32(field(2))
      guard abs(seconds) <= maxDurationSeconds, abs(nanos) <= 999_999_999,
        seconds == 0 || nanos == 0 || (seconds < 0) == (nanos < 0)
      else { throw JSONMappingError(path, "duration \(seconds)s \(nanos)ns is out of range") }
      let negative = seconds < 0 || nanos < 0
      return .string(
        (negative ? "-" : "") + String(abs(seconds)) + fraction(abs(nanos)) + "s")
    case .fieldMask:
      var paths: [String] = []
      if case .list(let values)? = message[field(1)] {
        for case .string(let maskPath) in values {
          guard let camel = fieldMaskCamelCase(maskPath) else {
            throw JSONMappingError(path, "field mask path \"\(maskPath)\" has no JSON form")
          }
          paths.append(camel)
        }
      }
      return .string(paths.joined(separator: ","))
    case .structValue:
      let mapField = field(1)
      return try value(message.valueOrDefault(mapField), field: mapField, path: path)
    case .listValue:
      let listField = field(1)
      return try value(message.valueOrDefault(listField), field: listField, path: path)
    case .value:
      // An unset Value is written as null, as protobuf's own runtimes do.
      guard let (kind, set) = message.setFields.first else { return .null }
      if case .double(let number) = set, !number.isFinite {
        throw JSONMappingError(path, "google.protobuf.Value cannot hold \(number) in JSON")
      }
      return try scalar(set, field: kind, path: path)
    case .any:
      return try anyJSON(message, path: path)
    case .empty:
      return .object([])
    default:  // wrappers
      precondition(type.isWrapper)
      let valueField = fields[0]
      return try scalar(message.valueOrDefault(valueField), field: valueField, path: path)
    }
  }

  private func anyJSON(_ any: DynamicMessage, path: String) throws -> JSONValue {
    let typeURL = any.string(any.descriptor.field(number: 1)!)
    if typeURL.isEmpty { return .object([]) }
    guard let inner = anyType(typeURL, pool: pool) else {
      throw JSONMappingError(
        path, "Any holds \(typeURL), which is not among the known descriptors")
    }
    let bytes: [UInt8]
    if case .bytes(let b)? = any[any.descriptor.field(number: 2)!] { bytes = b } else { bytes = [] }
    let message: DynamicMessage
    do {
      message = try DynamicMessage(descriptor: inner, serializedBytes: bytes)
    } catch {
      throw JSONMappingError(path, "Any holds a \(inner.fullName) that does not decode: \(error)")
    }
    if inner.wellKnownType != nil {
      return .object([
        ("@type", .string(typeURL)), ("value", try self.message(message, path: path)),
      ])
    }
    return .object([("@type", .string(typeURL))] + (try members(of: message, path: path)))
  }
}

extension JSONReader {
  func wellKnownMessage(
    _ descriptor: MessageDescriptor, type: WellKnownType, from json: JSONValue, path: String
  ) throws -> DynamicMessage {
    var message = DynamicMessage(descriptor: descriptor)
    func field(_ number: Int32) -> FieldDescriptor { descriptor.field(number: number)! }
    func string() throws -> String {
      guard case .string(let text) = json else {
        throw JSONMappingError(
          path, "expected a string for \(descriptor.fullName), got \(json.kindName)")
      }
      return text
    }
    switch type {
    case .timestamp:
      let text = try string()
      guard let (seconds, nanos) = parseTimestamp(text) else {
        throw JSONMappingError(
          path, "\"\(text)\" is not an RFC 3339 timestamp such as 2026-01-31T12:00:00Z")
      }
      message[field(1)] = .int64(seconds)
      message[field(2)] = .int32(nanos)
    case .duration:
      let text = try string()
      guard let (seconds, nanos) = parseDuration(text) else {
        throw JSONMappingError(path, "\"\(text)\" is not a duration such as \"1.5s\"")
      }
      message[field(1)] = .int64(seconds)
      message[field(2)] = .int32(nanos)
    case .fieldMask:
      let text = try string()
      var paths: [FieldValue] = []
      for part in text.split(separator: ",", omittingEmptySubsequences: true) {
        guard let snake = fieldMaskSnakeCase(String(part)) else {
          throw JSONMappingError(path, "field mask path \"\(part)\" is not lowerCamelCase")
        }
        paths.append(.string(snake))
      }
      message[field(1)] = .list(paths)
    case .structValue:
      guard case .object = json else {
        throw JSONMappingError(path, "expected an object for google.protobuf.Struct")
      }
      message[field(1)] = try value(json, field: field(1), path: path)
    case .listValue:
      guard case .array = json else {
        throw JSONMappingError(path, "expected an array for google.protobuf.ListValue")
      }
      message[field(1)] = try value(json, field: field(1), path: path)
    case .value:
      switch json {
      case .null: message[field(1)] = .enumValue(0)
      case .number: message[field(2)] = .double(try floatingPoint(json, path: path))
      case .string(let text): message[field(3)] = .string(text)
      case .bool(let flag): message[field(4)] = .bool(flag)
      case .object: message[field(5)] = try scalar(json, field: field(5), path: path)
      case .array: message[field(6)] = try scalar(json, field: field(6), path: path)
      }
    case .any:
      return try anyMessage(descriptor, from: json, path: path)
    case .empty:
      guard case .object(let members) = json else {
        throw JSONMappingError(path, "expected {} for google.protobuf.Empty")
      }
      try merge(members, into: &message, path: path)
    default:  // wrappers
      if let value = try scalar(json, field: field(1), path: path) { message[field(1)] = value }
    }
    return message
  }

  private func anyMessage(
    _ descriptor: MessageDescriptor, from json: JSONValue, path: String
  )
    throws -> DynamicMessage
  {
    guard case .object(var members) = json else {
      throw JSONMappingError(path, "expected an object with \"@type\" for google.protobuf.Any")
    }
    var any = DynamicMessage(descriptor: descriptor)
    if members.isEmpty { return any }
    guard let typeIndex = members.firstIndex(where: { $0.key == "@type" }),
      case .string(let typeURL) = members[typeIndex].value
    else { throw JSONMappingError(path, "google.protobuf.Any needs a \"@type\" string") }
    members.remove(at: typeIndex)
    guard let inner = anyType(typeURL, pool: pool) else {
      throw JSONMappingError(path, "Any names \(typeURL), which is not among the known descriptors")
    }
    let message: DynamicMessage
    if inner.wellKnownType != nil {
      guard members.count == 1, members[0].key == "value" else {
        throw JSONMappingError(path, "an Any holding \(inner.fullName) needs exactly a \"value\"")
      }
      message = try self.message(inner, from: members[0].value, path: path)
    } else {
      var built = DynamicMessage(descriptor: inner)
      try merge(members, into: &built, path: path)
      message = built
    }
    any[descriptor.field(number: 1)!] = .string(typeURL)
    any[descriptor.field(number: 2)!] = .bytes(message.serializedBytes())
    return any
  }
}

/// The message type an `Any` type URL names: everything after its last '/'.
private func anyType(_ typeURL: String, pool: DescriptorPool) -> MessageDescriptor? {
  guard let slash = typeURL.lastIndex(of: "/") else { return nil }
  return pool.message(named: String(typeURL[typeURL.index(after: slash)...]))
}

extension DynamicMessage {
  fileprivate func int64(_ field: FieldDescriptor) -> Int64 {
    if case .int64(let v)? = self[field] { return v }
    return 0
  }

  fileprivate func int32(_ field: FieldDescriptor) -> Int32 {
    if case .int32(let v)? = self[field] { return v }
    return 0
  }

  fileprivate func string(_ field: FieldDescriptor) -> String {
    if case .string(let v)? = self[field] { return v }
    return ""
  }
}

// MARK: - Timestamps and durations

/// ".5" → ".500"; nanoseconds written with 0, 3, 6 or 9 digits, as protobuf's runtimes do.
private func fraction(_ nanos: Int32) -> String {
  if nanos == 0 { return "" }
  var digits = String(nanos)
  digits = String(repeating: "0", count: 9 - digits.count) + digits
  if nanos % 1_000_000 == 0 { return "." + digits.prefix(3) }
  if nanos % 1_000 == 0 { return "." + digits.prefix(6) }
  return "." + digits
}

/// An RFC 3339 UTC timestamp with 0, 3, 6 or 9 fractional digits, as the JSON mapping writes them.
public func formatTimestamp(seconds: Int64, nanos: Int32) -> String {
  let days = floorDiv(seconds, 86_400)
  let secondOfDay = seconds - days * 86_400
  let (year, month, day) = civilFromDays(days)
  func pad(_ value: Int64, _ width: Int) -> String {
    let text = String(value)
    return String(repeating: "0", count: max(0, width - text.count)) + text
  }
  return pad(year, 4) + "-" + pad(month, 2) + "-" + pad(day, 2) + "T"
    + pad(secondOfDay / 3600, 2) + ":" + pad(secondOfDay / 60 % 60, 2) + ":"
    + pad(secondOfDay % 60, 2) + fraction(nanos) + "Z"
}

/// Parses `YYYY-MM-DDThh:mm:ss[.f{1,9}](Z|±hh:mm)`.
func parseTimestamp(_ text: String) -> (Int64, Int32)? {
  let chars = Array(text.utf8)
  var i = 0
  func number(_ width: Int) -> Int64? {
    guard chars.count - i >= width else { return nil }
    var value: Int64 = 0
    for _ in 0..<width {
      let c = chars[i]
      guard c >= 48 && c <= 57 else { return nil }
      value = value * 10 + Int64(c - 48)
      i += 1
    }
    return value
  }
  func expect(_ c: Character) -> Bool {
    guard i < chars.count, chars[i] == c.asciiValue! else { return false }
    i += 1
    return true
  }
  guard let year = number(4), expect("-"), let month = number(2), expect("-"),
    let day = number(2), expect("T"), let hour = number(2), expect(":"),
    let minute = number(2), expect(":"), let second = number(2)
  else { return nil }
  guard year >= 1, (1...12).contains(month), day >= 1, day <= daysIn(month, year: year),
    hour < 24, minute < 60, second < 60
  else { return nil }
  var nanos: Int64 = 0
  if expect(".") {
    var digits = 0
    while i < chars.count, chars[i] >= 48, chars[i] <= 57 {
      guard digits < 9 else { return nil }
      nanos = nanos * 10 + Int64(chars[i] - 48)
      digits += 1
      i += 1
    }
    guard digits > 0 else { return nil }
    for _ in digits..<9 { nanos *= 10 }
  }
  var offset: Int64 = 0
  if expect("Z") {
  } else if i < chars.count, chars[i] == UInt8(ascii: "+") || chars[i] == UInt8(ascii: "-") {
    let sign: Int64 = chars[i] == UInt8(ascii: "-") ? -1 : 1
    i += 1
    guard let offsetHours = number(2), expect(":"), let offsetMinutes = number(2),
      offsetHours < 24, offsetMinutes < 60
    else { return nil }
    offset = sign * (offsetHours * 3600 + offsetMinutes * 60)
  } else {
    return nil
  }
  guard i == chars.count else { return nil }
  let seconds =
    daysFromCivil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset
  guard (minTimestampSeconds...maxTimestampSeconds).contains(seconds) else { return nil }
  return (seconds, Int32(nanos))
}

/// Parses `[-]seconds[.f{1,9}]s`.
func parseDuration(_ text: String) -> (Int64, Int32)? {
  guard text.hasSuffix("s") else { return nil }
  var body = Substring(text.dropLast())
  let negative = body.hasPrefix("-")
  if negative { body = body.dropFirst() }
  let parts = body.split(separator: ".", omittingEmptySubsequences: false)
  guard parts.count <= 2, let whole = parts.first, !whole.isEmpty,
    whole.allSatisfy({ $0.isASCII && $0.isNumber }), let seconds = Int64(whole)
  else { return nil }
  var nanos: Int64 = 0
  if parts.count == 2 {
    let digits = parts[1]
    guard !digits.isEmpty, digits.count <= 9, digits.allSatisfy({ $0.isASCII && $0.isNumber }),
      let value = Int64(digits)
    else { return nil }
    nanos = value
    for _ in digits.count..<9 { nanos *= 10 }
  }
  guard seconds <= maxDurationSeconds else { return nil }
  return negative ? (-seconds, Int32(-nanos)) : (seconds, Int32(nanos))
}

private func floorDiv(_ a: Int64, _ b: Int64) -> Int64 {
  a >= 0 ? a / b : -((-a + b - 1) / b)
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar.
private func civilFromDays(_ days: Int64) -> (Int64, Int64, Int64) {
  let z = days + 719_468
  let era = floorDiv(z, 146_097)
  let dayOfEra = z - era * 146_097
  let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36524 - dayOfEra / 146_096) / 365
  let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
  let mp = (5 * dayOfYear + 2) / 153
  let day = dayOfYear - (153 * mp + 2) / 5 + 1
  let month = mp < 10 ? mp + 3 : mp - 9
  return (yearOfEra + era * 400 + (month <= 2 ? 1 : 0), month, day)
}

/// (year, month, day) → days since 1970-01-01.
private func daysFromCivil(_ year: Int64, _ month: Int64, _ day: Int64) -> Int64 {
  let y = month <= 2 ? year - 1 : year
  let era = floorDiv(y, 400)
  let yearOfEra = y - era * 400
  let dayOfYear = (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1
  let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
  return era * 146_097 + dayOfEra - 719_468
}

private func daysIn(_ month: Int64, year: Int64) -> Int64 {
  switch month {
  case 2: return (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 ? 29 : 28
  case 4, 6, 9, 11: return 30
  default: return 31
  }
}

// MARK: - Field masks

/// `foo_bar.baz` → `fooBar.baz`; nil when the path cannot round-trip (upper case, or `_` not
/// followed by a lower-case letter).
func fieldMaskCamelCase(_ path: String) -> String? {
  var result = ""
  var afterUnderscore = false
  for character in path {
    if character.isUppercase { return nil }
    if afterUnderscore {
      guard character.isLowercase else { return nil }
      result += character.uppercased()
      afterUnderscore = false
    } else if character == "_" {
      afterUnderscore = true
    } else {
      result.append(character)
    }
  }
  return afterUnderscore ? nil : result
}

/// `fooBar.baz` → `foo_bar.baz`; nil when the path holds an underscore.
func fieldMaskSnakeCase(_ path: String) -> String? {
  var result = ""
  for character in path {
    if character == "_" { return nil }
    if character.isUppercase {
      result += "_" + character.lowercased()
    } else {
      result.append(character)
    }
  }
  return result
}

// MARK: - Base64

/// Standard base64 out; standard or URL-safe, padded or not, in.
enum Base64 {
  private static let alphabet = Array(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

  static func encode(_ bytes: [UInt8]) -> String {
    var out: [UInt8] = []
    out.reserveCapacity((bytes.count + 2) / 3 * 4)
    var i = 0
    while i + 3 <= bytes.count {
      let n = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2])
      out += [
        alphabet[Int(n >> 18 & 63)], alphabet[Int(n >> 12 & 63)], alphabet[Int(n >> 6 & 63)],
        alphabet[Int(n & 63)],
      ]
      i += 3
    }
    let rest = bytes.count - i
    if rest == 1 {
      let n = UInt32(bytes[i]) << 16
      out += [alphabet[Int(n >> 18 & 63)], alphabet[Int(n >> 12 & 63)], 61, 61]
    } else if rest == 2 {
      let n = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8
      out += [
        alphabet[Int(n >> 18 & 63)], alphabet[Int(n >> 12 & 63)], alphabet[Int(n >> 6 & 63)], 61,
      ]
    }
    return String(decoding: out, as: UTF8.self)
  }

  static func decode(_ text: String) -> [UInt8]? {
    var values: [UInt8] = []
    var padding = 0
    for byte in text.utf8 {
      let value: UInt8
      switch byte {
      case UInt8(ascii: "A")...UInt8(ascii: "Z"): value = byte - UInt8(ascii: "A")
      case UInt8(ascii: "a")...UInt8(ascii: "z"): value = byte - UInt8(ascii: "a") + 26
      case UInt8(ascii: "0")...UInt8(ascii: "9"): value = byte - UInt8(ascii: "0") + 52
      case UInt8(ascii: "+"), UInt8(ascii: "-"): value = 62
      case UInt8(ascii: "/"), UInt8(ascii: "_"): value = 63
      case UInt8(ascii: "="):
        padding += 1
        continue
      default: return nil
      }
      guard padding == 0 else { return nil }  // data after padding
      values.append(value)
    }
    if values.count % 4 == 1 || padding > 2 { return nil }
    if padding > 0, (values.count + padding) % 4 != 0 { return nil }
    var out: [UInt8] = []
    out.reserveCapacity(values.count * 3 / 4)
    var i = 0
    while i < values.count {
      let chunk = values[i..<min(i + 4, values.count)]
      var n: UInt32 = 0
      for (j, v) in chunk.enumerated() { n |= UInt32(v) << (18 - 6 * UInt32(j)) }
      out.append(UInt8(n >> 16 & 0xff))
      if chunk.count > 2 { out.append(UInt8(n >> 8 & 0xff)) }
      if chunk.count > 3 { out.append(UInt8(n & 0xff)) }
      i += 4
    }
    return out
  }
}
