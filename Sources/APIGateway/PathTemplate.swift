/// A `google.api.http` path template (`/v1/users/{user_id}/orders`, `/v1/orders/{id}:cancel`,
/// `/v1/{name=shelves/*/books/*}`), and matching a request path against it.
///
/// The grammar is `google/api/http.proto`'s:
///
///     Template = "/" Segments [ Verb ] ;
///     Segments = Segment { "/" Segment } ;
///     Segment  = "*" | "**" | LITERAL | Variable ;
///     Variable = "{" FieldPath [ "=" Segments ] "}" ;
///     FieldPath = IDENT { "." IDENT } ;
///     Verb     = ":" LITERAL ;
///
/// A variable without a pattern matches one segment. `**` (at most one, last) matches the rest
/// of the path. Matching works on the path's raw segments and percent-decodes what a variable
/// captures, except that a multi-segment capture keeps its `/` separators.
public struct PathTemplate: Sendable, Equatable, CustomStringConvertible {
  enum Segment: Sendable, Equatable {
    case literal(String)
    /// `*`: one segment.
    case any
    /// `**`: the rest of the path.
    case rest
  }

  struct Variable: Sendable, Equatable {
    /// The field path, `a.b.c`.
    let fieldPath: [String]
    /// The segments the variable spans: `start..<end` in `segments`.
    let start: Int
    let end: Int
  }

  let segments: [Segment]
  let variables: [Variable]
  let verb: String?
  public let description: String

  /// The field paths the template binds, `a.b` for a nested field.
  public var fieldPaths: [String] { variables.map { $0.fieldPath.joined(separator: ".") } }

  public init(parsing text: String) throws(PathTemplateError) {
    var parser = Parser(text: Array(text.unicodeScalars))
    (segments, variables, verb) = try parser.template()
    description = text
    if let restIndex = segments.firstIndex(of: .rest), restIndex != segments.count - 1 {
      throw PathTemplateError(text, "** must be the last segment")
    }
  }

  /// The variables' values when `path` (the request's raw path, without the query) matches.
  public func match(_ path: String) -> [String: String]? {
    var body = Substring(path)
    guard body.hasPrefix("/") else { return nil }
    body = body.dropFirst()
    if let verb {
      guard body.hasSuffix(":" + verb) else { return nil }
      body = body.dropLast(verb.count + 1)
    }
    let parts = body.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
    var index = 0
    for segment in segments {
      switch segment {
      case .literal(let literal):
        guard index < parts.count, PercentDecoding.decode(parts[index]) == literal else {
          return nil
        }
        index += 1
      case .any:
        guard index < parts.count, !parts[index].isEmpty else { return nil }
        index += 1
      case .rest:
        index = parts.count
      }
    }
    guard index == parts.count else { return nil }
    var values: [String: String] = [:]
    for variable in variables {
      let start = variable.start
      let end = segments[variable.end - 1] == .rest ? parts.count : variable.end
      let captured = parts[start..<end]
      let value =
        captured.count == 1
        ? PercentDecoding.decode(captured[captured.startIndex])
        : captured.map { PercentDecoding.decode($0, keepingSlashes: true) }.joined(separator: "/")
      values[variable.fieldPath.joined(separator: ".")] = value
    }
    return values
  }

  private struct Parser {
    let text: [Unicode.Scalar]
    var position = 0

    init(text: [Unicode.Scalar]) { self.text = text }

    var source: String { String(String.UnicodeScalarView(text)) }

    mutating func template() throws(PathTemplateError) -> ([Segment], [Variable], String?) {
      guard peek == "/" else { throw PathTemplateError(source, "must start with /") }
      position += 1
      var segments: [Segment] = []
      var variables: [Variable] = []
      try self.segments(into: &segments, variables: &variables, inVariable: false)
      var verb: String?
      if peek == ":" {
        position += 1
        let literal = self.literal()
        guard !literal.isEmpty else { throw PathTemplateError(source, "an empty verb after :") }
        verb = literal
      }
      guard position == text.count else {
        throw PathTemplateError(source, "unexpected \"\(text[position])\" at \(position + 1)")
      }
      return (segments, variables, verb)
    }

    mutating func segments(
      into segments: inout [Segment], variables: inout [Variable], inVariable: Bool
    ) throws(PathTemplateError) {
      while true {
        if peek == "{" {
          guard !inVariable else { throw PathTemplateError(source, "a variable inside a variable") }
          position += 1
          let path = fieldPath()
          guard !path.isEmpty else {
            throw PathTemplateError(source, "a variable without a field name at \(position + 1)")
          }
          let start = segments.count
          if peek == "=" {
            position += 1
            try self.segments(into: &segments, variables: &variables, inVariable: true)
          } else {
            segments.append(.any)
          }
          guard peek == "}" else { throw PathTemplateError(source, "a variable without its }") }
          position += 1
          variables.append(Variable(fieldPath: path, start: start, end: segments.count))
        } else if peek == "*" {
          position += 1
          if peek == "*" {
            position += 1
            segments.append(.rest)
          } else {
            segments.append(.any)
          }
        } else {
          let literal = self.literal()
          guard !literal.isEmpty else {
            throw PathTemplateError(source, "an empty segment at \(position + 1)")
          }
          segments.append(.literal(literal))
        }
        guard peek == "/" else { return }
        position += 1
      }
    }

    mutating func fieldPath() -> [String] {
      var path: [String] = []
      var current = ""
      while let scalar = peek,
        scalar == "_" || scalar == "." || scalar.properties.isAlphabetic
          || ("0"..."9").contains(scalar)
      {
        position += 1
        if scalar == "." {
          path.append(current)
          current = ""
        } else {
          current.unicodeScalars.append(scalar)
        }
      }
      if !current.isEmpty { path.append(current) }
      return path.contains("") ? [] : path
    }

    mutating func literal() -> String {
      var literal = ""
      while let scalar = peek, !"/{}=:*".unicodeScalars.contains(scalar) {
        literal.unicodeScalars.append(scalar)
        position += 1
      }
      return literal
    }

    var peek: Unicode.Scalar? { position < text.count ? text[position] : nil }
  }
}

public struct PathTemplateError: Error, CustomStringConvertible, Equatable {
  public let description: String
  init(_ template: String, _ problem: String) {
    description = "path template \"\(template)\": \(problem)"
  }
}

/// RFC 3986 percent-decoding (`%2F` → `/`), leaving malformed escapes as they are.
enum PercentDecoding {
  static func decode(
    _ text: some StringProtocol, keepingSlashes: Bool = false, plusIsSpace: Bool = false
  )
    -> String
  {
    guard text.contains("%") || (plusIsSpace && text.contains("+")) else { return String(text) }
    var bytes: [UInt8] = []
    let utf8 = Array(text.utf8)
    var index = 0
    while index < utf8.count {
      let byte = utf8[index]
      if byte == UInt8(ascii: "%"), index + 2 < utf8.count,
        let high = hex(utf8[index + 1]), let low = hex(utf8[index + 2])
      {
        let decoded = high << 4 | low
        if keepingSlashes, decoded == UInt8(ascii: "/") {
          bytes.append(contentsOf: utf8[index...index + 2])
        } else {
          bytes.append(decoded)
        }
        index += 3
      } else if plusIsSpace, byte == UInt8(ascii: "+") {
        bytes.append(UInt8(ascii: " "))
        index += 1
      } else {
        bytes.append(byte)
        index += 1
      }
    }
    return String(decoding: bytes, as: UTF8.self)
  }

  private static func hex(_ byte: UInt8) -> UInt8? {
    switch byte {
    case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
    case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
    case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
    default: nil
    }
  }
}
