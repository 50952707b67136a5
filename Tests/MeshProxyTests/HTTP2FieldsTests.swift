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

  /// A fault's words name the field and what is wrong with it.
  @Test func aFaultIsNamed() {
    #expect(malformed(Self.request + [("X-Up", "1")]) == "upper-case header name")
    #expect(malformed(Self.request + [("x y", "1")]) == "header name with byte 32")
    #expect(
      malformed(Self.request + [("x-v", "a\rb")]) == "header x-v with NUL, CR or LF in its value")
    #expect(
      malformed(Self.request + [("x-v", " a")]) == "header x-v with white space around its value")
  }

  /// `checkedValue` finds a field of a checked (lower-case) block by its exact name: the
  /// first of several, none for a name that is only a prefix or longer.
  @Test func checkedValueFindsAFieldByItsExactName() {
    let headers = HPACKHeaders([
      ("grpc-status", "0"), ("grpc-status-details-bin", "x"), ("grpc-message", "a"),
      ("grpc-message", "b"),
    ])
    #expect(headers.checkedValue("grpc-status") == "0")
    #expect(headers.checkedValue("grpc-message") == "a")
    #expect(headers.checkedValue("grpc-stat") == nil)
    #expect(headers.checkedValue("grpc-timeout") == nil)
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
    #expect(HTTP2Fields.contentLength(HPACKHeaders(Self.request + [("content-length", "3")])) == 3)
    #expect(HTTP2Fields.contentLength(HPACKHeaders([("content-length", "12")])) == 12)
    #expect(HTTP2Fields.contentLength(HPACKHeaders([("content-length", "12, 12")])) == 12)
    #expect(HTTP2Fields.contentLength(HPACKHeaders([("content-length", "12, 13")])) == -1)
    #expect(HTTP2Fields.contentLength(HPACKHeaders([("content-length", "-1")])) == -1)
    #expect(HTTP2Fields.contentLength(HPACKHeaders([("content-length", "x")])) == -1)
    #expect(HTTP2Fields.contentLength(HPACKHeaders([("content-length", "+1")])) == -1)
    #expect(HTTP2Fields.contentLength(HPACKHeaders([("content-length", "1,")])) == -1)
    let twice = HPACKHeaders([("content-length", "7"), ("content-length", "7")])
    #expect(HTTP2Fields.contentLength(twice) == 7)
    let disagreeing = HPACKHeaders([("content-length", "7"), ("content-length", "8")])
    #expect(HTTP2Fields.contentLength(disagreeing) == -1)
  }

  /// Every byte a name may hold, against RFC 9110's token characters (lower case only).
  @Test func everyNameByteIsJudgedByTheTokenRule() {
    let token = Set("abcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-.^_`|~".utf8)
    for byte in UInt8(0)...UInt8(127) {
      let name = "x" + String(UnicodeScalar(byte))
      let problem = HTTP2Fields.fieldProblem(name: name, value: "1")
      #expect((problem == nil) == token.contains(byte), "byte \(byte): \(problem ?? "fine")")
      // Long names are read eight bytes at a time: every place of a word, and the tail.
      for place in [0, 3, 7, 8, 13, 17] {
        let long = String(
          decoding: Array(repeating: UInt8(ascii: "a"), count: place) + [byte]
            + Array(repeating: UInt8(ascii: "z"), count: 17 - place), as: UTF8.self)
        let verdict = HTTP2Fields.fieldProblem(name: long, value: "1")
        let allowed = token.contains(byte) || (place == 0 && byte == UInt8(ascii: ":"))
        #expect((verdict == nil) == allowed, "byte \(byte) at \(place): \(verdict ?? "fine")")
      }
    }
    #expect(HTTP2Fields.fieldProblem(name: "x-trellis-peer-identity-9", value: "1") == nil)
  }

  /// Values are checked eight bytes at a time: NUL, CR or LF is found at any place of a long
  /// value, and every other byte, controls and bytes past ASCII included, is let through.
  @Test func aForbiddenByteIsFoundAnywhereInALongValue() {
    for forbidden in ["\u{0}", "\r", "\n"] {
      for place in 1..<40 {
        let value =
          String(repeating: "v", count: place) + forbidden + String(repeating: "w", count: 3)
        #expect(
          HTTP2Fields.fieldProblem(name: "x", value: value) != nil,
          "at \(place): \(value.debugDescription)")
      }
    }
    let allowed = (1...255).filter { $0 != 10 && $0 != 13 }.map { UInt8($0) }
    let value = String(decoding: [UInt8(ascii: "a")] + allowed + [UInt8(ascii: "z")], as: UTF8.self)
    #expect(HTTP2Fields.fieldProblem(name: "x", value: value) == nil)
  }

  @Test func onePassReadsContentLengthAndTheSidecarsOwnHeader() {
    let plain = HTTP2Fields.inspect(HPACKHeaders(Self.request), as: .request, strict: true)
    #expect(plain.problem == nil && plain.contentLength == nil && !plain.carriesPeerIdentity)
    let trailers = HPACKHeaders([("grpc-status", "0"), ("x-trellis-peer-identity", "spiffe://x")])
    #expect(HTTP2Fields.inspect(trailers, as: .trailers, strict: true).carriesPeerIdentity)
    let sized = HPACKHeaders(Self.request + [("content-length", "5")])
    #expect(HTTP2Fields.inspect(sized, as: .request, strict: true).contentLength == 5)
    let request = HTTP2Fields.inspect(HPACKHeaders(Self.request), as: .request, strict: true)
    #expect(request.path == "/a.B/C" && request.authority == "b")
    #expect(request.contentType == "application/grpc")
  }
}
