import SwiftProtobuf

/// The protobuf scalar and composite kinds a field can have, as `FieldDescriptorProto.Type`.
public enum FieldKind: Sendable, Equatable {
  case double, float, int64, uint64, int32, fixed64, fixed32, bool, string, group, message
  case bytes, uint32, enumeration, sfixed32, sfixed64, sint32, sint64

  /// Whether values of this kind may be packed in a repeated field.
  var isPackable: Bool {
    switch self {
    case .string, .bytes, .message, .group: return false
    default: return true
    }
  }
}

/// One field of a message, resolved against its pool.
public final class FieldDescriptor: @unchecked Sendable {
  // Immutable once the pool that made it has linked it; the pool never hands out an unlinked
  // descriptor, which is why the class is `@unchecked Sendable`.
  public let name: String
  public let number: Int32
  /// The field's JSON name: the descriptor's `json_name`, or derived from `name` as protoc does
  /// when a descriptor (from another implementation) lacks it.
  public let jsonName: String
  public let kind: FieldKind
  public let isRepeated: Bool
  public let isRequired: Bool
  /// Whether presence is tracked (message fields, oneof members, proto3 `optional`, proto2).
  public let hasPresence: Bool
  /// Whether a repeated scalar is written packed.
  public let isPacked: Bool
  /// The index into the containing message's `oneofs`, for members of a real oneof.
  public let oneofIndex: Int?
  /// The fully qualified type name for message, group and enum fields, without a leading dot.
  public let typeName: String
  /// Set for message and group fields once linked.
  public internal(set) var messageType: MessageDescriptor?
  /// Set for enum fields once linked.
  public internal(set) var enumType: EnumDescriptor?

  init(
    name: String, number: Int32, jsonName: String, kind: FieldKind, isRepeated: Bool,
    isRequired: Bool, hasPresence: Bool, isPacked: Bool, oneofIndex: Int?, typeName: String
  ) {
    self.name = name
    self.number = number
    self.jsonName = jsonName
    self.kind = kind
    self.isRepeated = isRepeated
    self.isRequired = isRequired
    self.hasPresence = hasPresence
    self.isPacked = isPacked
    self.oneofIndex = oneofIndex
    self.typeName = typeName
  }

  /// Whether this is a `map<K, V>` field: repeated, of a synthesized map-entry message.
  public var isMap: Bool { isRepeated && (messageType?.isMapEntry ?? false) }
}

/// A message type, resolved against its pool.
public final class MessageDescriptor: @unchecked Sendable {
  public let fullName: String
  /// The name of the file that declares it.
  public let fileName: String
  public let isMapEntry: Bool
  /// The names of real oneofs (synthetic proto3-optional oneofs are left out).
  public let oneofs: [String]
  public internal(set) var fields: [FieldDescriptor] = []
  private var byNumber: [Int32: FieldDescriptor] = [:]
  private var byJSONKey: [String: FieldDescriptor] = [:]

  init(fullName: String, fileName: String, isMapEntry: Bool, oneofs: [String]) {
    self.fullName = fullName
    self.fileName = fileName
    self.isMapEntry = isMapEntry
    self.oneofs = oneofs
  }

  func setFields(_ fields: [FieldDescriptor]) {
    self.fields = fields.sorted { $0.number < $1.number }
    for field in fields {
      byNumber[field.number] = field
      byJSONKey[field.name] = field
    }
    // JSON names win over proto names only where they do not collide with one.
    for field in fields where byJSONKey[field.jsonName] == nil {
      byJSONKey[field.jsonName] = field
    }
  }

  /// The field with this number, if the message has one.
  public func field(number: Int32) -> FieldDescriptor? { byNumber[number] }

  /// The field a JSON key names: its JSON name or its proto name.
  public func field(jsonKey: String) -> FieldDescriptor? { byJSONKey[jsonKey] }

  /// The well-known type this message is, if it is one of those with a special JSON form.
  public var wellKnownType: WellKnownType? { WellKnownType(rawValue: fullName) }
}

/// An enum type.
public final class EnumDescriptor: Sendable {
  public let fullName: String
  public let fileName: String
  /// Values in declaration order; several names may share a number (`allow_alias`).
  public let values: [(name: String, number: Int32)]
  private let byName: [String: Int32]
  private let byNumber: [Int32: String]

  init(fullName: String, fileName: String, values: [(name: String, number: Int32)]) {
    self.fullName = fullName
    self.fileName = fileName
    self.values = values
    var byName: [String: Int32] = [:]
    var byNumber: [Int32: String] = [:]
    for value in values {
      byName[value.name] = value.number
      // The first name declared for a number is its canonical one.
      if byNumber[value.number] == nil { byNumber[value.number] = value.name }
    }
    self.byName = byName
    self.byNumber = byNumber
  }

  public func number(named name: String) -> Int32? { byName[name] }
  public func name(of number: Int32) -> String? { byNumber[number] }
}

/// How a method may be retried, from `MethodOptions.idempotency_level`.
public enum IdempotencyLevel: String, Sendable, Equatable {
  case unknown = "IDEMPOTENCY_UNKNOWN"
  case noSideEffects = "NO_SIDE_EFFECTS"
  case idempotent = "IDEMPOTENT"
}

/// One RPC method of a service.
public struct MethodDescriptor: Sendable {
  public let name: String
  /// `package.Service/Method`, the gRPC path without its leading slash.
  public let fullPath: String
  public let inputType: MessageDescriptor
  public let outputType: MessageDescriptor
  public let clientStreaming: Bool
  public let serverStreaming: Bool
  public let idempotencyLevel: IdempotencyLevel
  /// The method's options, serialized, for readers of custom options such as `google.api.http`.
  public let options: Google_Protobuf_MethodOptions
}

/// A service.
public struct ServiceDescriptor: Sendable {
  public let fullName: String
  public let fileName: String
  public let methods: [MethodDescriptor]

  /// The method with this simple name.
  public func method(named name: String) -> MethodDescriptor? {
    methods.first { $0.name == name }
  }
}

/// The messages whose JSON form the proto3 JSON mapping defines specially.
public enum WellKnownType: String, Sendable {
  case any = "google.protobuf.Any"
  case timestamp = "google.protobuf.Timestamp"
  case duration = "google.protobuf.Duration"
  case fieldMask = "google.protobuf.FieldMask"
  case structValue = "google.protobuf.Struct"
  case value = "google.protobuf.Value"
  case listValue = "google.protobuf.ListValue"
  case empty = "google.protobuf.Empty"
  case doubleValue = "google.protobuf.DoubleValue"
  case floatValue = "google.protobuf.FloatValue"
  case int64Value = "google.protobuf.Int64Value"
  case uint64Value = "google.protobuf.UInt64Value"
  case int32Value = "google.protobuf.Int32Value"
  case uint32Value = "google.protobuf.UInt32Value"
  case boolValue = "google.protobuf.BoolValue"
  case stringValue = "google.protobuf.StringValue"
  case bytesValue = "google.protobuf.BytesValue"

  var isWrapper: Bool {
    switch self {
    case .doubleValue, .floatValue, .int64Value, .uint64Value, .int32Value, .uint32Value,
      .boolValue, .stringValue, .bytesValue:
      return true
    default:
      return false
    }
  }
}

/// The JSON name protoc gives a field: underscores dropped, the letter after each one upper-cased.
public func protocJSONName(_ name: String) -> String {
  var result = ""
  var capitalizeNext = false
  for character in name {
    if character == "_" {
      capitalizeNext = true
    } else if capitalizeNext {
      result += character.uppercased()
      capitalizeNext = false
    } else {
      result.append(character)
    }
  }
  return result
}
