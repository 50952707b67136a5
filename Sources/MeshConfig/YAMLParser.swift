/// Reads one YAML 1.2 document as configuration files write it: block mappings and sequences
/// (compact forms included), flow collections, plain, single- and double-quoted scalars, literal
/// and folded block scalars with chomping, comments, anchors and aliases.
///
/// Refused, each with its place: tabs in indentation, tags (`!`), complex keys (`?`),
/// directives (`%`), and a second document — a config file holds one, and a type tag would
/// change nothing, since the schema reads every value from its text.
struct YAMLParser {
  private let lines: [[UInt8]]
  private var row = 0
  private var anchors: [String: YAMLNode] = [:]

  /// The document's root, or nil for a document with no content.
  static func parse(_ text: String) throws(YAMLError) -> YAMLNode? {
    var parser = YAMLParser(text)
    return try parser.document()
  }

  private init(_ text: String) {
    var lines: [[UInt8]] = []
    var current: [UInt8] = []
    var bytes = Substring(text).utf8[...]
    if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { bytes = bytes.dropFirst(3) }
    for byte in bytes {
      if byte == .newline {
        if current.last == .carriageReturn { current.removeLast() }
        lines.append(current)
        current.removeAll(keepingCapacity: true)
      } else {
        current.append(byte)
      }
    }
    if current.last == .carriageReturn { current.removeLast() }
    lines.append(current)
    self.lines = lines
  }

  /// A place between lines and columns while reading flow collections and quoted scalars,
  /// which may run over several lines.
  private struct Position {
    var row: Int
    var col: Int
  }

  // MARK: The document

  private mutating func document() throws(YAMLError) -> YAMLNode? {
    skipBlankLines()
    if row < lines.count, lines[row].first == .percent {
      throw error("YAML directives (%) are not supported", row, 0)
    }
    if row < lines.count, isDocumentMarker(row, .dash) {
      let rest = skipSpaces(row, 3)
      if rest < lines[row].count, lines[row][rest] != .hash {
        throw error("put the document on the line after '---'", row, rest)
      }
      row += 1
    }
    skipBlankLines()
    var root: YAMLNode?
    if row < lines.count, !isDocumentMarker(row, .dash), !isDocumentMarker(row, .dot) {
      root = try blockNode(parentIndent: -1, emptyMark: mark(row, 0))
    }
    skipBlankLines()
    if row < lines.count, isDocumentMarker(row, .dot) {
      row += 1
      skipBlankLines()
    }
    if row < lines.count {
      if isDocumentMarker(row, .dash) {
        throw error("a second document; a config file holds one", row, 0)
      }
      throw error("unexpected text after the document", row, try indent(row))
    }
    return root
  }

  // MARK: Block context

  /// The node that starts on the next non-blank line, if that line is indented more than
  /// `parentIndent`; an empty (null) scalar otherwise.
  private mutating func blockNode(
    parentIndent: Int, emptyMark: YAMLMark
  ) throws(YAMLError)
    -> YAMLNode
  {
    skipBlankLines()
    guard row < lines.count, !isDocumentMarker(row, .dash), !isDocumentMarker(row, .dot)
    else { return .scalar(YAMLScalar(value: "", style: .plain, mark: emptyMark)) }
    let indent = try indent(row)
    guard indent > parentIndent else {
      return .scalar(YAMLScalar(value: "", style: .plain, mark: emptyMark))
    }
    return try value(row, indent, parentIndent: parentIndent, compact: true)
  }

  /// A value starting at `col` of the current line, consuming through the end of its last
  /// line. `compact` allows a block mapping or sequence to start here (as at the start of a
  /// line or after a list item's dash), which YAML forbids after a mapping key's colon.
  private mutating func value(
    _ row: Int, _ col: Int, parentIndent: Int, compact: Bool
  )
    throws(YAMLError) -> YAMLNode
  {
    let line = lines[row]
    var col = col
    if line[col] == .ampersand {
      let anchorMark = mark(row, col)
      let (name, end) = try name(row, col + 1)
      col = skipSpaces(row, end)
      let node: YAMLNode
      if col >= line.count || line[col] == .hash {
        self.row = row + 1
        skipBlankLines()
        if self.row < lines.count, try indent(self.row) == parentIndent,
          isSequenceEntry(self.row, parentIndent)
        {
          node = try blockSequence(column: parentIndent)
        } else {
          node = try blockNode(parentIndent: parentIndent, emptyMark: anchorMark)
        }
      } else {
        node = try value(row, col, parentIndent: parentIndent, compact: compact)
      }
      anchors[name] = node
      return node
    }
    switch line[col] {
    case .dash where isBlankOrEnd(row, col + 1):
      guard compact else {
        throw error(
          "a list can not start after a key on the same line; start it on the next line",
          row, col)
      }
      self.row = row
      return try blockSequence(column: col)
    case .question where isBlankOrEnd(row, col + 1):
      throw error("complex mapping keys (?) are not supported", row, col)
    case .leftBracket, .leftBrace:
      var position = Position(row: row, col: col)
      let node = try flowNode(&position)
      try finishLine(position)
      return node
    case .doubleQuote, .singleQuote:
      if compact, keyColon(row, col) != nil {
        self.row = row
        return try blockMapping(column: col)
      }
      var position = Position(row: row, col: col)
      let node = YAMLNode.scalar(try quoted(&position))
      try finishLine(position)
      return node
    case .pipe, .greaterThan:
      return try blockScalar(row, col, parentIndent: parentIndent)
    case .asterisk:
      var position = Position(row: row, col: col)
      let node = try alias(&position)
      try finishLine(position)
      return node
    case .exclamation:
      throw error("tags (!) are not supported; every value is read from its text", row, col)
    case .percent, .at, .backtick:
      throw error(
        "a plain value can not start with '\(Character(Unicode.Scalar(line[col])))'; quote it",
        row, col)
    default:
      if compact, keyColon(row, col) != nil {
        self.row = row
        return try blockMapping(column: col)
      }
      return try plainScalar(row, col, parentIndent: parentIndent)
    }
  }

  /// A block sequence whose first dash is at `column` of the current line; the next entries
  /// are lines indented by exactly `column` that start with a dash.
  private mutating func blockSequence(column: Int) throws(YAMLError) -> YAMLNode {
    let start = mark(row, column)
    var items: [YAMLNode] = []
    while true {
      let col = skipSpaces(row, column + 1)
      if col >= lines[row].count || lines[row][col] == .hash {
        let emptyMark = mark(row, column + 1)
        row += 1
        items.append(try blockNode(parentIndent: column, emptyMark: emptyMark))
      } else {
        items.append(try value(row, col, parentIndent: column, compact: true))
      }
      skipBlankLines()
      guard row < lines.count, !isDocumentMarker(row, .dash), !isDocumentMarker(row, .dot)
      else { break }
      let indent = try indent(row)
      if indent > column {
        throw error("this line is indented more than the items of its list", row, indent)
      }
      guard indent == column, isSequenceEntry(row, column) else { break }
    }
    return .sequence(items, start)
  }

  /// A block mapping whose first key is at `column` of the current line; the next keys are
  /// lines indented by exactly `column`.
  private mutating func blockMapping(column: Int) throws(YAMLError) -> YAMLNode {
    let start = mark(row, column)
    var pairs: [YAMLPair] = []
    while true {
      guard let colon = keyColon(row, column) else {
        throw error("expected 'key: value' in this mapping", row, column)
      }
      let key = try blockKey(row, column, colon: colon)
      let col = skipSpaces(row, colon + 1)
      let value: YAMLNode
      if col >= lines[row].count || lines[row][col] == .hash {
        let emptyMark = mark(row, colon + 1)
        row += 1
        skipBlankLines()
        // A list may sit at its key's own indentation.
        if row < lines.count, try indent(row) == column, isSequenceEntry(row, column) {
          value = try blockSequence(column: column)
        } else {
          value = try blockNode(parentIndent: column, emptyMark: emptyMark)
        }
      } else {
        value = try self.value(row, col, parentIndent: column, compact: false)
      }
      pairs.append(YAMLPair(key: key, value: value))
      skipBlankLines()
      guard row < lines.count, !isDocumentMarker(row, .dash), !isDocumentMarker(row, .dot)
      else { break }
      let indent = try indent(row)
      if indent < column { break }
      if indent > column {
        throw error("this line is indented more than the keys of its mapping", row, indent)
      }
      if isSequenceEntry(row, column) {
        throw error("a list item where a key of the mapping was expected", row, column)
      }
    }
    return .mapping(pairs, start)
  }

  private func blockKey(_ row: Int, _ col: Int, colon: Int) throws(YAMLError) -> YAMLNode {
    let line = lines[row]
    switch line[col] {
    case .doubleQuote, .singleQuote:
      var position = Position(row: row, col: col)
      return .scalar(try quoted(&position))
    case .ampersand, .asterisk, .exclamation, .leftBracket, .leftBrace, .pipe, .greaterThan,
      .percent, .at, .backtick:
      throw error("a key must be a plain or quoted string", row, col)
    default:
      var end = colon
      while end > col, isSpace(line[end - 1]) { end -= 1 }
      return .scalar(
        YAMLScalar(value: text(line[col..<end]), style: .plain, mark: mark(row, col)))
    }
  }

  /// The index of the colon that makes the text at `col` a mapping key (`key:` followed by a
  /// space or the end of the line), or nil if the text is not a key.
  private func keyColon(_ row: Int, _ col: Int) -> Int? {
    let line = lines[row]
    var i = col
    switch line[col] {
    case .doubleQuote, .singleQuote:
      guard let close = closingQuote(line, from: col) else { return nil }
      i = skipSpaces(row, close + 1)
      return i < line.count && line[i] == .colon && isBlankOrEnd(row, i + 1) ? i : nil
    case .leftBracket, .leftBrace, .hash, .pipe, .greaterThan:
      return nil
    default:
      while i < line.count {
        if line[i] == .colon, isBlankOrEnd(row, i + 1) { return i }
        if line[i] == .hash, i > col, isSpace(line[i - 1]) { return nil }
        i += 1
      }
      return nil
    }
  }

  /// A plain scalar in block context: this line up to a comment, then any following lines
  /// indented more than `parentIndent`, folded into one line as YAML does.
  private mutating func plainScalar(
    _ row: Int, _ col: Int, parentIndent: Int
  )
    throws(YAMLError) -> YAMLNode
  {
    let start = mark(row, col)
    var (value, comment) = try plainLine(row, col)
    self.row = row + 1
    while !comment {
      var next = self.row
      var empty = 0
      while next < lines.count, isWhitespaceOnly(next) {
        empty += 1
        next += 1
      }
      guard next < lines.count, !isDocumentMarker(next, .dash), !isDocumentMarker(next, .dot)
      else { break }
      let indent = try indent(next)
      guard indent > parentIndent, lines[next][indent] != .hash else { break }
      let (more, endsInComment) = try plainLine(next, indent)
      value += empty == 0 ? " " : String(repeating: "\n", count: empty)
      value += more
      comment = endsInComment
      self.row = next + 1
    }
    return .scalar(YAMLScalar(value: value, style: .plain, mark: start))
  }

  /// One line of a plain scalar, trimmed, and whether a comment ended it.
  private func plainLine(_ row: Int, _ col: Int) throws(YAMLError) -> (String, Bool) {
    let line = lines[row]
    var end = col
    var i = col
    while i < line.count {
      let byte = line[i]
      if byte == .hash, i > col, isSpace(line[i - 1]) { return (text(line[col..<end]), true) }
      if byte == .colon, isBlankOrEnd(row, i + 1) {
        throw error(
          "a ': ' inside a value; quote the value, or start a mapping on a new line",
          row, i)
      }
      if !isSpace(byte) { end = i + 1 }
      i += 1
    }
    return (text(line[col..<end]), false)
  }

  /// A literal (`|`) or folded (`>`) block scalar, with its chomping (`-`, `+`) and
  /// indentation indicators.
  private mutating func blockScalar(
    _ row: Int, _ col: Int, parentIndent: Int
  )
    throws(YAMLError) -> YAMLNode
  {
    enum Chomping { case clip, strip, keep }
    let line = lines[row]
    let start = mark(row, col)
    let literal = line[col] == .pipe
    var chomping = Chomping.clip
    var explicitIndent: Int?
    var i = col + 1
    indicators: while i < line.count {
      switch line[i] {
      case .plus: chomping = .keep
      case .dash: chomping = .strip
      case UInt8(ascii: "1")...UInt8(ascii: "9"): explicitIndent = Int(line[i] - UInt8(ascii: "0"))
      default: break indicators
      }
      i += 1
    }
    let rest = skipSpaces(row, i)
    if rest < line.count, line[rest] != .hash || rest == i {
      throw error("expected only indicators and a comment after '\(literal ? "|" : ">")'", row, i)
    }
    self.row = row + 1

    let base = max(parentIndent, 0)
    var indent = explicitIndent.map { base + $0 }
    if indent == nil {
      var next = self.row
      while next < lines.count, isWhitespaceOnly(next) { next += 1 }
      if next < lines.count { indent = leadingSpaces(next) }
    }
    var content: [[UInt8]] = []
    if let indent, indent > parentIndent {
      while self.row < lines.count {
        let line = lines[self.row]
        let spaces = leadingSpaces(self.row)
        if spaces == line.count || isWhitespaceOnly(self.row) {
          content.append(spaces > indent ? Array(line[indent...]) : [])
        } else if spaces >= indent, !(spaces == 0 && isDocumentMarker(self.row, .dash)) {
          content.append(Array(line[indent...]))
        } else {
          break
        }
        self.row += 1
      }
    }
    var trailing = 0
    while content.last?.isEmpty == true {
      content.removeLast()
      trailing += 1
    }
    var body = literal ? content.map { text($0[...]) }.joined(separator: "\n") : folded(content)
    switch chomping {
    case .strip: break
    case .clip: if !body.isEmpty { body += "\n" }
    case .keep: body += String(repeating: "\n", count: trailing + (body.isEmpty ? 0 : 1))
    }
    return .scalar(
      YAMLScalar(value: body, style: literal ? .literal : .folded, mark: start))
  }

  /// Folds a `>` scalar's lines: a line break between two lines of text becomes a space, an
  /// empty line a line break; more-indented lines keep their breaks.
  private func folded(_ lines: [[UInt8]]) -> String {
    var out = ""
    var previous: Bool?  // nil: no text yet; true: the last text line was more indented
    var empty = 0
    for line in lines {
      if line.isEmpty {
        empty += 1
        continue
      }
      let moreIndented = isSpace(line[0])
      switch previous {
      case nil: out += String(repeating: "\n", count: empty)
      case false? where !moreIndented:
        out += empty == 0 ? " " : String(repeating: "\n", count: empty)
      default: out += String(repeating: "\n", count: empty + 1)
      }
      out += text(line[...])
      previous = moreIndented
      empty = 0
    }
    return out
  }

  // MARK: Flow context

  private mutating func flowNode(_ position: inout Position) throws(YAMLError) -> YAMLNode {
    let line = lines[position.row]
    switch line[position.col] {
    case .leftBrace: return try flowCollection(&position, mapping: true)
    case .leftBracket: return try flowCollection(&position, mapping: false)
    case .doubleQuote, .singleQuote: return .scalar(try quoted(&position))
    case .asterisk: return try alias(&position)
    case .ampersand:
      let (name, end) = try name(position.row, position.col + 1)
      position.col = end
      try flowSpace(&position, opened: mark(position.row, end))
      let node = try flowNode(&position)
      anchors[name] = node
      return node
    case .exclamation:
      throw error(
        "tags (!) are not supported; every value is read from its text",
        position.row, position.col)
    case .question where isBlankOrEnd(position.row, position.col + 1):
      throw error("complex mapping keys (?) are not supported", position.row, position.col)
    case .comma, .rightBracket, .rightBrace, .colon:
      throw error("expected a value", position.row, position.col)
    default:
      return .scalar(try flowPlain(&position))
    }
  }

  /// A `{…}` mapping or `[…]` sequence, which may run over several lines. A `key: value` item
  /// of a sequence is a mapping of one pair, as YAML has it.
  private mutating func flowCollection(
    _ position: inout Position, mapping: Bool
  )
    throws(YAMLError) -> YAMLNode
  {
    let start = mark(position.row, position.col)
    let close: UInt8 = mapping ? .rightBrace : .rightBracket
    position.col += 1
    var pairs: [YAMLPair] = []
    var items: [YAMLNode] = []
    while true {
      try flowSpace(&position, opened: start)
      if lines[position.row][position.col] == close {
        position.col += 1
        return mapping ? .mapping(pairs, start) : .sequence(items, start)
      }
      let first = try flowNode(&position)
      try flowSpace(&position, opened: start)
      if lines[position.row][position.col] == .colon {
        position.col += 1
        try flowSpace(&position, opened: start)
        let byte = lines[position.row][position.col]
        let value: YAMLNode =
          byte == .comma || byte == close
          ? .scalar(YAMLScalar(value: "", style: .plain, mark: mark(position.row, position.col)))
          : try flowNode(&position)
        try flowSpace(&position, opened: start)
        if mapping {
          pairs.append(YAMLPair(key: first, value: value))
        } else {
          items.append(.mapping([YAMLPair(key: first, value: value)], first.mark))
        }
      } else if mapping {
        let empty = YAMLScalar(value: "", style: .plain, mark: mark(position.row, position.col))
        pairs.append(YAMLPair(key: first, value: .scalar(empty)))
      } else {
        items.append(first)
      }
      switch lines[position.row][position.col] {
      case .comma: position.col += 1
      case close: continue
      default:
        throw error("expected ',' or '\(mapping ? "}" : "]")'", position.row, position.col)
      }
    }
  }

  /// A plain scalar inside a flow collection: it ends at `,`, a bracket, `: `, or a comment.
  private func flowPlain(_ position: inout Position) throws(YAMLError) -> YAMLScalar {
    let line = lines[position.row]
    let start = position.col
    var end = start
    var i = start
    scan: while i < line.count {
      switch line[i] {
      case .comma, .leftBracket, .rightBracket, .leftBrace, .rightBrace:
        break scan
      case .colon:
        if i + 1 >= line.count || isSpace(line[i + 1]) || isFlowIndicator(line[i + 1]) {
          break scan
        }
      case .hash where i > start && isSpace(line[i - 1]):
        break scan
      default: break
      }
      if !isSpace(line[i]) { end = i + 1 }
      i += 1
    }
    position.col = i
    return YAMLScalar(
      value: text(line[start..<end]), style: .plain, mark: mark(position.row, start))
  }

  /// Skips spaces, comments and line breaks inside a flow collection.
  private func flowSpace(_ position: inout Position, opened: YAMLMark) throws(YAMLError) {
    while true {
      guard position.row < lines.count else {
        throw YAMLError(message: "this flow collection is never closed", mark: opened)
      }
      let line = lines[position.row]
      while position.col < line.count, isSpace(line[position.col]) { position.col += 1 }
      if position.col < line.count, line[position.col] != .hash { return }
      position.row += 1
      position.col = 0
    }
  }

  // MARK: Scalars in either context

  /// A single- or double-quoted scalar, which may run over several lines (folded as YAML
  /// folds them).
  private func quoted(_ position: inout Position) throws(YAMLError) -> YAMLScalar {
    let start = mark(position.row, position.col)
    let quote = lines[position.row][position.col]
    position.col += 1
    var out: [UInt8] = []
    var kept = 0  // out's length up to its last character that a line break does not trim
    while true {
      let line = lines[position.row]
      if position.col >= line.count {
        out.removeSubrange(kept...)
        position.row += 1
        var empty = 0
        while position.row < lines.count, isWhitespaceOnly(position.row) {
          empty += 1
          position.row += 1
        }
        guard position.row < lines.count else {
          throw YAMLError(message: "this quoted value is never closed", mark: start)
        }
        out += empty == 0 ? [.space] : [UInt8](repeating: .newline, count: empty)
        kept = out.count
        position.col = skipSpaces(position.row, 0)
        continue
      }
      let byte = line[position.col]
      if quote == .singleQuote {
        if byte == .singleQuote {
          if position.col + 1 < line.count, line[position.col + 1] == .singleQuote {
            out.append(.singleQuote)
            position.col += 2
            kept = out.count
            continue
          }
          position.col += 1
          break
        }
      } else if byte == .doubleQuote {
        position.col += 1
        break
      } else if byte == .backslash {
        if position.col + 1 >= line.count {
          // An escaped line break: the lines join with nothing between them.
          position.row += 1
          guard position.row < lines.count else {
            throw YAMLError(message: "this quoted value is never closed", mark: start)
          }
          position.col = skipSpaces(position.row, 0)
          kept = out.count
          continue
        }
        try escape(line, &position, into: &out)
        kept = out.count
        continue
      }
      out.append(byte)
      position.col += 1
      if !isSpace(byte) { kept = out.count }
    }
    return YAMLScalar(
      value: String(decoding: out, as: UTF8.self),
      style: quote == .singleQuote ? .singleQuoted : .doubleQuoted, mark: start)
  }

  private func escape(
    _ line: [UInt8], _ position: inout Position, into out: inout [UInt8]
  )
    throws(YAMLError)
  {
    let at = position.col
    let code = line[at + 1]
    position.col += 2
    let simple: [UInt8: UInt8] = [
      UInt8(ascii: "0"): 0, UInt8(ascii: "a"): 7, UInt8(ascii: "b"): 8, UInt8(ascii: "t"): 9,
      .tab: 9, UInt8(ascii: "n"): 10, UInt8(ascii: "v"): 11, UInt8(ascii: "f"): 12,
      UInt8(ascii: "r"): 13, UInt8(ascii: "e"): 27, .space: 32, .doubleQuote: 34,
      UInt8(ascii: "/"): 47, .backslash: 92,
    ]
    if let byte = simple[code] {
      out.append(byte)
      return
    }
    let scalar: UInt32
    switch code {
    case UInt8(ascii: "N"): scalar = 0x85
    case UInt8(ascii: "_"): scalar = 0xA0
    case UInt8(ascii: "L"): scalar = 0x2028
    case UInt8(ascii: "P"): scalar = 0x2029
    case UInt8(ascii: "x"), UInt8(ascii: "u"), UInt8(ascii: "U"):
      let digits = code == UInt8(ascii: "x") ? 2 : code == UInt8(ascii: "u") ? 4 : 8
      guard position.col + digits <= line.count,
        let value = UInt32(text(line[position.col..<position.col + digits]), radix: 16)
      else {
        throw error(
          "expected \(digits) hexadecimal digits after '\\\(Character(Unicode.Scalar(code)))'",
          position.row, at)
      }
      position.col += digits
      scalar = value
    default:
      throw error("unknown escape '\\\(Character(Unicode.Scalar(code)))'", position.row, at)
    }
    guard let unicode = Unicode.Scalar(scalar) else {
      throw error(
        "'\\\(Character(Unicode.Scalar(code)))' names no Unicode character", position.row, at)
    }
    out += Array(String(Character(unicode)).utf8)
  }

  private func alias(_ position: inout Position) throws(YAMLError) -> YAMLNode {
    let at = position
    let (name, end) = try name(position.row, position.col + 1)
    position.col = end
    guard let node = anchors[name] else {
      throw error("no anchor '&\(name)' before this alias", at.row, at.col)
    }
    return node
  }

  /// An anchor's or alias's name starting at `col`, and the index after it.
  private func name(_ row: Int, _ col: Int) throws(YAMLError) -> (String, Int) {
    let line = lines[row]
    var end = col
    while end < line.count, !isSpace(line[end]), !isFlowIndicator(line[end]) { end += 1 }
    guard end > col else { throw error("expected a name after '&' or '*'", row, col) }
    return (text(line[col..<end]), end)
  }

  // MARK: Lines

  /// After a value that ends mid-line: only spaces and a comment may follow it.
  private mutating func finishLine(_ position: Position) throws(YAMLError) {
    let col = skipSpaces(position.row, position.col)
    if col < lines[position.row].count, lines[position.row][col] != .hash || col == position.col {
      throw error("unexpected text after the value", position.row, col)
    }
    row = position.row + 1
  }

  private mutating func skipBlankLines() {
    while row < lines.count {
      let col = skipSpaces(row, 0)
      guard col >= lines[row].count || lines[row][col] == .hash else { return }
      row += 1
    }
  }

  /// The indentation of a line with content: its leading spaces. A tab there is an error, as
  /// YAML has it, since tab widths differ.
  private func indent(_ row: Int) throws(YAMLError) -> Int {
    let spaces = leadingSpaces(row)
    if spaces < lines[row].count, lines[row][spaces] == .tab {
      let content = skipSpaces(row, spaces)
      if content < lines[row].count, lines[row][content] != .hash {
        throw error("a tab in indentation; indent with spaces", row, spaces)
      }
    }
    return spaces
  }

  private func leadingSpaces(_ row: Int) -> Int {
    let line = lines[row]
    var count = 0
    while count < line.count, line[count] == .space { count += 1 }
    return count
  }

  private func isWhitespaceOnly(_ row: Int) -> Bool {
    lines[row].allSatisfy(isSpace)
  }

  private func isSequenceEntry(_ row: Int, _ col: Int) -> Bool {
    col < lines[row].count && lines[row][col] == .dash && isBlankOrEnd(row, col + 1)
  }

  private func isDocumentMarker(_ row: Int, _ byte: UInt8) -> Bool {
    let line = lines[row]
    return line.count >= 3 && line[0] == byte && line[1] == byte && line[2] == byte
      && (line.count == 3 || isSpace(line[3]))
  }

  private func isBlankOrEnd(_ row: Int, _ col: Int) -> Bool {
    col >= lines[row].count || isSpace(lines[row][col])
  }

  private func skipSpaces(_ row: Int, _ col: Int) -> Int {
    let line = lines[row]
    var col = col
    while col < line.count, isSpace(line[col]) { col += 1 }
    return col
  }

  private func closingQuote(_ line: [UInt8], from col: Int) -> Int? {
    let quote = line[col]
    var i = col + 1
    while i < line.count {
      if quote == .doubleQuote, line[i] == .backslash {
        i += 2
        continue
      }
      if line[i] == quote {
        if quote == .singleQuote, i + 1 < line.count, line[i + 1] == .singleQuote {
          i += 2
          continue
        }
        return i
      }
      i += 1
    }
    return nil
  }

  private func isSpace(_ byte: UInt8) -> Bool { byte == .space || byte == .tab }

  private func isFlowIndicator(_ byte: UInt8) -> Bool {
    byte == .comma || byte == .leftBracket || byte == .rightBracket || byte == .leftBrace
      || byte == .rightBrace
  }

  private func text(_ bytes: ArraySlice<UInt8>) -> String {
    String(decoding: bytes, as: UTF8.self)
  }

  /// A place for a message: columns count characters, not bytes.
  private func mark(_ row: Int, _ col: Int) -> YAMLMark {
    guard row < lines.count else { return YAMLMark(line: row + 1, column: 1) }
    let characters = lines[row].prefix(col).reduce(0) { $0 + ($1 & 0xC0 == 0x80 ? 0 : 1) }
    return YAMLMark(line: row + 1, column: characters + 1)
  }

  private func error(_ message: String, _ row: Int, _ col: Int) -> YAMLError {
    YAMLError(message: message, mark: mark(row, col))
  }
}

extension UInt8 {
  fileprivate static let tab = UInt8(ascii: "\t")
  fileprivate static let newline = UInt8(ascii: "\n")
  fileprivate static let carriageReturn = UInt8(ascii: "\r")
  fileprivate static let space = UInt8(ascii: " ")
  fileprivate static let exclamation = UInt8(ascii: "!")
  fileprivate static let doubleQuote = UInt8(ascii: "\"")
  fileprivate static let hash = UInt8(ascii: "#")
  fileprivate static let percent = UInt8(ascii: "%")
  fileprivate static let ampersand = UInt8(ascii: "&")
  fileprivate static let singleQuote = UInt8(ascii: "'")
  fileprivate static let asterisk = UInt8(ascii: "*")
  fileprivate static let plus = UInt8(ascii: "+")
  fileprivate static let comma = UInt8(ascii: ",")
  fileprivate static let dash = UInt8(ascii: "-")
  fileprivate static let dot = UInt8(ascii: ".")
  fileprivate static let colon = UInt8(ascii: ":")
  fileprivate static let greaterThan = UInt8(ascii: ">")
  fileprivate static let question = UInt8(ascii: "?")
  fileprivate static let at = UInt8(ascii: "@")
  fileprivate static let leftBracket = UInt8(ascii: "[")
  fileprivate static let backslash = UInt8(ascii: "\\")
  fileprivate static let rightBracket = UInt8(ascii: "]")
  fileprivate static let backtick = UInt8(ascii: "`")
  fileprivate static let leftBrace = UInt8(ascii: "{")
  fileprivate static let pipe = UInt8(ascii: "|")
  fileprivate static let rightBrace = UInt8(ascii: "}")
}
