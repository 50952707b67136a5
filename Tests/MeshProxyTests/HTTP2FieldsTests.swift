import NIOHPACK
import Testing

@testable import MeshProxy

/// RFC 9113 §8.2–8.3, one rule per test: what makes a header block malformed.
@Suite struct HTTP2FieldsTests {
  static let request: [(String, String)] = [
    (":method", "POST"), (":scheme", "http"), (":path", "/a.B/C"), (":authority", "b"),
    ("content-type", "application/grpc"), ("te", "trailers"),
  ]

  func malformed(
    _ fields: [(String, String)], as block: HTTP2Fields.Block = .request, strict: Bool = true
  ) -> String? {
    HTTP2Fields.malformed(HPACKHeaders(fields), as: block, strict: strict)
  }

  @Test func aGRPCRequestIsWellFormed() {
    #expect(malformed(Self.request) == nil)
    #expect(malformed(Self.request.filter { $0.0 != ":authority" }) == nil)
  }

  @Test(arguments: [
    "x y", "x:y", "X-Upper", "x\u{7f}", "x\u{0}", "\u{e9}t\u{e9}", "x\"", "x(y)", "",
  ])
  func namesAreLowerCaseTokens(_ name: String) {
    #expect(malformed(Self.request + [(name, "1")]) != nil)
  }

  @Test func tokenPunctuationIsAllowedInNames() {
    #expect(malformed(Self.request + [("x-a_b.c!#$%&'*+^`|~9", "1")]) == nil)
  }

  @Test(arguments: ["a\rb", "a\nb", "a\u{0}b", " a", "a ", "\ta", "a\t"])
  func valuesHoldNoCRLFNULNorEdgeWhiteSpace(_ value: String) {
    #expect(malformed(Self.request + [("x-v", value)]) != nil)
  }

  @Test func whiteSpaceInsideAValueIsFine() {
    #expect(malformed(Self.request + [("x-v", "a b\tc")]) == nil)
  }

  @Test func anAppsAnswerMayEndInASpaceButNotCarryCRLF() {
    let trailers = [("grpc-status", "13"), ("grpc-message", "failed %09 ")]
    #expect(malformed(trailers, as: .trailers, strict: false) == nil)
    #expect(malformed(trailers, as: .trailers, strict: true) != nil)
    #expect(malformed([("grpc-message", "a\r\nb")], as: .trailers, strict: false) != nil)
  }

  @Test(arguments: ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"])
  func connectionSpecificHeadersAreMalformedEverywhere(_ name: String) {
    #expect(malformed(Self.request + [(name, "x")]) != nil)
    #expect(malformed([("grpc-status", "0"), (name, "x")], as: .trailers) != nil)
  }

  @Test func teIsOnlyTrailers() {
    #expect(malformed(Self.request.filter { $0.0 != "te" } + [("te", "gzip")]) != nil)
  }

  @Test func pseudoHeadersComeFirstAndOnlyWhereTheyBelong() {
    #expect(malformed([("x-a", "1")] + Self.request) != nil)
    #expect(malformed(Self.request + [(":method", "GET")]) != nil)
    #expect(malformed(Self.request + [(":status", "200")]) != nil)
    #expect(malformed(Self.request.filter { $0.0 != ":path" }) != nil)
    #expect(malformed(Self.request.map { $0.0 == ":path" ? ($0.0, "") : $0 }) != nil)
    #expect(malformed([("grpc-status", "0"), (":status", "200")], as: .trailers) != nil)
    #expect(malformed([(":status", "200"), ("grpc-status", "0")], as: .trailers) != nil)
    #expect(
      malformed([(":status", "200"), ("content-type", "application/grpc")], as: .response) == nil)
    #expect(malformed([("content-type", "application/grpc")], as: .response) != nil)
    #expect(malformed([(":status", "200"), (":path", "/a")], as: .response) != nil)
  }

  @Test func contentLengthIsOneNonNegativeNumber() {
    #expect(HTTP2Fields.contentLength(HPACKHeaders(Self.request)) == nil)
    #expect(HTTP2Fields.contentLength(HPACKHeaders([("content-length", "12")])) == 12)
    #expect(HTTP2Fields.contentLength(HPACKHeaders([("content-length", "12, 12")])) == 12)
    #expect(HTTP2Fields.contentLength(HPACKHeaders([("content-length", "12, 13")])) == -1)
    #expect(HTTP2Fields.contentLength(HPACKHeaders([("content-length", "-1")])) == -1)
    #expect(HTTP2Fields.contentLength(HPACKHeaders([("content-length", "x")])) == -1)
  }
}
