import Foundation
import TestSupport
import Testing

@testable import MeshConfig

/// The config files' YAML reader: the forms config files use, each mistake refused with its
/// place, and a corpus read the same as PyYAML (an independent implementation) reads it.
@Suite struct YAMLParserTests {
  func parse(_ text: String) throws -> YAMLNode? { try YAMLParser.parse(text) }

  func failure(_ text: String) -> YAMLError? {
    do {
      _ = try YAMLParser.parse(text)
      return nil
    } catch {
      return error
    }
  }

  @Test func blockAndFlowCollectionsNest() throws {
    let node = try #require(
      try parse(
        """
        # a comment
        services:
          users:
            endpoints:
              - address: 127.0.0.1:7001   # trailing comment
                labels: {version: v1, zone: "a"}
              - {address: 127.0.0.1:7002}
            methods: [a/B, 'c/D']
        routes:
        - service: users
          retries: {attempts: 4, on: [unavailable, RESOURCE_EXHAUSTED]}
        """))
    #expect(
      render(node)
        == #"{"routes":[{"retries":{"attempts":"4","on":["unavailable","RESOURCE_EXHAUSTED"]},"#
        + #""service":"users"}],"services":{"users":{"endpoints":[{"address":"127.0.0.1:7001","#
        + #""labels":{"version":"v1","zone":"a"}},{"address":"127.0.0.1:7002"}],"#
        + #""methods":["a/B","c/D"]}}}"#)
  }

  @Test func scalarsKeepTheirText() throws {
    let node = try #require(
      try parse(
        #"""
        plain: a plain value with spaces
        folded plain: first
          second
        single: 'it''s # not a comment'
        double: "tab\tnewline\nquote\" é\u00e9 \x41"
        spread: "one
          two"
        literal: |
          line one
            indented
          line three
        strip: |-
          no newline
        keep: >+
          folded
          together

        next: ~
        empty:
        nul: null
        quoted-null: "null"
        """#))
    guard case .mapping(let pairs, _) = node else {
      Issue.record("expected a mapping")
      return
    }
    let values = Dictionary(
      uniqueKeysWithValues: pairs.map { pair -> (String, YAMLScalar) in
        guard case .scalar(let key) = pair.key, case .scalar(let value) = pair.value else {
          fatalError("scalars only")
        }
        return (key.value, value)
      })
    #expect(values["plain"]?.value == "a plain value with spaces")
    #expect(values["folded plain"]?.value == "first second")
    #expect(values["single"]?.value == "it's # not a comment")
    #expect(values["double"]?.value == "tab\tnewline\nquote\" éé A")
    #expect(values["spread"]?.value == "one two")
    #expect(values["literal"]?.value == "line one\n  indented\nline three\n")
    #expect(values["strip"]?.value == "no newline")
    #expect(values["keep"]?.value == "folded together\n\n")
    #expect(values["next"]?.isNull == true)
    #expect(values["empty"]?.isNull == true)
    #expect(values["nul"]?.isNull == true)
    #expect(values["quoted-null"]?.isNull == false)
  }

  @Test func anchorsAndAliasesShareANode() throws {
    let node = try #require(
      try parse(
        """
        base: &policy {attempts: 2}
        users: *policy
        list: &items
          - a
          - b
        again: *items
        """))
    #expect(
      render(node)
        == #"{"again":["a","b"],"base":{"attempts":"2"},"list":["a","b"],"users":{"attempts":"2"}}"#
    )
  }

  @Test func marksCountLinesAndColumnsFromOne() throws {
    let node = try #require(try parse("a:\n  b: [x, 'yé', z]\n"))
    guard case .mapping(let outer, let outerMark) = node,
      case .mapping(let inner, _) = outer[0].value,
      case .sequence(let items, let listMark) = inner[0].value
    else {
      Issue.record("unexpected shape")
      return
    }
    #expect(outerMark == YAMLMark(line: 1, column: 1))
    #expect(inner[0].key.mark == YAMLMark(line: 2, column: 3))
    #expect(listMark == YAMLMark(line: 2, column: 6))
    #expect(items.map(\.mark.column) == [7, 10, 16])
  }

  @Test func documentMarkersLineEndingsAndAByteOrderMark() throws {
    let node = try #require(try parse("\u{FEFF}---\r\nkey: value\r\nlist:\r\n- 1\r\n...\r\n"))
    #expect(render(node) == #"{"key":"value","list":["1"]}"#)
    #expect(try parse("") == nil)
    #expect(try parse("# only a comment\n") == nil)
  }

  /// (document, line, column, part of the message)
  static let mistakes: [(String, Int, Int, String)] = [
    ("a:\n\tb: 1\n", 2, 1, "a tab in indentation"),
    ("a: {b: 1\n", 1, 4, "never closed"),
    ("a: \"open\n", 1, 4, "never closed"),
    ("a: b: c\n", 1, 5, "a ': ' inside a value"),
    ("a:\n  b: 1\n   c: 2\n", 3, 5, "a ': ' inside a value"),
    ("a:\n  b:\n    c: 1\n   d: 2\n", 4, 4, "indented more than the keys"),
    ("a: 1\n---\nb: 2\n", 2, 1, "a second document"),
    ("a: !!str 1\n", 1, 4, "tags (!) are not supported"),
    ("a: *nowhere\n", 1, 4, "no anchor '&nowhere'"),
    ("? complex\n: key\n", 1, 1, "complex mapping keys"),
    ("a: - b\n", 1, 4, "a list can not start after a key"),
    ("%YAML 1.2\n---\na: 1\n", 1, 1, "directives"),
    ("a: [1, 2\nb: 3\n", 2, 1, "expected ',' or ']'"),
    ("a: \"\\q\"\n", 1, 5, "unknown escape"),
    ("a: 1\n- b\n", 2, 1, "a list item where a key"),
    ("a: [1] x\n", 1, 8, "unexpected text after the value"),
  ]

  @Test(arguments: mistakes)
  func mistakesAreLocated(_ mistake: (String, Int, Int, String)) throws {
    let (text, line, column, message) = mistake
    let error = try #require(failure(text), "\(text) was accepted")
    #expect(error.mark == YAMLMark(line: line, column: column), "\(error)")
    #expect(error.message.contains(message), "\(error)")
  }

  @Test func aConfigErrorCarriesTheYAMLErrorsPlace() {
    #expect(throws: ConfigError.self) { try MeshConfig(yaml: "services: {users: [1}\n") }
    do {
      _ = try MeshConfig(yaml: "services:\n  users: {endpoints: [1}\n", file: "m.yaml")
    } catch {
      #expect("\(error)".hasPrefix("m.yaml:2:"), "\(error)")
    }
  }

  /// PyYAML's BaseLoader resolves no types either, so both readers must give the same tree of
  /// strings for every document of the corpus.
  @Test func aCorpusReadsAsPyYAMLReadsIt() throws {
    let corpus = [
      "a: 1\nb: [x, y, {z: 1}]\n",
      "- a\n- - b\n  - c\n- d: 1\n  e: 2\n",
      "key:\n- one\n- two\nother: three\n",
      "m: {a: 1, b: [2, 3], c: {d: e}}\n",
      "s: 'single '' quote'\nd: \"esc \\\" \\\\ \\t\"\n",
      "multi: this is\n  folded over\n\n  lines\n",
      "lit: |\n  a\n   b\n\n  c\nfold: >\n  a\n  b\n\n  c\n   d\n  e\nafter: 1\n",
      "chomp: |+\n  a\n\nstrip: >-\n  b\n  c\nend: x\n",
      "url: http://example.com:8080/path\nhost: 127.0.0.1:7001\ntime: 12:30\n",
      "empty:\nnull: ~\nlist: []\nmap: {}\n",
      "'quoted key': v\n\"double key\": w\n",
      "a: &x [1, 2]\nb: *x\nc: &y\n  k: v\nd: *y\n",
      "flow: [a, b,\n  c, d]\nmap: {a: 1,\n  b: 2}\n",
      "hash: a#b\ncomment: a #b\n",
      "list:\n  - name: x\n    value: 1\n  - name: y\n",
      "---\ndoc: yes\n...\n",
      "spaces:   padded   \n",
      "- [a, b]\n- {c: d}\n- \"e\"\n",
      "deep:\n  deeper:\n    deepest:\n      - x\n",
      "dq: \"line one\n  line two\"\nsq: 'a\n\n  b'\n",
      "seq in flow: [a: 1, b]\n",
    ]
    let directory = try makeTemporaryDirectory("yaml-corpus")
    defer { try? FileManager.default.removeItem(at: directory) }
    var paths: [String] = []
    for (index, document) in corpus.enumerated() {
      let path = directory.appendingPathComponent("\(index).yaml").path
      try Data(document.utf8).write(to: URL(fileURLWithPath: path))
      paths.append(path)
    }
    let script = """
      import json, sys, yaml
      for path in sys.argv[1:]:
          with open(path, encoding="utf-8") as f:
              value = yaml.load(f, Loader=yaml.BaseLoader)
          print(json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":")))
      """
    let result = try run("python3", ["-c", script] + paths)
    #expect(result.status == 0, "\(result.stderr)")
    let expected = result.stdout.split(separator: "\n", omittingEmptySubsequences: false)
    for (index, document) in corpus.enumerated() {
      let ours = try parse(document).map(render) ?? "null"
      #expect(ours == String(expected[index]), "document \(index): \(document)")
    }
  }

  /// A node as compact JSON with sorted keys, every scalar a string — PyYAML's BaseLoader's
  /// shape, as Python's json.dumps writes it.
  func render(_ node: YAMLNode) -> String {
    switch node {
    case .scalar(let scalar):
      return quote(scalar.value)
    case .sequence(let items, _):
      return "[" + items.map(render).joined(separator: ",") + "]"
    case .mapping(let pairs, _):
      let entries = pairs.map { pair -> (String, String) in
        guard case .scalar(let key) = pair.key else { return (render(pair.key), "") }
        return (key.value, render(pair.value))
      }
      return "{"
        + entries.sorted { $0.0 < $1.0 }.map { "\(quote($0.0)):\($0.1)" }.joined(
          separator: ",") + "}"
    }
  }

  func quote(_ text: String) -> String {
    var out = "\""
    for scalar in text.unicodeScalars {
      switch scalar {
      case "\"": out += "\\\""
      case "\\": out += "\\\\"
      case "\n": out += "\\n"
      case "\t": out += "\\t"
      case "\r": out += "\\r"
      case _ where scalar.value < 0x20:
        let hex = String(scalar.value, radix: 16)
        out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
      default: out.unicodeScalars.append(scalar)
      }
    }
    return out + "\""
  }
}
