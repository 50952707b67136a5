import HTTPTypes
import MeshTranscoding

/// Turns an HTTP request into the gRPC request message a route names, and the gRPC response
/// into JSON — the proto3 JSON mapping, with `google.api.http`'s rules for what comes from the
/// path, the query and the body.
public struct Transcoder: Sendable {
  public let pool: DescriptorPool

  public init(pool: DescriptorPool) {
    self.pool = pool
  }

  /// The request message's bytes. Path variables are set last, so they win over the body;
  /// query parameters fill fields the body does not carry (all but `*`).
  public func request(
    for route: GatewayRoute, pathValues: [String: String], query: [(String, String)],
    body: [UInt8]
  ) throws(GatewayError) -> [UInt8] {
    let input = route.method.inputType
    var object: [(key: String, value: JSONValue)] = []
    let text = String(decoding: body, as: UTF8.self)
    let hasBody = !text.allSatisfy(\.isWhitespace)
    switch route.body {
    case "*":
      if hasBody {
        guard case .object(let members) = try parse(text) else {
          throw GatewayError.invalidArgument("request body: must be a JSON object")
        }
        object = members
      }
    case "":
      if hasBody {
        throw GatewayError.invalidArgument(
          "request body: \(route.httpMethod) \(route.template) takes no body")
      }
    default:
      if hasBody {
        try set(route.body, to: try parse(text), in: &object, message: input)
      }
    }
    if route.body != "*" {
      var repeated: [String: [JSONValue]] = [:]
      var order: [String] = []
      for (name, value) in query {
        guard let field = RouteTable.field(name, in: input) ?? fieldByJSONPath(name, in: input)
        else {
          throw GatewayError.invalidArgument(
            "query parameter \(name): \(input.fullName) has no such field")
        }
        let canonical = canonicalPath(name, in: input)
        if pathValues[canonical] != nil {
          throw GatewayError.invalidArgument("query parameter \(name): is bound by the path")
        }
        let converted = try scalar(value, for: field, name: name)
        if repeated[canonical] == nil { order.append(canonical) }
        repeated[canonical, default: []].append(converted)
        if !field.isRepeated, repeated[canonical]!.count > 1 {
          throw GatewayError.invalidArgument("query parameter \(name): given more than once")
        }
      }
      for name in order {
        let field = RouteTable.field(name, in: input)!
        let values = repeated[name]!
        try set(
          name, to: field.isRepeated ? .array(values) : values[0], in: &object, message: input)
      }
    }
    for (path, value) in pathValues.sorted(by: { $0.key < $1.key }) {
      let field = RouteTable.field(path, in: input)!
      try set(path, to: try scalar(value, for: field, name: path), in: &object, message: input)
    }
    do {
      return try DynamicMessage(descriptor: input, json: .object(object), pool: pool)
        .serializedBytes()
    } catch let error as JSONMappingError {
      throw GatewayError.invalidArgument(error.description)
    } catch {
      throw GatewayError.invalidArgument("\(error)")
    }
  }

  /// The response as JSON text: the whole message, or the route's `response_body` field.
  public func response(for route: GatewayRoute, bytes: [UInt8]) throws(GatewayError) -> String {
    do {
      let message = try DynamicMessage(descriptor: route.method.outputType, serializedBytes: bytes)
      var json = try message.jsonValue(pool: pool)
      if !route.responseBody.isEmpty,
        let field = RouteTable.field(route.responseBody, in: route.method.outputType),
        case .object(let members) = json
      {
        json = members.first { $0.key == field.jsonName }?.value ?? .null
      }
      return json.serialized(pretty: true) + "\n"
    } catch {
      throw GatewayError(
        httpStatus: 502, code: "INTERNAL",
        message: "the response of \(route.method.fullPath) could not be read: \(error)")
    }
  }

  private func parse(_ text: String) throws(GatewayError) -> JSONValue {
    do {
      return try JSONParser.parse(text)
    } catch {
      throw GatewayError.invalidArgument("request body: \(error)")
    }
  }

  /// A path or query value as the JSON the field's type reads: booleans as `true`/`false`,
  /// everything else as a string (the mapping reads numbers, enums and well-known types from
  /// strings).
  private func scalar(
    _ value: String, for field: FieldDescriptor, name: String
  )
    throws(GatewayError) -> JSONValue
  {
    switch field.kind {
    case .bool:
      switch value {
      case "true": return .bool(true)
      case "false": return .bool(false)
      default: throw GatewayError.invalidArgument("\(name): \"\(value)\" is not true or false")
      }
    case .message where field.messageType?.wellKnownType == nil:
      throw GatewayError.invalidArgument("\(name): a message field cannot come from the URL")
    default:
      return .string(value)
    }
  }

  /// Sets `path` (proto names, dotted) in a JSON object, replacing what was there under the
  /// field's proto or JSON name.
  private func set(
    _ path: String, to value: JSONValue, in object: inout [(key: String, value: JSONValue)],
    message: MessageDescriptor
  ) throws(GatewayError) {
    let names = path.split(separator: ".").map(String.init)
    guard let first = message.fields.first(where: { $0.name == names[0] }) else {
      throw GatewayError.invalidArgument("\(path): \(message.fullName) has no such field")
    }
    if names.count == 1 { object.removeAll { $0.key == first.name || $0.key == first.jsonName } }
    if names.count == 1 {
      object.append((first.name, value))
      return
    }
    guard let nested = first.messageType else {
      throw GatewayError.invalidArgument("\(path): \(first.name) is not a message")
    }
    let index = object.firstIndex { $0.key == first.name || $0.key == first.jsonName }
    var inner: [(key: String, value: JSONValue)] = []
    if let index, case .object(let members) = object[index].value { inner = members }
    try set(names.dropFirst().joined(separator: "."), to: value, in: &inner, message: nested)
    if let index {
      object[index] = (object[index].key, .object(inner))
    } else {
      object.append((first.name, .object(inner)))
    }
  }

  /// A query parameter may name fields by their JSON names (`userId`).
  private func fieldByJSONPath(_ path: String, in message: MessageDescriptor) -> FieldDescriptor? {
    RouteTable.field(canonicalPath(path, in: message), in: message)
  }

  /// The dotted path in proto names.
  private func canonicalPath(_ path: String, in message: MessageDescriptor) -> String {
    var current: MessageDescriptor? = message
    var names: [String] = []
    for part in path.split(separator: ".") {
      guard
        let field = current?.fields.first(where: { $0.name == part || $0.jsonName == part })
      else { return path }
      names.append(field.name)
      current = field.messageType
    }
    return names.joined(separator: ".")
  }
}

/// An error the gateway answers itself, in Google's JSON error shape:
/// `{"error": {"code": 404, "status": "NOT_FOUND", "message": "…"}}`.
public struct GatewayError: Error, CustomStringConvertible, Sendable {
  public let httpStatus: Int
  /// The gRPC status name.
  public let code: String
  public let message: String
  /// Headers the answer carries (`Allow` on a 405).
  public let headers: HTTPFields

  public init(httpStatus: Int, code: String, message: String, headers: HTTPFields = [:]) {
    self.httpStatus = httpStatus
    self.code = code
    self.message = message
    self.headers = headers
  }

  public static func invalidArgument(_ message: String) -> GatewayError {
    GatewayError(httpStatus: 400, code: "INVALID_ARGUMENT", message: message)
  }

  public var description: String { "\(httpStatus) \(code): \(message)" }

  public var jsonBody: String {
    JSONValue.object([
      (
        "error",
        .object([
          ("code", .number(String(httpStatus))), ("status", .string(code)),
          ("message", .string(message)),
        ])
      )
    ]).serialized(pretty: true) + "\n"
  }
}

/// gRPC status → HTTP status, as Google's APIs map them (`google/rpc/code.proto`).
public enum StatusMapping {
  public static func httpStatus(forGRPCCode code: Int) -> Int {
    switch code {
    case 0: 200  // OK
    case 1: 499  // CANCELLED
    case 2: 500  // UNKNOWN
    case 3: 400  // INVALID_ARGUMENT
    case 4: 504  // DEADLINE_EXCEEDED
    case 5: 404  // NOT_FOUND
    case 6: 409  // ALREADY_EXISTS
    case 7: 403  // PERMISSION_DENIED
    case 8: 429  // RESOURCE_EXHAUSTED
    case 9: 400  // FAILED_PRECONDITION
    case 10: 409  // ABORTED
    case 11: 400  // OUT_OF_RANGE
    case 12: 501  // UNIMPLEMENTED
    case 13: 500  // INTERNAL
    case 14: 503  // UNAVAILABLE
    case 15: 500  // DATA_LOSS
    case 16: 401  // UNAUTHENTICATED
    default: 500
    }
  }

  static let names = [
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
    "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
  ]

  public static func name(forGRPCCode code: Int) -> String {
    names.indices.contains(code) ? names[code] : "UNKNOWN"
  }
}
