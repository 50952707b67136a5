import SwiftProtobuf

/// What kind of declaration a symbol names.
public enum SymbolKind: String, Sendable {
  case service, method, message, enumeration = "enum", field, enumValue = "enum value"
}

extension DescriptorPool {
  /// A symbol's declaration written back as `.proto` source, as `grpcurl describe` shows it;
  /// nil for a symbol the pool does not declare. `pkg.Service/Method` is accepted for methods.
  public func describe(symbol: String) -> (kind: SymbolKind, text: String)? {
    let symbol = DescriptorPool.strip(symbol).replacingSlash()
    guard let fileName = fileName(containingSymbol: symbol), let file = file(named: fileName)
    else { return nil }
    let package = file.package
    func qualify(_ name: String, _ scope: String) -> String {
      scope.isEmpty ? name : scope + "." + name
    }
    for service in file.service {
      let name = qualify(service.name, package)
      if name == symbol { return (.service, Self.render(service)) }
      for method in service.method where name + "." + method.name == symbol {
        return (.method, Self.render(method, indent: ""))
      }
    }
    func search(
      _ messages: [Google_Protobuf_DescriptorProto], _ enums: [Google_Protobuf_EnumDescriptorProto],
      scope: String
    )
      -> (SymbolKind, String)?
    {
      for enumType in enums {
        if qualify(enumType.name, scope) == symbol {
          return (.enumeration, Self.render(enumType, indent: ""))
        }
        for value in enumType.value where qualify(value.name, scope) == symbol {
          return (.enumValue, "\(value.name) = \(value.number);")
        }
      }
      for message in messages {
        let name = qualify(message.name, scope)
        if name == symbol { return (.message, Self.render(message, indent: "")) }
        for field in message.field where name + "." + field.name == symbol {
          return (.field, Self.render(field, in: message) + ";")
        }
        if let found = search(message.nestedType, message.enumType, scope: name) { return found }
      }
      return nil
    }
    return search(file.messageType, file.enumType, scope: package).map { ($0.0, $0.1) }
  }

  private static func render(_ service: Google_Protobuf_ServiceDescriptorProto) -> String {
    var lines = ["service \(service.name) {"]
    for method in service.method { lines.append(render(method, indent: "  ")) }
    lines.append("}")
    return lines.joined(separator: "\n")
  }

  private static func render(
    _ method: Google_Protobuf_MethodDescriptorProto, indent: String
  )
    -> String
  {
    let input = (method.clientStreaming ? "stream " : "") + method.inputType
    let output = (method.serverStreaming ? "stream " : "") + method.outputType
    var text = "\(indent)rpc \(method.name) ( \(input) ) returns ( \(output) )"
    switch method.options.idempotencyLevel {
    case .noSideEffects:
      text += " {\n\(indent)  option idempotency_level = NO_SIDE_EFFECTS;\n\(indent)}"
    case .idempotent:
      text += " {\n\(indent)  option idempotency_level = IDEMPOTENT;\n\(indent)}"
    default:
      text += ";"
    }
    return text
  }

  private static func render(_ message: Google_Protobuf_DescriptorProto, indent: String) -> String {
    var lines = ["\(indent)message \(message.name) {"]
    let inner = indent + "  "
    for nested in message.nestedType where !nested.options.mapEntry {
      lines.append(render(nested, indent: inner))
    }
    for enumType in message.enumType { lines.append(render(enumType, indent: inner)) }
    var renderedOneofs: Set<Int32> = []
    for field in message.field {
      if field.hasOneofIndex, !field.proto3Optional {
        guard renderedOneofs.insert(field.oneofIndex).inserted else { continue }
        let members = message.field.filter { $0.hasOneofIndex && $0.oneofIndex == field.oneofIndex }
        lines.append("\(inner)oneof \(message.oneofDecl[Int(field.oneofIndex)].name) {")
        for member in members { lines.append("\(inner)  \(render(member, in: message));") }
        lines.append("\(inner)}")
      } else {
        lines.append("\(inner)\(render(field, in: message));")
      }
    }
    lines.append("\(indent)}")
    return lines.joined(separator: "\n")
  }

  private static func render(
    _ enumType: Google_Protobuf_EnumDescriptorProto, indent: String
  )
    -> String
  {
    var lines = ["\(indent)enum \(enumType.name) {"]
    for value in enumType.value { lines.append("\(indent)  \(value.name) = \(value.number);") }
    lines.append("\(indent)}")
    return lines.joined(separator: "\n")
  }

  private static func render(
    _ field: Google_Protobuf_FieldDescriptorProto, in message: Google_Protobuf_DescriptorProto
  ) -> String {
    let type: String
    let typeName = field.typeName.split(separator: ".").last.map(String.init) ?? ""
    if field.label == .repeated, field.type == .message,
      let entry = message.nestedType.first(where: { $0.name == typeName && $0.options.mapEntry }),
      entry.field.count == 2
    {
      return
        """
        map<\(typeText(entry.field[0])), \(typeText(entry.field[1]))> \(field.name) = \
        \(field.number)
        """
    }
    switch field.label {
    case .repeated: type = "repeated " + typeText(field)
    case .required: type = "required " + typeText(field)
    default: type = (field.proto3Optional ? "optional " : "") + typeText(field)
    }
    var text = "\(type) \(field.name) = \(field.number)"
    if field.hasJsonName, field.jsonName != protocJSONName(field.name) {
      text += " [json_name = \"\(field.jsonName)\"]"
    }
    return text
  }

  private static func typeText(_ field: Google_Protobuf_FieldDescriptorProto) -> String {
    switch field.type {
    case .message, .enum, .group: return field.typeName
    case .double: return "double"
    case .float: return "float"
    case .int64: return "int64"
    case .uint64: return "uint64"
    case .int32: return "int32"
    case .fixed64: return "fixed64"
    case .fixed32: return "fixed32"
    case .bool: return "bool"
    case .string: return "string"
    case .bytes: return "bytes"
    case .uint32: return "uint32"
    case .sfixed32: return "sfixed32"
    case .sfixed64: return "sfixed64"
    case .sint32: return "sint32"
    case .sint64: return "sint64"
    }
  }
}

extension String {
  /// `pkg.Service/Method` → `pkg.Service.Method`.
  fileprivate func replacingSlash() -> String {
    String(map { $0 == "/" ? "." : $0 })
  }
}
