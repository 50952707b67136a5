import Testing

@testable import MeshProxy

/// The request checks and the status encoding the sidecar applies itself.
@Suite struct PathAndStatusTests {
  @Test(arguments: ["/shop.v1.UserService/GetUser", "/Svc/M", "/a.b_c.D9/Method_2"])
  func acceptsGRPCPaths(_ path: String) {
    #expect(isGRPCPath(path))
  }

  @Test(arguments: [
    "", "/", "//", "/Svc", "/Svc/", "Svc/M", "/Svc//M", "/Svc/M/", "/Svc/M/x", "/./M",
    "/Svc/../M", "/Svc/%4D", "/Svc/M?x=1", "/Svc/M#f", "/Svc/M ", "/.Svc/M", "/Svc./M",
  ])
  func refusesEverythingElse(_ path: String) {
    #expect(!isGRPCPath(path))
  }

  @Test func percentEncodesStatusMessagesAsGRPCDoes() {
    #expect(percentEncodeGRPCMessage("no route to 'x'") == "no route to 'x'")
    #expect(percentEncodeGRPCMessage("100%") == "100%25")
    #expect(percentEncodeGRPCMessage("ü\n") == "%C3%BC%0A")
  }
}
