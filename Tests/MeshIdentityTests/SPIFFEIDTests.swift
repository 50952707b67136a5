import MeshIdentity
import Testing

/// SPIFFE IDs by the specification's rules.
@Suite struct SPIFFEIDTests {
  @Test(arguments: [
    "spiffe://trellis.local/svc/users", "spiffe://example.org", "spiffe://a-b_c.d/x/Y.z-_/0",
    "spiffe://trellis.local/operator/admin",
  ])
  func acceptsValidIDs(_ text: String) throws {
    #expect(try SPIFFEID(parsing: text).description == text)
  }

  @Test(arguments: [
    ("http://trellis.local/svc/a", "must start with spiffe://"),
    ("SPIFFE://trellis.local/svc/a", "must start with spiffe://"),
    ("spiffe:///svc/a", "has no trust domain"),
    ("spiffe://Trellis.local/svc/a", "upper case in its trust domain"),
    ("spiffe://trellis.local:8443/svc/a", "has a port"),
    ("spiffe://user@trellis.local/svc/a", "has user info"),
    ("spiffe://trellis.local/", "trailing slash"),
    ("spiffe://trellis.local/svc/", "empty path segment or a trailing slash"),
    ("spiffe://trellis.local/svc//a", "empty path segment"),
    ("spiffe://trellis.local/svc/../a", "'.' or '..' path segment"),
    ("spiffe://trellis.local/svc/a?x=1", "query or fragment"),
    ("spiffe://trellis.local/svc/a#f", "query or fragment"),
    ("spiffe://trellis.local/svc/a%20b", "character other than"),
  ])
  func refusesInvalidIDs(_ text: String, _ problem: String) {
    #expect {
      try SPIFFEID(parsing: text)
    } throws: { error in
      "\(error)".contains(problem)
    }
  }

  @Test func refusesOverlongIDs() {
    let long = "spiffe://trellis.local/" + String(repeating: "a", count: 2100)
    #expect(throws: SPIFFEIDError.self) { try SPIFFEID(parsing: long) }
  }

  @Test func workloadAndOperatorIDs() throws {
    let users = try SPIFFEID.workload("users")
    #expect(users.description == "spiffe://trellis.local/svc/users")
    #expect(users.serviceName == "users")
    #expect(try SPIFFEID.operator("admin").serviceName == nil)
  }
}
