/// How messages are written as JSON.
public struct JSONEncodingOptions: Sendable {
  /// Also write fields that have no presence (proto3 scalars, repeated, maps) at their
  /// default values, as grpcurl's `-emit-defaults`.
  public var emitDefaults = false
  /// Write the proto field names instead of their lowerCamelCase JSON names.
  public var useProtoNames = false
  /// Write enums as numbers instead of names.
  public var enumsAsIntegers = false

  public init(emitDefaults: Bool = false, useProtoNames: Bool = false) {
    self.emitDefaults = emitDefaults
    self.useProtoNames = useProtoNames
  }
}

/// How JSON is read into messages.
public struct JSONDecodingOptions: Sendable {
  /// Skip members the message has no field for (and enum names it does not know) instead of
  /// failing, as grpcurl's `-allow-unknown-fields`.
  public var ignoreUnknownFields = false

  public init(ignoreUnknownFields: Bool = false) {
    self.ignoreUnknownFields = ignoreUnknownFields
  }
}

/// JSON that does not fit the message it was read into, or a message that cannot be written as
/// JSON; `path` names the field (`line_items[0].quantity`).
public struct JSONMappingError: Error, CustomStringConvertible, Equatable {
  public let path: String
  public let message: String

  public var description: String { path.isEmpty ? message : "\(path): \(message)" }

  init(_ path: String, _ message: String) {
    self.path = path
    self.message = message
  }
}

extension DynamicMessage {
  /// Reads a message from JSON text following the proto3 JSON mapping.
  public init(
    descriptor: MessageDescriptor, jsonString: String, pool: DescriptorPool,
    options: JSONDecodingOptions = .init()
  ) throws {
    try self.init(
      descriptor: descriptor, json: try JSONParser.parse(jsonString), pool: pool, options: options)
  }

  /// Reads a message from a parsed JSON value following the proto3 JSON mapping.
  public init(
    descriptor: MessageDescriptor, json: JSONValue, pool: DescriptorPool,
    options: JSONDecodingOptions = .init()
  ) throws {
    let reader = JSONReader(pool: pool, options: options)
    self = try reader.message(descriptor, from: json, path: "")
  }

  /// The message as JSON text following the proto3 JSON mapping.
  public func jsonString(
    pool: DescriptorPool, options: JSONEncodingOptions = .init(), pretty: Bool = true
  ) throws -> String {
    try jsonValue(pool: pool, options: options).serialized(pretty: pretty)
  }

  /// The message as a JSON value following the proto3 JSON mapping. Fails only for an `Any`
  /// whose type is not in the pool.
  public func jsonValue(
    pool: DescriptorPool, options: JSONEncodingOptions = .init()
  ) throws
    -> JSONValue
  {
    try JSONWriter(pool: pool, options: options).message(self, path: "")
  }
}

// MARK: - Writing

struct JSONWriter {
  let pool: DescriptorPool
  let options: JSONEncodingOptions

  func message(_ message: DynamicMessage, path: String) throws -> JSONValue {
    if let wellKnown = message.descriptor.wellKnownType {
      return try wellKnownJSON(message, type: wellKnown, path: path)
    }
    return .object(try members(of: message, path: path))
  }

  func members(
    of message: DynamicMessage, path: String
  ) throws -> [(
    key: String, value: JSONValue
  )] {
    var members: [(key: String, value: JSONValue)] = []
    for field in message.descriptor.fields {
      let value: FieldValue
      if let set = message[field] {
        value = set
      } else if options.emitDefaults, !field.hasPresence {
        value = FieldValue.defaultValue(for: field)
      } else {
        continue
      }
      let key = options.useProtoNames ? field.name : field.jsonName
      members.append((key, try self.value(value, field: field, path: join(path, field.name))))
    }
    return members
  }

  func value(_ value: FieldValue, field: FieldDescriptor, path: String) throws -> JSONValue {
    switch value {
    case .list(let elements):
      return .array(
        try elements.enumerated().map { try scalar($1, field: field, path: "\(path)[\($0)]") })
    case .map(let entries):
      let valueField = field.messageType!.fields[1]
      return .object(
        try entries.keys.sorted().map { key in
          let name = key.jsonKey
          return (name, try scalar(entries[key]!, field: valueField, path: "\(path)[\(name)]"))
        })
    default:
      return try scalar(value, field: field, path: path)
    }
  }

  func scalar(_ value: FieldValue, field: FieldDescriptor, path: String) throws -> JSONValue {
    switch value {
    case .int32(let v): return .number(String(v))
    case .uint32(let v): return .number(String(v))
    case .int64(let v): return .string(String(v))
    case .uint64(let v): return .string(String(v))
    case .float(let v): return Self.floatingPoint(v.isNaN, v.isInfinite, v < 0, v.description)
    case .double(let v): return Self.floatingPoint(v.isNaN, v.isInfinite, v < 0, v.description)
    case .bool(let v): return .bool(v)
    case .string(let v): return .string(v)
    case .bytes(let v): return .string(Base64.encode(v))
    case .enumValue(let number):
      if field.enumType?.fullName == "google.protobuf.NullValue" { return .null }
      if !options.enumsAsIntegers, let name = field.enumType?.name(of: number) {
        return .string(name)
      }
      return .number(String(number))
    case .message(let message): return try self.message(message, path: path)
    case .list, .map:
      throw JSONMappingError(path, "a repeated value cannot be nested in another")
    }
  }

  private static func floatingPoint(
    _ isNaN: Bool, _ isInfinite: Bool, _ isNegative: Bool, _ text: String
  ) -> JSONValue {
    if isNaN { return .string("NaN") }
    if isInfinite { return .string(isNegative ? "-Infinity" : "Infinity") }
    return .number(text)
  }
}

extension MapKey {
  /// The key as a JSON object member name.
  var jsonKey: String {
    switch self {
    case .int(let v): return String(v)
    case .uint(let v): return String(v)
    case .bool(let v): return v ? "true" : "false"
    case .string(let v): return v
    }
  }
}

func join(_ path: String, _ name: String) -> String {
  path.isEmpty ? name : path + "." + name
}

// MARK: - Reading

struct JSONReader {
  let pool: DescriptorPool
  let options: JSONDecodingOptions

  func message(
    _ descriptor: MessageDescriptor, from json: JSONValue, path: String
  ) throws
    -> DynamicMessage
  {
    if let wellKnown = descriptor.wellKnownType {
      return try wellKnownMessage(descriptor, type: wellKnown, from: json, path: path)
    }
    guard case .object(let members) = json else {
      throw JSONMappingError(
        path, "expected an object for \(descriptor.fullName), got \(json.kindName)")
    }
    var message = DynamicMessage(descriptor: descriptor)
    try merge(members, into: &message, path: path)
    return message
  }

  func merge(
    _ members: [(key: String, value: JSONValue)], into message: inout DynamicMessage,
    path: String
  ) throws {
    let descriptor = message.descriptor
    var seen: Set<Int32> = []
    var oneofsSeen: [Int: String] = [:]
    for (key, json) in members {
      guard let field = descriptor.field(jsonKey: key) else {
        if options.ignoreUnknownFields { continue }
        throw JSONMappingError(path, "\(descriptor.fullName) has no field \"\(key)\"")
      }
      let fieldPath = join(path, field.name)
      guard seen.insert(field.number).inserted else {
        throw JSONMappingError(fieldPath, "field is set twice")
      }
      if case .null = json, !Self.acceptsNull(field) { continue }
      if let oneof = field.oneofIndex {
        if let other = oneofsSeen[oneof] {
          throw JSONMappingError(
            fieldPath,
            "oneof \(descriptor.oneofs[oneof]) already has \(other) set; only one may be set")
        }
        oneofsSeen[oneof] = field.name
      }
      guard let value = try self.value(json, field: field, path: fieldPath) else { continue }
      message[field] = value
    }
  }

  /// Null clears a field, except where null is itself a value (`google.protobuf.Value`,
  /// `NullValue`).
  private static func acceptsNull(_ field: FieldDescriptor) -> Bool {
    !field.isRepeated
      && (field.typeName == WellKnownType.value.rawValue
        || field.typeName == "google.protobuf.NullValue")
  }

  /// The field's value, or `nil` for an unknown enum name that is being ignored.
  func value(_ json: JSONValue, field: FieldDescriptor, path: String) throws -> FieldValue? {
    if field.isMap {
      guard case .object(let members) = json else {
        throw JSONMappingError(path, "expected an object for a map, got \(json.kindName)")
      }
      let entryType = field.messageType!
      var entries: [MapKey: FieldValue] = [:]
      for (key, element) in members {
        let entryPath = "\(path)[\(key)]"
        let mapKey = try self.mapKey(key, field: entryType.fields[0], path: entryPath)
        guard entries[mapKey] == nil else {
          throw JSONMappingError(entryPath, "map key is given twice")
        }
        if case .null = element, !Self.acceptsNull(entryType.fields[1]) {
          throw JSONMappingError(entryPath, "a map value cannot be null")
        }
        guard let value = try scalar(element, field: entryType.fields[1], path: entryPath)
        else { continue }
        entries[mapKey] = value
      }
      return .map(entries)
    }
    if field.isRepeated {
      guard case .array(let elements) = json else {
        throw JSONMappingError(path, "expected an array, got \(json.kindName)")
      }
      var values: [FieldValue] = []
      for (i, element) in elements.enumerated() {
        let elementPath = "\(path)[\(i)]"
        if case .null = element, field.typeName != WellKnownType.value.rawValue {
          throw JSONMappingError(elementPath, "a repeated element cannot be null")
        }
        if let value = try scalar(element, field: field, path: elementPath) {
          values.append(value)
        }
      }
      return .list(values)
    }
    return try scalar(json, field: field, path: path)
  }

  func scalar(_ json: JSONValue, field: FieldDescriptor, path: String) throws -> FieldValue? {
    switch field.kind {
    case .int32, .sint32, .sfixed32:
      return .int32(try integer(json, Int32.self, path: path))
    case .int64, .sint64, .sfixed64:
      return .int64(try integer(json, Int64.self, path: path))
    case .uint32, .fixed32:
      return .uint32(try integer(json, UInt32.self, path: path))
    case .uint64, .fixed64:
      return .uint64(try integer(json, UInt64.self, path: path))
    case .float:
      let value = try floatingPoint(json, path: path)
      guard value.isNaN || value.isInfinite || abs(value) <= Double(Float.greatestFiniteMagnitude)
      else { throw JSONMappingError(path, "\(value) is out of range for float") }
      return .float(Float(value))
    case .double:
      return .double(try floatingPoint(json, path: path))
    case .bool:
      guard case .bool(let value) = json else {
        throw JSONMappingError(path, "expected true or false, got \(json.kindName)")
      }
      return .bool(value)
    case .string:
      guard case .string(let value) = json else {
        throw JSONMappingError(path, "expected a string, got \(json.kindName)")
      }
      return .string(value)
    case .bytes:
      guard case .string(let text) = json else {
        throw JSONMappingError(path, "expected base64 text, got \(json.kindName)")
      }
      guard let bytes = Base64.decode(text) else {
        throw JSONMappingError(path, "\"\(text)\" is not base64")
      }
      return .bytes(bytes)
    case .enumeration:
      let enumType = field.enumType!
      switch json {
      case .null where enumType.fullName == "google.protobuf.NullValue":
        return .enumValue(0)
      case .string(let name):
        if let number = enumType.number(named: name) { return .enumValue(number) }
        if options.ignoreUnknownFields { return nil }
        let known = enumType.values.map(\.name).joined(separator: ", ")
        throw JSONMappingError(
          path, "\(enumType.fullName) has no value \"\(name)\"; it has: \(known)")
      case .number:
        return .enumValue(try integer(json, Int32.self, path: path))
      default:
        throw JSONMappingError(path, "expected an enum name or number, got \(json.kindName)")
      }
    case .message, .group:
      return .message(try message(field.messageType!, from: json, path: path))
    }
  }

  private func mapKey(_ key: String, field: FieldDescriptor, path: String) throws -> MapKey {
    switch field.kind {
    case .string: return .string(key)
    case .bool:
      switch key {
      case "true": return .bool(true)
      case "false": return .bool(false)
      default: throw JSONMappingError(path, "a bool map key must be \"true\" or \"false\"")
      }
    case .int32, .sint32, .sfixed32:
      return .int(Int64(try integer(.string(key), Int32.self, path: path)))
    case .int64, .sint64, .sfixed64:
      return .int(try integer(.string(key), Int64.self, path: path))
    case .uint32, .fixed32:
      return .uint(UInt64(try integer(.string(key), UInt32.self, path: path)))
    default:
      return .uint(try integer(.string(key), UInt64.self, path: path))
    }
  }

  /// An integer from a JSON number or a string holding one; "1e2" and "100.0" are accepted
  /// when they are whole, as the mapping allows.
  func integer<T: FixedWidthInteger>(_ json: JSONValue, _ type: T.Type, path: String) throws -> T {
    let text: String
    switch json {
    case .number(let t): text = t
    case .string(let t): text = t
    default:
      throw JSONMappingError(path, "expected an integer, got \(json.kindName)")
    }
    if let value = T(text) { return value }
    let isPlainInteger = !text.isEmpty && text.allSatisfy { $0.isNumber || $0 == "-" }
    if !isPlainInteger, let double = Double(text), double.isFinite,
      double == double.rounded(), let value = T(exactly: double)
    {
      return value
    }
    if isPlainInteger || Double(text) != nil {
      let name = (T.isSigned ? "int" : "uint") + String(T.bitWidth)
      throw JSONMappingError(path, "\(text) is not a whole number in the range of \(name)")
    }
    throw JSONMappingError(path, "\"\(text)\" is not an integer")
  }

  func floatingPoint(_ json: JSONValue, path: String) throws -> Double {
    switch json {
    case .number(let text):
      guard let value = Double(text), value.isFinite else {
        throw JSONMappingError(path, "\(text) is out of range for double")
      }
      return value
    case .string(let text):
      switch text {
      case "NaN": return .nan
      case "Infinity": return .infinity
      case "-Infinity": return -.infinity
      default:
        guard
          (try? JSONParser.parse(text)).map({ if case .number = $0 { true } else { false } })
            == true, let value = Double(text), value.isFinite
        else { throw JSONMappingError(path, "\"\(text)\" is not a number") }
        return value
      }
    default:
      throw JSONMappingError(path, "expected a number, got \(json.kindName)")
    }
  }
}
