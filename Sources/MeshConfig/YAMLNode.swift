/// A node of a YAML document: what `YAMLParser` reads a config file into.
///
/// Config files are read with the project's own parser rather than Yams: Yams needs Foundation
/// (its tag resolver compiles `NSRegularExpression`s), and Foundation with ICU is about 8 MB of
/// every sidecar's resident memory. The schema reads every value from its text, so the parser
/// keeps each scalar's text and style and resolves no types.
enum YAMLNode: Equatable, Sendable {
  case scalar(YAMLScalar)
  case mapping([YAMLPair], YAMLMark)
  case sequence([YAMLNode], YAMLMark)

  /// Where the node starts.
  var mark: YAMLMark {
    switch self {
    case .scalar(let scalar): scalar.mark
    case .mapping(_, let mark), .sequence(_, let mark): mark
    }
  }
}

/// One entry of a mapping, in document order.
struct YAMLPair: Equatable, Sendable {
  var key: YAMLNode
  var value: YAMLNode
}

/// A scalar's text as the document gives it, after unescaping and folding.
struct YAMLScalar: Equatable, Sendable {
  enum Style: Equatable, Sendable {
    case plain, singleQuoted, doubleQuoted, literal, folded
  }

  var value: String
  var style: Style
  var mark: YAMLMark

  /// YAML 1.2's null: an empty plain scalar, `~`, or `null` unquoted. `"null"` is a string.
  var isNull: Bool {
    style == .plain
      && (value.isEmpty || value == "~" || value == "null" || value == "Null"
        || value == "NULL")
  }
}

/// A place in the document: line and column, both counted from 1.
struct YAMLMark: Equatable, Sendable {
  var line: Int
  var column: Int
}

/// A document that is not YAML, or uses a part of YAML config files have no use for (tags,
/// complex keys, several documents), with the place it goes wrong.
struct YAMLError: Error, Equatable, CustomStringConvertible {
  var message: String
  var mark: YAMLMark

  var description: String { "\(mark.line):\(mark.column): \(message)" }
}
