import Foundation
import MeshTranscoding
import TestSupport
import Testing

/// protobuf-c, an independent C implementation, decodes what the dynamic codec encodes.
@Suite struct ProtobufCTests {
  /// The values `Inputs/protobuf-c/check_scalars.c` expects, field for field.
  static let message = """
    {"fDouble": 2.5, "fFloat": -1.25, "fInt64": "-9223372036854775808",
     "fUint64": "18446744073709551615", "fInt32": -42, "fFixed64": "1234567890123",
     "fFixed32": 4294967295, "fBool": true, "fString": "héllo", "fBytes": "AAEC/w==",
     "fUint32": 7, "fSfixed32": -5, "fSfixed64": "-6", "fSint32": -7, "fSint64": "-8",
     "color": "COLOR_NEGATIVE", "nested": {"label": "n", "weight": 3, "children": [{"label": "c"}]},
     "rInt32": [1, -1, 300], "rSint64": ["-2", "2"], "rDouble": [0.5], "rString": ["a", ""],
     "rBytes": ["AQ=="], "rColor": ["COLOR_RED", "COLOR_GREEN"],
     "rNested": [{"weight": 1}, {"weight": 2}], "rUnpacked": [5, 6], "rBool": [true, false],
     "rFixed64": ["9"], "mStringInt32": {"a": 1, "b": -2}, "mInt64String": {"-5": "minus"},
     "mBoolNested": {"true": {"label": "t"}}, "mUint32Color": {"4": "COLOR_RED"},
     "mSint32Bytes": {"-1": "/w=="}, "oNested": {"label": "chosen"}, "renamed": 99}
    """

  @Test func protobufCDecodesEveryField() throws {
    let inputs = InteropTests.inputs
    let directory = try makeTemporaryDirectory()
    let (pool, _) = try InteropTests.corpusPool(in: directory)
    let descriptor = try #require(pool.message(named: "trellis.corpus.Scalars"))
    let encoded = try DynamicMessage(descriptor: descriptor, jsonString: Self.message, pool: pool)
      .serializedBytes()

    let generate = try run(
      "protoc-c", ["-I", inputs.path, "--c_out=\(directory.path)", "corpus.proto"])
    #expect(generate.status == 0, "protoc-c failed: \(generate.stderr)")
    let checker = directory.appendingPathComponent("check_scalars").path
    let compile = try run(
      "gcc",
      [
        "-std=c99", "-Wall", "-I", directory.path,
        inputs.appendingPathComponent("protobuf-c/check_scalars.c").path,
        directory.appendingPathComponent("corpus.pb-c.c").path, "-lprotobuf-c", "-o", checker,
      ])
    #expect(compile.status == 0, "cannot build the protobuf-c checker: \(compile.stderr)")

    let result = try run(checker, [], stdin: Data(encoded))
    #expect(result.status == 0, "protobuf-c disagrees:\n\(result.stderr)")
    #expect(result.stdout.contains("every field matches"))
  }
}
