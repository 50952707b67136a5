import Foundation
import MeshTranscoding
import TestSupport
import Testing

/// The dynamic codec against independent implementations: Python's protobuf (json_format and
/// its wire codec), Debian's `protoc --decode` and protobuf-c.
@Suite struct InteropTests {
  static let inputs = repositoryRoot.appendingPathComponent("Tests/MeshTranscodingTests/Inputs")

  struct Case {
    let name: String
    let type: String
    let input: JSONValue
  }

  /// Compiles the corpus protos with protoc into a descriptor set.
  static func corpusPool(in directory: URL) throws -> (DescriptorPool, URL) {
    let protoset = directory.appendingPathComponent("corpus.protoset")
    let result = try run(
      "protoc",
      [
        "-I", inputs.path, "-I", "/usr/include", "--include_imports",
        "--descriptor_set_out=\(protoset.path)", "corpus.proto", "wellknown.proto",
      ])
    #expect(result.status == 0, "protoc failed: \(result.stderr)")
    let pool = try DescriptorPool(fileDescriptorSet: Array(try Data(contentsOf: protoset)))
    return (pool, protoset)
  }

  static func cases() throws -> [Case] {
    let text = try String(contentsOf: inputs.appendingPathComponent("cases.jsonl"), encoding: .utf8)
    return try JSONParser.parseStream(text).map { value in
      guard case .object(let members) = value,
        case .string(let name)? = members.first(where: { $0.key == "name" })?.value,
        case .string(let type)? = members.first(where: { $0.key == "type" })?.value,
        let input = members.first(where: { $0.key == "json" })?.value
      else { throw HarnessError("malformed case \(value)") }
      return Case(name: name, type: type, input: input)
    }
  }

  @Test func agreesWithPythonJSONFormatBothWays() throws {
    let directory = try makeTemporaryDirectory()
    let (pool, protoset) = try Self.corpusPool(in: directory)
    let cases = try Self.cases()
    #expect(cases.count >= 20)

    var ours: [String: DynamicMessage] = [:]
    var lines: [String] = []
    for testCase in cases {
      let descriptor = try #require(pool.message(named: testCase.type))
      let message = try DynamicMessage(descriptor: descriptor, json: testCase.input, pool: pool)
      ours[testCase.name] = message
      let line = JSONValue.object([
        ("name", .string(testCase.name)), ("type", .string(testCase.type)),
        ("input", .string(testCase.input.serialized(pretty: false))),
        ("swift_bin", .string(Data(message.serializedBytes()).base64EncodedString())),
        ("swift_json", .string(try message.jsonString(pool: pool))),
      ])
      lines.append(line.serialized(pretty: false))
    }
    let casesFile = directory.appendingPathComponent("cases.jsonl")
    let answersFile = directory.appendingPathComponent("answers.jsonl")
    try lines.joined(separator: "\n").write(to: casesFile, atomically: true, encoding: .utf8)
    let result = try run(
      "python3",
      [
        Self.inputs.appendingPathComponent("json_format_check.py").path, protoset.path,
        casesFile.path, answersFile.path,
      ])
    #expect(result.status == 0, "Python disagrees:\n\(result.stdout)\(result.stderr)")

    // The other direction: what Python made, read by Trellis, is the same message; and
    // protoc reads Trellis' bytes exactly as it reads Python's.
    let answers = try JSONParser.parseStream(String(contentsOf: answersFile, encoding: .utf8))
    #expect(answers.count == cases.count)
    for (testCase, answer) in zip(cases, answers) {
      guard case .object(let members) = answer,
        case .string(let bin)? = members.first(where: { $0.key == "python_bin" })?.value,
        case .string(let json)? = members.first(where: { $0.key == "python_json" })?.value
      else { throw HarnessError("malformed answer \(answer)") }
      let descriptor = try #require(pool.message(named: testCase.type))
      let expected = try #require(ours[testCase.name]).serializedBytes()
      let pythonBytes = try #require(Data(base64Encoded: bin))
      // Bytes, not messages, are compared: NaN is not equal to itself.
      let fromBytes = try DynamicMessage(
        descriptor: descriptor, serializedBytes: Array(pythonBytes))
      #expect(
        fromBytes.serializedBytes() == expected, "\(testCase.name): Python's bytes read differently"
      )
      let fromJSON = try DynamicMessage(descriptor: descriptor, jsonString: json, pool: pool)
      #expect(
        fromJSON.serializedBytes() == expected, "\(testCase.name): Python's JSON reads differently")

      let decode = [
        "-I", Self.inputs.path, "-I", "/usr/include", "--decode=\(testCase.type)",
        "wellknown.proto",
      ]
      let fromTrellis = try run("protoc", decode, stdin: Data(expected))
      let fromPython = try run("protoc", decode, stdin: pythonBytes)
      #expect(
        fromTrellis.status == 0, "\(testCase.name): protoc cannot decode: \(fromTrellis.stderr)")
      #expect(
        fromTrellis.stdout == fromPython.stdout,
        """
        \(testCase.name): protoc --decode \
        differs:\n\(fromTrellis.stdout)\nPython's:\n\(fromPython.stdout)
        """
      )
    }
  }
}
