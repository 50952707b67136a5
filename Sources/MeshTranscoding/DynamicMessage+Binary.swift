/// Bytes that are not a valid encoding of the expected message.
public struct WireFormatError: Error, CustomStringConvertible, Equatable {
  public let description: String
  init(_ description: String) { self.description = description }
}

extension DynamicMessage {
  /// Decodes the protobuf wire format. Unknown fields are kept; a field sent with another wire
  /// type than its declaration's is kept as unknown, as protobuf's own runtimes do.
  public init(descriptor: MessageDescriptor, serializedBytes bytes: [UInt8]) throws {
    self.init(descriptor: descriptor)
    var reader = WireReader(bytes: bytes[...])
    try decode(from: &reader, endGroup: nil, depth: 0)
  }

  /// Encodes the protobuf wire format: known fields in number order, then unknown ones.
  public func serializedBytes() -> [UInt8] {
    var writer = WireWriter()
    encode(into: &writer)
    return writer.bytes
  }

  // MARK: - Decoding

  /// Messages nest at most this deep, as in protobuf's own runtimes; deeper input is refused
  /// rather than allowed to exhaust the stack.
  static let maxDepth = 100

  private mutating func decode(from reader: inout WireReader, endGroup: Int32?, depth: Int) throws {
    guard depth < Self.maxDepth else {
      throw WireFormatError("messages nested more than \(Self.maxDepth) deep")
    }
    while !reader.isAtEnd {
      let tagStart = reader.offset
      let tag = try reader.readVarint()
      let number = Int32(truncatingIfNeeded: tag >> 3)
      guard let wireType = WireType(rawValue: UInt8(tag & 7)), number > 0 else {
        throw WireFormatError("invalid tag \(tag) in \(descriptor.fullName)")
      }
      if wireType == .endGroup {
        guard number == endGroup else {
          throw WireFormatError("unexpected end of group \(number) in \(descriptor.fullName)")
        }
        return
      }
      if let field = descriptor.field(number: number),
        try decodeField(field, wireType: wireType, from: &reader, depth: depth)
      {
        continue
      }
      try reader.skip(wireType: wireType, number: number)
      unknownFields.append(contentsOf: reader.bytes[tagStart..<reader.offset])
    }
    if let endGroup {
      throw WireFormatError("group \(endGroup) of \(descriptor.fullName) is not closed")
    }
  }

  /// Reads one occurrence of a known field. Returns false if the wire type does not fit the
  /// field, leaving the reader where it was.
  private mutating func decodeField(
    _ field: FieldDescriptor, wireType: WireType, from reader: inout WireReader, depth: Int
  ) throws -> Bool {
    if field.isMap {
      guard wireType == .lengthDelimited else { return false }
      let entryType = field.messageType!
      var entry = DynamicMessage(descriptor: entryType)
      var sub = WireReader(bytes: try reader.readLengthDelimited())
      try entry.decode(from: &sub, endGroup: nil, depth: depth + 1)
      let keyField = entryType.fields[0]
      let valueField = entryType.fields[1]
      let key = try MapKey(entry.valueOrDefault(keyField))
      var entries: [MapKey: FieldValue] = [:]
      if case .map(let existing)? = self[field] { entries = existing }
      entries[key] = entry.valueOrDefault(valueField)
      self[field] = .map(entries)
      return true
    }
    if field.isRepeated {
      var values: [FieldValue] = []
      if case .list(let existing)? = self[field] { values = existing }
      if field.kind.isPackable, wireType == .lengthDelimited {
        var sub = WireReader(bytes: try reader.readLengthDelimited())
        let elementWireType = field.kind.wireType
        while !sub.isAtEnd {
          values.append(try Self.readScalar(field, wireType: elementWireType, from: &sub))
        }
      } else {
        guard wireType == field.kind.wireType else { return false }
        values.append(try readValue(field, wireType: wireType, from: &reader, depth: depth))
      }
      self[field] = .list(values)
      return true
    }
    guard wireType == field.kind.wireType else { return false }
    if field.kind == .message || field.kind == .group {
      // A message field seen twice is merged, as protobuf specifies.
      var existing = self[field]?.messageValue ?? DynamicMessage(descriptor: field.messageType!)
      if field.kind == .group {
        try existing.decode(from: &reader, endGroup: field.number, depth: depth + 1)
      } else {
        var sub = WireReader(bytes: try reader.readLengthDelimited())
        try existing.decode(from: &sub, endGroup: nil, depth: depth + 1)
      }
      self[field] = .message(existing)
      return true
    }
    self[field] = try Self.readScalar(field, wireType: wireType, from: &reader)
    return true
  }

  private func readValue(
    _ field: FieldDescriptor, wireType: WireType, from reader: inout WireReader, depth: Int
  ) throws -> FieldValue {
    switch field.kind {
    case .message:
      var message = DynamicMessage(descriptor: field.messageType!)
      var sub = WireReader(bytes: try reader.readLengthDelimited())
      try message.decode(from: &sub, endGroup: nil, depth: depth + 1)
      return .message(message)
    case .group:
      var message = DynamicMessage(descriptor: field.messageType!)
      try message.decode(from: &reader, endGroup: field.number, depth: depth + 1)
      return .message(message)
    default:
      return try Self.readScalar(field, wireType: wireType, from: &reader)
    }
  }

  private static func readScalar(
    _ field: FieldDescriptor, wireType: WireType, from reader: inout WireReader
  ) throws -> FieldValue {
    switch field.kind {
    case .int32: return .int32(Int32(truncatingIfNeeded: try reader.readVarint()))
    case .int64: return .int64(Int64(bitPattern: try reader.readVarint()))
    case .uint32: return .uint32(UInt32(truncatingIfNeeded: try reader.readVarint()))
    case .uint64: return .uint64(try reader.readVarint())
    case .sint32:
      let raw = UInt32(truncatingIfNeeded: try reader.readVarint())
      return .int32(Int32(bitPattern: (raw >> 1) ^ (0 &- (raw & 1))))
    case .sint64:
      let raw = try reader.readVarint()
      return .int64(Int64(bitPattern: (raw >> 1) ^ (0 &- (raw & 1))))
    case .bool: return .bool(try reader.readVarint() != 0)
    case .enumeration: return .enumValue(Int32(truncatingIfNeeded: try reader.readVarint()))
    case .fixed32: return .uint32(try reader.readFixed32())
    case .sfixed32: return .int32(Int32(bitPattern: try reader.readFixed32()))
    case .float: return .float(Float(bitPattern: try reader.readFixed32()))
    case .fixed64: return .uint64(try reader.readFixed64())
    case .sfixed64: return .int64(Int64(bitPattern: try reader.readFixed64()))
    case .double: return .double(Double(bitPattern: try reader.readFixed64()))
    case .string:
      let bytes = try reader.readLengthDelimited()
      guard let string = String(validating: bytes, as: UTF8.self) else {
        throw WireFormatError("field \(field.name) is not valid UTF-8")
      }
      return .string(string)
    case .bytes: return .bytes(Array(try reader.readLengthDelimited()))
    case .message, .group:
      throw WireFormatError("field \(field.name) cannot be packed")
    }
  }

  // MARK: - Encoding

  func encode(into writer: inout WireWriter) {
    for (field, value) in setFields {
      switch value {
      case .map(let entries):
        let entryType = field.messageType!
        for key in entries.keys.sorted() {
          var entry = DynamicMessage(descriptor: entryType)
          entry[entryType.fields[0]] = key.fieldValue(for: entryType.fields[0])
          entry[entryType.fields[1]] = entries[key]!
          writer.writeTag(field.number, .lengthDelimited)
          writer.writeLengthDelimited(entry.serializedBytes())
        }
      case .list(let values):
        if field.isPacked {
          var packed = WireWriter()
          for element in values { packed.writeScalar(element, kind: field.kind) }
          writer.writeTag(field.number, .lengthDelimited)
          writer.writeLengthDelimited(packed.bytes)
        } else {
          for element in values { writer.writeValue(element, field: field) }
        }
      default:
        writer.writeValue(value, field: field)
      }
    }
    writer.bytes.append(contentsOf: unknownFields)
  }
}

extension MapKey {
  init(_ value: FieldValue) throws {
    switch value {
    case .int32(let v): self = .int(Int64(v))
    case .int64(let v): self = .int(v)
    case .uint32(let v): self = .uint(UInt64(v))
    case .uint64(let v): self = .uint(v)
    case .bool(let v): self = .bool(v)
    case .string(let v): self = .string(v)
    default: throw WireFormatError("a map key must be an integer, bool or string")
    }
  }

  /// The key as the value of the entry's key field.
  func fieldValue(for field: FieldDescriptor) -> FieldValue {
    switch (self, field.kind) {
    case (.int(let v), .int32), (.int(let v), .sint32), (.int(let v), .sfixed32):
      return .int32(Int32(truncatingIfNeeded: v))
    case (.int(let v), _): return .int64(v)
    case (.uint(let v), .uint32), (.uint(let v), .fixed32):
      return .uint32(UInt32(truncatingIfNeeded: v))
    case (.uint(let v), _): return .uint64(v)
    case (.bool(let v), _): return .bool(v)
    case (.string(let v), _): return .string(v)
    }
  }
}

// MARK: - Wire primitives

enum WireType: UInt8 {
  case varint = 0
  case fixed64 = 1
  case lengthDelimited = 2
  case startGroup = 3
  case endGroup = 4
  case fixed32 = 5
}

extension FieldKind {
  var wireType: WireType {
    switch self {
    case .int32, .int64, .uint32, .uint64, .sint32, .sint64, .bool, .enumeration: return .varint
    case .fixed64, .sfixed64, .double: return .fixed64
    case .fixed32, .sfixed32, .float: return .fixed32
    case .string, .bytes, .message: return .lengthDelimited
    case .group: return .startGroup
    }
  }
}

struct WireReader {
  let bytes: ArraySlice<UInt8>
  private(set) var offset: Int

  init(bytes: ArraySlice<UInt8>) {
    self.bytes = bytes
    self.offset = bytes.startIndex
  }

  var isAtEnd: Bool { offset >= bytes.endIndex }

  mutating func readVarint() throws -> UInt64 {
    var result: UInt64 = 0
    var shift: UInt64 = 0
    while true {
      guard offset < bytes.endIndex else { throw WireFormatError("truncated varint") }
      let byte = bytes[offset]
      offset += 1
      if shift == 63, byte > 1 { throw WireFormatError("varint longer than 64 bits") }
      result |= UInt64(byte & 0x7f) << shift
      if byte & 0x80 == 0 { return result }
      shift += 7
      if shift > 63 { throw WireFormatError("varint longer than 10 bytes") }
    }
  }

  mutating func readFixed32() throws -> UInt32 {
    guard bytes.endIndex - offset >= 4 else { throw WireFormatError("truncated fixed32") }
    var value: UInt32 = 0
    for i in 0..<4 { value |= UInt32(bytes[offset + i]) << (8 * UInt32(i)) }
    offset += 4
    return value
  }

  mutating func readFixed64() throws -> UInt64 {
    guard bytes.endIndex - offset >= 8 else { throw WireFormatError("truncated fixed64") }
    var value: UInt64 = 0
    for i in 0..<8 { value |= UInt64(bytes[offset + i]) << (8 * UInt64(i)) }
    offset += 8
    return value
  }

  mutating func readLengthDelimited() throws -> ArraySlice<UInt8> {
    let length = try readVarint()
    guard length <= UInt64(bytes.endIndex - offset) else {
      throw WireFormatError("length \(length) runs past the end of the message")
    }
    let slice = bytes[offset..<offset + Int(length)]
    offset += Int(length)
    return slice
  }

  mutating func skip(wireType: WireType, number: Int32, depth: Int = 0) throws {
    switch wireType {
    case .varint: _ = try readVarint()
    case .fixed64: _ = try readFixed64()
    case .fixed32: _ = try readFixed32()
    case .lengthDelimited: _ = try readLengthDelimited()
    case .startGroup:
      while true {
        guard !isAtEnd else { throw WireFormatError("group \(number) is not closed") }
        let tag = try readVarint()
        guard let inner = WireType(rawValue: UInt8(tag & 7)) else {
          throw WireFormatError("invalid wire type in group \(number)")
        }
        if inner == .endGroup {
          guard Int32(truncatingIfNeeded: tag >> 3) == number else {
            throw WireFormatError("mismatched end of group \(number)")
          }
          return
        }
        guard depth < DynamicMessage.maxDepth else {
          throw WireFormatError("groups nested more than \(DynamicMessage.maxDepth) deep")
        }
        try skip(wireType: inner, number: Int32(truncatingIfNeeded: tag >> 3), depth: depth + 1)
      }
    case .endGroup: throw WireFormatError("unexpected end of group \(number)")
    }
  }
}

struct WireWriter {
  var bytes: [UInt8] = []

  mutating func writeVarint(_ value: UInt64) {
    var value = value
    while value >= 0x80 {
      bytes.append(UInt8(truncatingIfNeeded: value) | 0x80)
      value >>= 7
    }
    bytes.append(UInt8(value))
  }

  mutating func writeTag(_ number: Int32, _ wireType: WireType) {
    writeVarint(UInt64(UInt32(number)) << 3 | UInt64(wireType.rawValue))
  }

  mutating func writeFixed32(_ value: UInt32) {
    for i in 0..<4 { bytes.append(UInt8(truncatingIfNeeded: value >> (8 * UInt32(i)))) }
  }

  mutating func writeFixed64(_ value: UInt64) {
    for i in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: value >> (8 * UInt64(i)))) }
  }

  mutating func writeLengthDelimited<C: Collection<UInt8>>(_ payload: C) {
    writeVarint(UInt64(payload.count))
    bytes.append(contentsOf: payload)
  }

  /// Writes one value with its tag.
  mutating func writeValue(_ value: FieldValue, field: FieldDescriptor) {
    switch (field.kind, value) {
    case (.message, .message(let message)):
      writeTag(field.number, .lengthDelimited)
      writeLengthDelimited(message.serializedBytes())
    case (.group, .message(let message)):
      writeTag(field.number, .startGroup)
      message.encode(into: &self)
      writeTag(field.number, .endGroup)
    default:
      writeTag(field.number, field.kind.wireType)
      writeScalar(value, kind: field.kind)
    }
  }

  /// Writes a scalar's payload, without a tag.
  mutating func writeScalar(_ value: FieldValue, kind: FieldKind) {
    switch (kind, value) {
    case (.sint32, .int32(let v)):
      writeVarint(UInt64(UInt32(bitPattern: (v << 1) ^ (v >> 31))))
    case (.sint64, .int64(let v)):
      writeVarint(UInt64(bitPattern: (v << 1) ^ (v >> 63)))
    case (.sfixed32, .int32(let v)): writeFixed32(UInt32(bitPattern: v))
    case (.sfixed64, .int64(let v)): writeFixed64(UInt64(bitPattern: v))
    // int32 and enums are sign-extended to 64 bits, as protobuf specifies.
    case (_, .int32(let v)): writeVarint(UInt64(bitPattern: Int64(v)))
    case (_, .enumValue(let v)): writeVarint(UInt64(bitPattern: Int64(v)))
    case (_, .int64(let v)): writeVarint(UInt64(bitPattern: v))
    case (.fixed32, .uint32(let v)): writeFixed32(v)
    case (_, .uint32(let v)): writeVarint(UInt64(v))
    case (.fixed64, .uint64(let v)): writeFixed64(v)
    case (_, .uint64(let v)): writeVarint(v)
    case (_, .bool(let v)): writeVarint(v ? 1 : 0)
    case (_, .float(let v)): writeFixed32(v.bitPattern)
    case (_, .double(let v)): writeFixed64(v.bitPattern)
    case (_, .string(let v)): writeLengthDelimited(Array(v.utf8))
    case (_, .bytes(let v)): writeLengthDelimited(v)
    case (_, .message(let m)): writeLengthDelimited(m.serializedBytes())
    case (_, .list), (_, .map): break  // never a scalar; handled by the caller
    }
  }
}
