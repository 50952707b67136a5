import SwiftProtobuf

/// A descriptor that cannot be used: unparseable, incomplete or inconsistent. Descriptors come
/// from other programs (reflection, `--protoset` files), so every problem is an error, never a
/// crash.
public struct DescriptorError: Error, CustomStringConvertible, Equatable {
  public let description: String
  public init(_ description: String) { self.description = description }
}

/// Every type, service and file of a set of `FileDescriptorProto`s, linked and indexed by name.
///
/// Built once from a `FileDescriptorSet` (a `--protoset` file, the descriptors embedded in a
/// binary) or from the files server reflection returned; immutable afterwards.
public final class DescriptorPool: Sendable {
  /// The files in dependency order (a file after everything it imports).
  public let files: [Google_Protobuf_FileDescriptorProto]
  private let filesByName: [String: Google_Protobuf_FileDescriptorProto]
  private let messages: [String: MessageDescriptor]
  private let enums: [String: EnumDescriptor]
  private let servicesByName: [String: ServiceDescriptor]
  /// Every symbol a reflection client may ask for, mapped to the file declaring it.
  private let symbolFiles: [String: String]
  /// Extensions by extendee and field number, mapped to the file declaring them.
  private let extensionFiles: [String: [Int32: String]]

  /// Parses and links a serialized `google.protobuf.FileDescriptorSet`.
  public convenience init(fileDescriptorSet bytes: [UInt8]) throws {
    let set: Google_Protobuf_FileDescriptorSet
    do {
      set = try Google_Protobuf_FileDescriptorSet(serializedBytes: bytes)
    } catch {
      throw DescriptorError("not a FileDescriptorSet: \(error)")
    }
    try self.init(files: set.file)
  }

  /// Links a set of files given in any order. Every import must be among them.
  public init(files: [Google_Protobuf_FileDescriptorProto]) throws {
    var byName: [String: Google_Protobuf_FileDescriptorProto] = [:]
    for file in files {
      guard !file.name.isEmpty else { throw DescriptorError("a file descriptor has no name") }
      // The same file may arrive twice (reflection answers repeat shared imports).
      if let existing = byName[file.name], existing != file {
        throw DescriptorError("two different descriptors for file \(file.name)")
      }
      byName[file.name] = file
    }
    self.filesByName = byName
    self.files = try Self.dependencyOrder(byName)

    var builder = Builder()
    for file in self.files { try builder.declare(file) }
    try builder.link()
    self.messages = builder.messages
    self.enums = builder.enums
    self.servicesByName = builder.services
    self.symbolFiles = builder.symbolFiles
    self.extensionFiles = builder.extensionFiles
  }

  /// The message type with this fully qualified name (a leading dot is allowed).
  public func message(named name: String) -> MessageDescriptor? {
    messages[Self.strip(name)]
  }

  /// The enum type with this fully qualified name.
  public func enumType(named name: String) -> EnumDescriptor? {
    enums[Self.strip(name)]
  }

  /// The service with this fully qualified name.
  public func service(named name: String) -> ServiceDescriptor? {
    servicesByName[Self.strip(name)]
  }

  /// Every service, sorted by name.
  public var services: [ServiceDescriptor] {
    servicesByName.values.sorted { $0.fullName < $1.fullName }
  }

  /// The file descriptor with this name.
  public func file(named name: String) -> Google_Protobuf_FileDescriptorProto? {
    filesByName[name]
  }

  /// The name of the file declaring a fully qualified symbol: a message, enum, enum value,
  /// field, service, method (`pkg.Service.Method`) or extension.
  public func fileName(containingSymbol symbol: String) -> String? {
    symbolFiles[Self.strip(symbol)]
  }

  /// The name of the file declaring an extension of `extendee` with this number.
  public func fileName(containingExtension extendee: String, number: Int32) -> String? {
    extensionFiles[Self.strip(extendee)]?[number]
  }

  /// The extension numbers known for a message type.
  public func extensionNumbers(of extendee: String) -> [Int32] {
    (extensionFiles[Self.strip(extendee)] ?? [:]).keys.sorted()
  }

  /// A file and everything it imports, transitively, the file itself first.
  public func fileWithDependencies(_ name: String) -> [Google_Protobuf_FileDescriptorProto] {
    var seen: Set<String> = []
    var result: [Google_Protobuf_FileDescriptorProto] = []
    var queue = [name]
    while let next = queue.first {
      queue.removeFirst()
      guard !seen.contains(next), let file = filesByName[next] else { continue }
      seen.insert(next)
      result.append(file)
      queue.append(contentsOf: file.dependency)
    }
    return result
  }

  static func strip(_ name: String) -> String {
    name.hasPrefix(".") ? String(name.dropFirst()) : name
  }

  private static func dependencyOrder(
    _ files: [String: Google_Protobuf_FileDescriptorProto]
  ) throws -> [Google_Protobuf_FileDescriptorProto] {
    var ordered: [Google_Protobuf_FileDescriptorProto] = []
    var state: [String: Bool] = [:]  // false: visiting, true: done
    func visit(_ name: String, from importer: String?) throws {
      if state[name] == true { return }
      if state[name] == false { throw DescriptorError("import cycle through \(name)") }
      guard let file = files[name] else {
        throw DescriptorError(
          "\(importer ?? "?") imports \(name), which is not in the descriptor set")
      }
      state[name] = false
      for dependency in file.dependency { try visit(dependency, from: name) }
      state[name] = true
      ordered.append(file)
    }
    for name in files.keys.sorted() { try visit(name, from: nil) }
    return ordered
  }
}

// MARK: - Building

extension DescriptorPool {
  /// Declares every name first, then resolves the references between them.
  private struct Builder {
    var messages: [String: MessageDescriptor] = [:]
    var enums: [String: EnumDescriptor] = [:]
    var services: [String: ServiceDescriptor] = [:]
    var symbolFiles: [String: String] = [:]
    var extensionFiles: [String: [Int32: String]] = [:]
    private var pendingMessages: [(MessageDescriptor, Google_Protobuf_DescriptorProto, Syntax)] = []
    private var pendingServices: [(String, String, Google_Protobuf_ServiceDescriptorProto)] = []
    private var pendingExtensions:
      [(scope: String, file: String, Google_Protobuf_FieldDescriptorProto)] = []

    enum Syntax { case proto2, proto3, editions }

    mutating func declare(_ file: Google_Protobuf_FileDescriptorProto) throws {
      let syntax: Syntax
      switch file.syntax {
      case "", "proto2": syntax = .proto2
      case "proto3": syntax = .proto3
      case "editions": syntax = .editions
      default: throw DescriptorError("\(file.name): unknown syntax \"\(file.syntax)\"")
      }
      let scope = file.package
      for message in file.messageType {
        try declare(message, scope: scope, file: file.name, syntax: syntax)
      }
      for enumType in file.enumType { try declare(enumType, scope: scope, file: file.name) }
      for service in file.service {
        let name = qualify(scope, service.name)
        try addSymbol(name, file: file.name)
        for method in service.method { try addSymbol(name + "." + method.name, file: file.name) }
        pendingServices.append((name, file.name, service))
      }
      for field in file.extension {
        try addSymbol(qualify(scope, field.name), file: file.name)
        pendingExtensions.append((scope, file.name, field))
      }
    }

    private mutating func declare(
      _ proto: Google_Protobuf_DescriptorProto, scope: String, file: String, syntax: Syntax
    ) throws {
      guard !proto.name.isEmpty else { throw DescriptorError("\(file): a message has no name") }
      let name = qualify(scope, proto.name)
      try addSymbol(name, file: file)
      // Synthetic oneofs (one per proto3 `optional` field) are not real oneofs.
      let syntheticOneofs = Set(
        proto.field.filter { $0.proto3Optional && $0.hasOneofIndex }.map { Int($0.oneofIndex) })
      let oneofs = proto.oneofDecl.enumerated()
        .filter { !syntheticOneofs.contains($0.offset) }
        .map { $0.element.name }
      let descriptor = MessageDescriptor(
        fullName: name, fileName: file, isMapEntry: proto.options.mapEntry, oneofs: oneofs)
      messages[name] = descriptor
      pendingMessages.append((descriptor, proto, syntax))
      for field in proto.field { try addSymbol(name + "." + field.name, file: file) }
      for nested in proto.nestedType {
        try declare(nested, scope: name, file: file, syntax: syntax)
      }
      for enumType in proto.enumType { try declare(enumType, scope: name, file: file) }
      for field in proto.extension {
        try addSymbol(qualify(name, field.name), file: file)
        pendingExtensions.append((name, file, field))
      }
    }

    private mutating func declare(
      _ proto: Google_Protobuf_EnumDescriptorProto, scope: String, file: String
    ) throws {
      let name = qualify(scope, proto.name)
      try addSymbol(name, file: file)
      guard !proto.value.isEmpty else { throw DescriptorError("enum \(name) has no values") }
      // Enum values are scoped like siblings of their enum, as in C++.
      for value in proto.value { symbolFiles[qualify(scope, value.name)] = file }
      enums[name] = EnumDescriptor(
        fullName: name, fileName: file, values: proto.value.map { ($0.name, $0.number) })
    }

    private mutating func addSymbol(_ name: String, file: String) throws {
      if let existing = symbolFiles[name] {
        throw DescriptorError("\(name) is declared twice (\(existing) and \(file))")
      }
      symbolFiles[name] = file
    }

    mutating func link() throws {
      for (descriptor, proto, syntax) in pendingMessages {
        var fields: [FieldDescriptor] = []
        var numbers: Set<Int32> = []
        for fieldProto in proto.field {
          let field = try makeField(fieldProto, in: descriptor, proto: proto, syntax: syntax)
          guard numbers.insert(field.number).inserted else {
            throw DescriptorError("\(descriptor.fullName) uses field number \(field.number) twice")
          }
          fields.append(field)
        }
        descriptor.setFields(fields)
        try Self.checkWellKnownShape(descriptor)
        if descriptor.isMapEntry {
          guard fields.count == 2, fields[0].number == 1, fields[1].number == 2 else {
            throw DescriptorError("map entry \(descriptor.fullName) must have fields 1 and 2")
          }
        }
      }
      for (name, file, proto) in pendingServices {
        var methods: [MethodDescriptor] = []
        for method in proto.method {
          guard let input = resolveMessage(method.inputType, scope: name),
            let output = resolveMessage(method.outputType, scope: name)
          else {
            throw DescriptorError(
              "method \(name).\(method.name) refers to an unknown type "
                + "(\(method.inputType) or \(method.outputType))")
          }
          let level: IdempotencyLevel
          switch method.options.idempotencyLevel {
          case .noSideEffects: level = .noSideEffects
          case .idempotent: level = .idempotent
          default: level = .unknown
          }
          methods.append(
            MethodDescriptor(
              name: method.name, fullPath: name + "/" + method.name, inputType: input,
              outputType: output, clientStreaming: method.clientStreaming,
              serverStreaming: method.serverStreaming, idempotencyLevel: level,
              options: method.options))
        }
        services[name] = ServiceDescriptor(fullName: name, fileName: file, methods: methods)
      }
      for (scope, file, field) in pendingExtensions {
        let extendee =
          resolveName(field.extendee, scope: scope) ?? DescriptorPool.strip(field.extendee)
        extensionFiles[extendee, default: [:]][field.number] = file
      }
    }

    private func makeField(
      _ proto: Google_Protobuf_FieldDescriptorProto, in message: MessageDescriptor,
      proto messageProto: Google_Protobuf_DescriptorProto, syntax: Syntax
    ) throws -> FieldDescriptor {
      let where_ = "\(message.fullName).\(proto.name)"
      guard !proto.name.isEmpty, proto.number > 0 else {
        throw DescriptorError("\(message.fullName) has a field without a name or number")
      }
      var kind: FieldKind?
      var messageType: MessageDescriptor?
      var enumType: EnumDescriptor?
      var typeName = ""
      if proto.hasType { kind = Self.kind(proto.type) }
      if [.message, .group, .enumeration, nil].contains(kind) {
        guard !proto.typeName.isEmpty else {
          throw DescriptorError("field \(where_) has no type")
        }
        guard let resolved = resolveName(proto.typeName, scope: message.fullName) else {
          throw DescriptorError("field \(where_) refers to unknown type \(proto.typeName)")
        }
        typeName = resolved
        messageType = messages[resolved]
        enumType = enums[resolved]
        switch kind {
        case .enumeration?:
          guard enumType != nil else {
            throw DescriptorError("\(where_): \(resolved) is not an enum")
          }
        case .message?, .group?:
          guard messageType != nil else {
            throw DescriptorError("\(where_): \(resolved) is not a message")
          }
        default:
          kind = messageType != nil ? .message : .enumeration
        }
      }
      guard let kind else { throw DescriptorError("field \(where_) has no type") }
      let isRepeated = proto.label == .repeated
      let inRealOneof = proto.hasOneofIndex && !proto.proto3Optional
      if proto.hasOneofIndex, Int(proto.oneofIndex) >= messageProto.oneofDecl.count {
        throw DescriptorError("field \(where_) names a oneof that does not exist")
      }
      let hasPresence =
        !isRepeated
        && (kind == .message || kind == .group || proto.hasOneofIndex || syntax != .proto3)
      let isPacked: Bool
      if !isRepeated || !kind.isPackable {
        isPacked = false
      } else if proto.options.hasPacked {
        isPacked = proto.options.packed
      } else {
        isPacked = syntax != .proto2
      }
      var oneofIndex: Int?
      if inRealOneof {
        // Index among real oneofs, which is how MessageDescriptor lists them.
        let name = messageProto.oneofDecl[Int(proto.oneofIndex)].name
        oneofIndex = message.oneofs.firstIndex(of: name)
      }
      let field = FieldDescriptor(
        name: proto.name, number: proto.number,
        jsonName: proto.hasJsonName && !proto.jsonName.isEmpty
          ? proto.jsonName : protocJSONName(proto.name),
        kind: kind, isRepeated: isRepeated, isRequired: proto.label == .required,
        hasPresence: hasPresence, isPacked: isPacked, oneofIndex: oneofIndex, typeName: typeName)
      field.messageType = messageType
      field.enumType = enumType
      return field
    }

    /// The JSON mapping reads the well-known types by field number; a descriptor set that
    /// declares one of those names with other fields is refused here rather than trusted.
    private static func checkWellKnownShape(_ message: MessageDescriptor) throws {
      guard let type = message.wellKnownType else { return }
      let expected: [Int32: (FieldKind, repeated: Bool)]
      switch type {
      case .timestamp, .duration: expected = [1: (.int64, false), 2: (.int32, false)]
      case .fieldMask: expected = [1: (.string, true)]
      case .structValue: expected = [1: (.message, true)]
      case .listValue: expected = [1: (.message, true)]
      case .any: expected = [1: (.string, false), 2: (.bytes, false)]
      case .empty: expected = [:]
      case .value:
        expected = [
          1: (.enumeration, false), 2: (.double, false), 3: (.string, false), 4: (.bool, false),
          5: (.message, false), 6: (.message, false),
        ]
      case .doubleValue: expected = [1: (.double, false)]
      case .floatValue: expected = [1: (.float, false)]
      case .int64Value: expected = [1: (.int64, false)]
      case .uint64Value: expected = [1: (.uint64, false)]
      case .int32Value: expected = [1: (.int32, false)]
      case .uint32Value: expected = [1: (.uint32, false)]
      case .boolValue: expected = [1: (.bool, false)]
      case .stringValue: expected = [1: (.string, false)]
      case .bytesValue: expected = [1: (.bytes, false)]
      }
      for (number, shape) in expected {
        guard let field = message.field(number: number), field.kind == shape.0,
          field.isRepeated == shape.repeated
        else {
          throw DescriptorError(
            "\(message.fullName) does not have the fields of the well-known type (field \(number))")
        }
      }
      if type == .structValue, message.fields.first?.isMap != true {
        throw DescriptorError("google.protobuf.Struct.fields must be a map")
      }
    }

    /// Resolves a type name as protoc does: fully qualified with a leading dot, or relative to
    /// the innermost enclosing scope that declares it.
    private func resolveName(_ name: String, scope: String) -> String? {
      if name.hasPrefix(".") {
        let stripped = String(name.dropFirst())
        return messages[stripped] != nil || enums[stripped] != nil ? stripped : nil
      }
      var scope = scope
      while true {
        let candidate = qualify(scope, name)
        if messages[candidate] != nil || enums[candidate] != nil { return candidate }
        if scope.isEmpty { return nil }
        scope = scope.split(separator: ".").dropLast().joined(separator: ".")
      }
    }

    private func resolveMessage(_ name: String, scope: String) -> MessageDescriptor? {
      resolveName(name, scope: scope).flatMap { messages[$0] }
    }

    private func qualify(_ scope: String, _ name: String) -> String {
      scope.isEmpty ? name : scope + "." + name
    }

    private static func kind(_ type: Google_Protobuf_FieldDescriptorProto.TypeEnum) -> FieldKind? {
      switch type {
      case .double: return .double
      case .float: return .float
      case .int64: return .int64
      case .uint64: return .uint64
      case .int32: return .int32
      case .fixed64: return .fixed64
      case .fixed32: return .fixed32
      case .bool: return .bool
      case .string: return .string
      case .group: return .group
      case .message: return .message
      case .bytes: return .bytes
      case .uint32: return .uint32
      case .enum: return .enumeration
      case .sfixed32: return .sfixed32
      case .sfixed64: return .sfixed64
      case .sint32: return .sint32
      case .sint64: return .sint64
      }
    }
  }
}
