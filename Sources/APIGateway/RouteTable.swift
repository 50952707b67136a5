import MeshProtos
import MeshTranscoding
import SwiftProtobuf

/// One HTTP binding of a gRPC method, from its `google.api.http` annotation (or one of the
/// annotation's `additional_bindings`).
public struct GatewayRoute: Sendable {
  /// `GET`, `POST`, `PUT`, `DELETE`, `PATCH`, or a custom rule's kind.
  public let httpMethod: String
  public let template: PathTemplate
  /// `*` (the whole body is the request), a field's name (the body is that field), or empty
  /// (no body; fields come from the path and the query).
  public let body: String
  /// Empty (the response is the whole message) or the field that is.
  public let responseBody: String
  public let method: MeshTranscoding.MethodDescriptor
  /// The gRPC service's full name, `shop.v1.UserService`.
  public let service: String
}

/// Every HTTP binding of the unary methods of some services, and finding the one a request
/// names. Built from descriptors alone: no route is written by hand.
public struct RouteTable: Sendable {
  public let routes: [GatewayRoute]

  public enum Resolution {
    case matched(GatewayRoute, pathValues: [String: String])
    /// The path is bound, but not for this HTTP method; these are.
    case methodNotAllowed([String])
    case notFound
  }

  /// The bindings of `services`' methods (all services in the pool when nil). A method that
  /// streams is left out: its HTTP mapping is not one request and one response.
  public init(pool: DescriptorPool, services: [String]? = nil) throws {
    var routes: [GatewayRoute] = []
    let chosen = services.map(Set.init)
    for service in pool.services where chosen?.contains(service.fullName) ?? true {
      for method in service.methods where !method.clientStreaming && !method.serverStreaming {
        guard let rule = try Self.httpRule(of: method) else { continue }
        for binding in [rule] + rule.additionalBindings {
          routes.append(try Self.route(binding, method: method, service: service.fullName))
        }
      }
    }
    self.routes = routes
  }

  public func resolve(method: String, path: String) -> Resolution {
    var allowed: [String] = []
    for route in routes {
      guard let values = route.template.match(path) else { continue }
      if route.httpMethod == method { return .matched(route, pathValues: values) }
      allowed.append(route.httpMethod)
    }
    return allowed.isEmpty ? .notFound : .methodNotAllowed(allowed)
  }

  /// The method's `google.api.http` option, if it has one. The descriptor keeps custom
  /// options as unknown fields; they are read again with the annotation's extension.
  static func httpRule(of method: MeshTranscoding.MethodDescriptor) throws -> Google_Api_HttpRule? {
    let bytes: [UInt8] = try method.options.serializedBytes()
    let options = try Google_Protobuf_MethodOptions(
      serializedBytes: bytes, extensions: Google_Api_Annotations_Extensions)
    return options.hasGoogle_Api_http ? options.Google_Api_http : nil
  }

  static func route(
    _ rule: Google_Api_HttpRule, method: MeshTranscoding.MethodDescriptor, service: String
  ) throws -> GatewayRoute {
    let (verb, path): (String, String) =
      switch rule.pattern {
      case .get(let path): ("GET", path)
      case .put(let path): ("PUT", path)
      case .post(let path): ("POST", path)
      case .delete(let path): ("DELETE", path)
      case .patch(let path): ("PATCH", path)
      case .custom(let custom): (custom.kind.uppercased(), custom.path)
      case nil:
        throw DescriptorError("\(method.fullPath): google.api.http names no HTTP method")
      }
    let template = try PathTemplate(parsing: path)
    for fieldPath in template.fieldPaths {
      guard Self.field(fieldPath, in: method.inputType) != nil else {
        throw DescriptorError(
          """
          \(method.fullPath): path \(path) binds \(fieldPath), which \(method.inputType.fullName) \
          has not
          """
        )
      }
    }
    if !rule.body.isEmpty, rule.body != "*", Self.field(rule.body, in: method.inputType) == nil {
      throw DescriptorError(
        "\(method.fullPath): body \(rule.body) is not a field of \(method.inputType.fullName)")
    }
    return GatewayRoute(
      httpMethod: verb, template: template, body: rule.body, responseBody: rule.responseBody,
      method: method, service: service)
  }

  /// The field a dotted path (`a.b`, proto names) names, walking nested messages.
  static func field(_ path: String, in message: MessageDescriptor) -> FieldDescriptor? {
    var current = message
    var found: FieldDescriptor?
    for (index, name) in path.split(separator: ".").enumerated() {
      if index > 0 {
        guard let next = found?.messageType, found?.isRepeated == false else { return nil }
        current = next
      }
      found = current.fields.first { $0.name == name }
      guard found != nil else { return nil }
    }
    return found
  }
}
