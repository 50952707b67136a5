/// A protobuf message whose type is known only at run time, from a descriptor.
///
/// Fields are kept by number. A field without presence (a proto3 scalar) holding its default
/// value is not stored, so two messages that serialize alike compare equal.
public struct DynamicMessage: Sendable, Equatable {
  public let descriptor: MessageDescriptor
  private var storage: [Int32: FieldValue] = [:]
  /// Fields the descriptor does not know, as read from the wire; written back unchanged.
  public var unknownFields: [UInt8] = []

  public init(descriptor: MessageDescriptor) {
    self.descriptor = descriptor
  }

  /// The value of a field, or `nil` when it is not set.
  public subscript(field: FieldDescriptor) -> FieldValue? {
    get { storage[field.number] }
    set { set(field, newValue) }
  }

  /// The value of the field with this name, or `nil` when it is not set or does not exist.
  public subscript(name: String) -> FieldValue? {
    get { descriptor.field(jsonKey: name).flatMap { storage[$0.number] } }
    set {
      guard let field = descriptor.field(jsonKey: name) else { return }
      set(field, newValue)
    }
  }

  /// Whether the field is set.
  public func has(_ field: FieldDescriptor) -> Bool { storage[field.number] != nil }

  /// The set fields with their values, in field-number order.
  public var setFields: [(FieldDescriptor, FieldValue)] {
    descriptor.fields.compactMap { field in storage[field.number].map { (field, $0) } }
  }

  /// The value of a field, or its default (zero, empty, or an empty message) when unset.
  public func valueOrDefault(_ field: FieldDescriptor) -> FieldValue {
    storage[field.number] ?? FieldValue.defaultValue(for: field)
  }

  private mutating func set(_ field: FieldDescriptor, _ value: FieldValue?) {
    guard let value else {
      storage[field.number] = nil
      return
    }
    if !field.hasPresence, value.isDefault(for: field) {
      storage[field.number] = nil
      return
    }
    // Setting one member of a oneof clears the others.
    if let oneof = field.oneofIndex {
      for other in descriptor.fields where other.oneofIndex == oneof && other !== field {
        storage[other.number] = nil
      }
    }
    storage[field.number] = value
  }

  public static func == (lhs: DynamicMessage, rhs: DynamicMessage) -> Bool {
    lhs.descriptor === rhs.descriptor && lhs.storage == rhs.storage
      && lhs.unknownFields == rhs.unknownFields
  }
}

/// The key of a map entry: an integer, a bool or a string, as protobuf allows.
public enum MapKey: Hashable, Sendable, Comparable {
  case int(Int64)
  case uint(UInt64)
  case bool(Bool)
  case string(String)

  public static func < (lhs: MapKey, rhs: MapKey) -> Bool {
    switch (lhs, rhs) {
    case (.int(let a), .int(let b)): return a < b
    case (.uint(let a), .uint(let b)): return a < b
    case (.bool(let a), .bool(let b)): return !a && b
    case (.string(let a), .string(let b)): return a < b
    default: return false
    }
  }
}

/// The value of one field.
public indirect enum FieldValue: Sendable, Equatable {
  case int32(Int32)
  case int64(Int64)
  case uint32(UInt32)
  case uint64(UInt64)
  case float(Float)
  case double(Double)
  case bool(Bool)
  case string(String)
  case bytes([UInt8])
  /// An enum value by number; numbers the enum does not name are kept (open enums).
  case enumValue(Int32)
  case message(DynamicMessage)
  /// A repeated field's elements.
  case list([FieldValue])
  /// A map field's entries.
  case map([MapKey: FieldValue])

  /// The value of an unset field.
  public static func defaultValue(for field: FieldDescriptor) -> FieldValue {
    if field.isMap { return .map([:]) }
    if field.isRepeated { return .list([]) }
    return defaultScalar(for: field)
  }

  /// The default of one element of the field (for a repeated field, of one element).
  static func defaultScalar(for field: FieldDescriptor) -> FieldValue {
    switch field.kind {
    case .int32, .sint32, .sfixed32: return .int32(0)
    case .int64, .sint64, .sfixed64: return .int64(0)
    case .uint32, .fixed32: return .uint32(0)
    case .uint64, .fixed64: return .uint64(0)
    case .float: return .float(0)
    case .double: return .double(0)
    case .bool: return .bool(false)
    case .string: return .string("")
    case .bytes: return .bytes([])
    case .enumeration: return .enumValue(field.enumType?.values.first?.number ?? 0)
    case .message, .group: return .message(DynamicMessage(descriptor: field.messageType!))
    }
  }

  func isDefault(for field: FieldDescriptor) -> Bool {
    switch self {
    case .list(let values): return values.isEmpty
    case .map(let entries): return entries.isEmpty
    case .message: return false
    case .float(let value): return value == 0 && value.sign == .plus
    case .double(let value): return value == 0 && value.sign == .plus
    case .enumValue(let value): return value == 0
    default: return self == FieldValue.defaultScalar(for: field)
    }
  }

  /// The message, for message values.
  public var messageValue: DynamicMessage? {
    if case .message(let message) = self { return message }
    return nil
  }
}
