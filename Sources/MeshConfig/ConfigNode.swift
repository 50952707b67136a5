/// A mistake in a configuration file, located: the file, the line and column, the field's path
/// and what is wrong with it — `mesh.yaml:12:9: services.users.endpoints[0].address: ...`.
public struct ConfigError: Error, CustomStringConvertible, Equatable, Sendable {
  public var file: String
  public var line: Int?
  public var column: Int?
  public var field: String
  public var message: String

  public init(file: String, line: Int?, column: Int?, field: String, message: String) {
    self.file = file
    self.line = line
    self.column = column
    self.field = field
    self.message = message
  }

  public var description: String {
    var location = file
    if let line { location += ":\(line)" }
    if let column { location += ":\(column)" }
    return field.isEmpty ? "\(location): \(message)" : "\(location): \(field): \(message)"
  }
}

/// A YAML node being read into a typed value, carrying where it is (file, line, field path)
/// so that every mistake can be reported precisely. Mappings are strict: a key the schema does
/// not know is an error, so a misspelt field never goes silently unused.
struct ConfigNode {
  let node: YAMLNode?
  let file: String
  let path: String
  /// Where the enclosing mapping is, for a missing key.
  let parentMark: YAMLMark?

  static func parse(_ text: String, file: String) throws(ConfigError) -> ConfigNode {
    do {
      let node = try YAMLParser.parse(text)
      return ConfigNode(node: node, file: file, path: "", parentMark: nil)
    } catch {
      throw ConfigError(
        file: file, line: error.mark.line, column: error.mark.column, field: "",
        message: error.message)
    }
  }

  var mark: YAMLMark? { node?.mark ?? parentMark }

  func error(_ message: String) -> ConfigError {
    ConfigError(file: file, line: mark?.line, column: mark?.column, field: path, message: message)
  }

  var isPresent: Bool {
    guard let node else { return false }
    if case .scalar(let scalar) = node, scalar.isNull { return false }
    return true
  }

  private func child(_ name: String, _ node: YAMLNode?) -> ConfigNode {
    let childPath = path.isEmpty ? name : "\(path).\(name)"
    return ConfigNode(node: node, file: file, path: childPath, parentMark: mark)
  }

  /// The entries of a mapping, checked against `allowed` keys (nil: any key).
  func mapping(allowed: Set<String>? = nil) throws -> [(key: String, value: ConfigNode)] {
    guard isPresent else { return [] }
    guard case .mapping(let pairs, _)? = node else { throw error("expected a mapping") }
    var entries: [(String, ConfigNode)] = []
    var seen: Set<String> = []
    for pair in pairs {
      let (key, value) = (pair.key, pair.value)
      guard case .scalar(let scalar) = key else {
        throw ConfigNode(node: key, file: file, path: path, parentMark: mark).error(
          "keys must be plain strings")
      }
      let keyNode = ConfigNode(node: key, file: file, path: path, parentMark: mark)
      if let allowed, !allowed.contains(scalar.value) {
        throw keyNode.child(scalar.value, key).error(
          "unknown field; expected one of \(allowed.sorted().joined(separator: ", "))")
      }
      guard seen.insert(scalar.value).inserted else {
        throw keyNode.child(scalar.value, key).error("given twice")
      }
      entries.append((scalar.value, child(scalar.value, value)))
    }
    return entries
  }

  /// A mapping's fields by name, every key checked against `allowed`.
  func fields(_ allowed: Set<String>) throws -> Fields {
    let entries = try mapping(allowed: allowed)
    var values: [String: ConfigNode] = [:]
    for (key, value) in entries { values[key] = value }
    return Fields(values: values, parent: self)
  }

  struct Fields {
    let values: [String: ConfigNode]
    let parent: ConfigNode

    subscript(_ name: String) -> ConfigNode {
      values[name] ?? parent.child(name, nil)
    }
  }

  func sequence() throws -> [ConfigNode] {
    guard isPresent else { return [] }
    guard case .sequence(let sequence, _)? = node else { throw error("expected a list") }
    return sequence.enumerated().map { index, element in
      ConfigNode(node: element, file: file, path: "\(path)[\(index)]", parentMark: mark)
    }
  }

  /// A list of strings; a single string is accepted as a list of one.
  func strings() throws -> [String] {
    if case .scalar? = node, isPresent { return [try string()] }
    return try sequence().map { try $0.string() }
  }

  func string() throws -> String {
    guard isPresent else { throw error("required") }
    guard case .scalar(let scalar)? = node else { throw error("expected a string") }
    return scalar.value
  }

  func optionalString() throws -> String? {
    isPresent ? try string() : nil
  }

  /// A duration written as a number and a unit: `250ms`, `10s`, `5m`, `1h`. Zero is refused.
  func duration() throws -> Duration? {
    guard isPresent else { return nil }
    let text = try string()
    guard let value = parseDuration(text) else {
      throw error("expected a duration such as 250ms, 10s, 5m or 1h, got '\(text)'")
    }
    return value
  }

  func int(in range: ClosedRange<Int>) throws -> Int? {
    guard isPresent else { return nil }
    guard let value = Int(try string()) else { throw error("expected a whole number") }
    guard range.contains(value) else {
      throw error("\(value) is out of range \(range.lowerBound)...\(range.upperBound)")
    }
    return value
  }
}

/// A positive duration written as a number and a unit — `250ms`, `10s`, `5m`, `1h`, `7d` — as
/// config files and command lines take them; nil if `text` is not one.
public func parseDuration(_ text: String) -> Duration? {
  let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600), ("d", 86_400)]
  for (unit, seconds) in units where text.hasSuffix(unit) {
    let number = text.dropLast(unit.count)
    if let value = Double(number), value > 0, !number.hasSuffix("m") {
      return .milliseconds(Int64((value * seconds * 1000).rounded()))
    }
  }
  return nil
}

extension Duration {
  /// The duration in seconds, as a TimeInterval.
  public var timeInterval: Double {
    Double(components.seconds) + Double(components.attoseconds) / 1e18
  }
}
