import Foundation
import TestSupport
import Testing

/// The control plane as an operator meets it: `meshctl certs init`, then `control-plane`, then
/// join tokens, certificates signed over the join listener (checked with `openssl verify`),
/// and the mesh config applied, versioned and rolled back — every refusal named.
@Suite(.serialized) final class ControlPlaneTests {
  let mesh: MeshFixture
  let data: String
  var plane: ServiceProcess
  var api: String { plane.address }
  var join: String

  init() throws {
    mesh = try MeshFixture("control-plane", services: ["users"])
    data = mesh.directory.appendingPathComponent("data").path
    plane = try Self.start(certs: mesh.certs, data: data)
    join = try logField(plane.log, "join_address")
  }

  deinit { plane.stop() }

  static func start(certs: String, data: String) throws -> ServiceProcess {
    try ServiceProcess(
      binary("control-plane"),
      [
        "--listen", "127.0.0.1:0", "--join", "127.0.0.1:0", "--certs", certs, "--data", data,
        "--leaf-lifetime", "1h",
      ])
  }

  /// `meshctl` against this control plane, as the operator (or with another identity's
  /// folder as `certs`).
  func meshctl(_ arguments: [String], certs: String? = nil) throws -> ProcessResult {
    try run(
      binary("meshctl"),
      arguments + ["--control-plane", api, "--certs", certs ?? mesh.certs])
  }

  func request(_ tokenFile: String, name: String, csr: String? = nil) throws -> ProcessResult {
    try run(
      binary("meshctl"),
      [
        "certs", "request", "--token-file", tokenFile, "--join", join, "--bundle",
        "\(mesh.certs)/bundle.pem", "--out", mesh.directory.path, "--name", name,
      ] + (csr.map { ["--csr", $0] } ?? []))
  }

  /// CSRs made by openssl, as another party would: one for the token's own identity is
  /// signed; one asking for another service, one over an RSA key and one that is not a CSR
  /// are refused with the reason, and each refusal spends no token.
  @Test func aCSRIsCheckedBeforeItIsSigned() throws {
    let directory = mesh.directory.path
    func token(_ name: String) throws -> String {
      let file = "\(directory)/\(name).token"
      let created = try meshctl(["tokens", "create", "--service", "orders", "--out", file])
      #expect(created.status == 0, "\(created.stderr)")
      return file
    }
    func openssl(_ arguments: [String]) throws {
      let result = try run("openssl", arguments)
      #expect(result.status == 0, "\(result.stderr)")
    }
    try openssl([
      "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "\(directory)/ec.pem",
    ])
    try openssl([
      "req", "-new", "-key", "\(directory)/ec.pem", "-subj", "/O=trellis.local", "-addext",
      "subjectAltName=URI:spiffe://trellis.local/svc/payments", "-out", "\(directory)/other.csr",
    ])
    try openssl([
      "req", "-new", "-key", "\(directory)/ec.pem", "-subj", "/O=trellis.local", "-addext",
      "subjectAltName=URI:spiffe://trellis.local/svc/orders", "-out", "\(directory)/own.csr",
    ])
    try openssl([
      "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "\(directory)/rsa.pem", "-subj",
      "/O=trellis.local", "-out", "\(directory)/rsa.csr",
    ])
    let garbage = try mesh.write(
      "garbage.csr",
      "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")

    let tokenFile = try token("csr")
    var result = try request(tokenFile, name: "x", csr: "\(directory)/other.csr")
    #expect(
      result.stderr.contains(
        """
        PERMISSION_DENIED: the CSR asks for spiffe://trellis.local/svc/payments, but the join \
        token is for spiffe://trellis.local/svc/orders
        """
      ), "\(result.stderr)")
    result = try request(tokenFile, name: "x", csr: "\(directory)/rsa.csr")
    #expect(
      result.stderr.contains(
        "INVALID_ARGUMENT: the certificate signing request's key is not ECDSA P-256"),
      "\(result.stderr)")
    result = try request(tokenFile, name: "x", csr: garbage)
    #expect(
      result.stderr.contains("INVALID_ARGUMENT: the CSR is not a PEM certificate request"),
      "\(result.stderr)")
    // None of those spent the token.
    result = try request(tokenFile, name: "own", csr: "\(directory)/own.csr")
    #expect(result.status == 0, "\(result.stderr)")
    #expect(result.stdout.contains("issued spiffe://trellis.local/svc/orders"), "\(result.stdout)")
    #expect(!FileManager.default.fileExists(atPath: "\(directory)/own-key.pem"))
    let verified = try run(
      "openssl",
      ["x509", "-in", "\(directory)/own.pem", "-noout", "-pubkey"])
    let key = try run("openssl", ["ec", "-in", "\(directory)/ec.pem", "-pubout"])
    #expect(verified.stdout == key.stdout, "the certificate is for the CSR's key")
  }

  /// On SQLite there is one control plane: it lists itself, leading.
  @Test func theOneControlPlaneOnSQLiteListsItself() throws {
    var listed = try meshctl(["get", "replicas"])
    let deadline = Date().addingTimeInterval(10)
    while !listed.stdout.contains(api), Date() < deadline {
      Thread.sleep(forTimeInterval: 0.2)
      listed = try meshctl(["get", "replicas"])
    }
    let lines = listed.stdout.split(separator: "\n")
    #expect(lines.count == 2, "\(listed.stdout)\(listed.stderr)")
    #expect(lines.last?.contains(api) == true && lines.last?.contains(join) == true)
    #expect(lines.last?.contains(" yes ") == true, "\(listed.stdout)")
  }

  @Test func aJoinTokenBuysOneCertificateThatOpenSSLVerifies() throws {
    let tokenFile = mesh.directory.appendingPathComponent("orders.token").path
    let created = try meshctl(["tokens", "create", "--service", "orders", "--out", tokenFile])
    #expect(created.status == 0, "\(created.stderr)")
    let mode = try FileManager.default.attributesOfItem(atPath: tokenFile)[.posixPermissions]
    #expect(mode as? Int == 0o600)

    let first = try request(tokenFile, name: "orders")
    #expect(first.status == 0, "\(first.stderr)")
    #expect(first.stdout.contains("issued spiffe://trellis.local/svc/orders"))
    let certificate = mesh.directory.appendingPathComponent("orders.pem").path
    let verified = try run(
      "openssl",
      ["verify", "-CAfile", "\(mesh.certs)/bundle.pem", "-untrusted", certificate, certificate])
    #expect(verified.stdout.contains("OK"), "\(verified.stdout)\(verified.stderr)")
    let inspected = try run(binary("meshctl"), ["certs", "inspect", certificate, "-o", "json"])
    #expect(inspected.stdout.contains("spiffe://trellis.local/svc/orders"))

    // A token is good once; a made-up one and an expired one are refused by name.
    let again = try request(tokenFile, name: "orders-again")
    #expect(again.status != 0)
    #expect(again.stderr.contains("PERMISSION_DENIED: the join token has already been used"))
    let forged = try mesh.write("forged.token", "trellis-join-0123")
    #expect(
      try request(forged, name: "x").stderr.contains(
        "PERMISSION_DENIED: the join token is not one this control plane made"))
    let shortLived = mesh.directory.appendingPathComponent("short.token").path
    _ = try meshctl(["tokens", "create", "--service", "orders", "--ttl", "1s", "--out", shortLived])
    Thread.sleep(forTimeInterval: 1.5)
    #expect(
      try request(shortLived, name: "x").stderr.contains(
        "PERMISSION_DENIED: the join token has expired"))
    // A service name that cannot be a SPIFFE ID path gets no token.
    let badName = try meshctl(["tokens", "create", "--service", "no/such"])
    #expect(badName.status != 0)
    #expect(badName.stderr.contains("INVALID_ARGUMENT"), "\(badName.stderr)")
  }

  @Test func theMeshConfigIsValidatedVersionedAndRolledBack() throws {
    let v1 = """
      services:
        users:
          endpoints:
            - address: 127.0.0.1:15101

      """
    let file = try mesh.write("mesh.yaml", v1)
    var result = try meshctl(["apply", "-f", file])
    #expect(result.stdout.contains("as version 1"), "\(result.stdout)\(result.stderr)")
    result = try meshctl(["apply", "-f", file])
    #expect(result.stdout.contains("nothing stored"))

    try mesh.write("mesh.yaml", v1.replacingOccurrences(of: "15101", with: "15102"))
    result = try meshctl(["apply", "-f", file, "--dry-run"])
    #expect(result.stdout.contains("-      - address: 127.0.0.1:15101"), "\(result.stdout)")
    #expect(result.stdout.contains("+      - address: 127.0.0.1:15102"))
    result = try meshctl(["apply", "-f", file])
    #expect(result.stdout.contains("as version 2"), "\(result.stdout)\(result.stderr)")

    // Mistakes are refused with their place, and nothing is stored.
    let bad = try mesh.write(
      "bad.yaml",
      """
      services:
        users:
          endpoints:
            - adress: 127.0.0.1:1
      """)
    result = try meshctl(["apply", "-f", bad])
    #expect(result.status != 0)
    #expect(
      result.stderr.contains(
        "INVALID_ARGUMENT: \(bad):4:9: services.users.endpoints[0].adress: unknown field"),
      "\(result.stderr)")
    let huge = try mesh.write(
      "huge.yaml", "# " + String(repeating: "x", count: 2 << 20) + "\nservices: {}\n")
    result = try meshctl(["apply", "-f", huge])
    #expect(
      result.stderr.contains("a mesh config may be at most 1048576 bytes"), "\(result.stderr)")

    result = try meshctl(["rollback", "1"])
    #expect(result.stdout.contains("version 1 is running again, as version 3"), "\(result.stdout)")
    result = try meshctl(["get", "config"])
    #expect(result.stdout == v1, "\(result.stdout)")
    result = try meshctl(["history", "-o", "json"])
    let versions =
      try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [[String: Any]]
    #expect(versions?.map { $0["version"] as? Int } == [3, 2, 1])
    #expect(versions?.first?["rolled_back_from"] as? Int == 1)
    #expect(versions?.first?["created_by"] as? String == "spiffe://trellis.local/operator/admin")
    result = try meshctl(["get", "endpoints", "-o", "json"])
    let endpoints =
      try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [[String: Any]]
    #expect(endpoints?.count == 1, "\(result.stdout)\(result.stderr)")
    #expect(endpoints?.first?["address"] as? String == "127.0.0.1:15101")
    #expect(endpoints?.first?["identity"] as? String == "spiffe://trellis.local/svc/users")
    result = try meshctl(["get", "endpoints"])
    #expect(result.stdout.contains("users    127.0.0.1:15101  -"), "\(result.stdout)")
    result = try meshctl(["get", "config", "--version", "9"])
    #expect(result.stderr.contains("NOT_FOUND: there is no config version 9"))
  }

  /// Routes and policies are validated by the control plane and shown, defaults written
  /// out, by `meshctl get routes`; each mistake is refused and the control plane goes on.
  @Test func routesAreValidatedAndShown() throws {
    let config = """
      services:
        orders:
          endpoints:
            - {address: 127.0.0.1:7001, labels: {version: v1}}
            - {address: 127.0.0.1:7002, labels: {version: v2}}
          loadBalancing: round-robin
          methods:
            shop.v1.OrderService/CreateOrder: {idempotent: false}
        payments: {}
      routes:
        - service: orders
          name: canary
          match: {headers: {x-canary: "1"}}
          timeout: 2s
          retries: {attempts: 2, on: [UNAVAILABLE, ABORTED]}
          split:
            - {labels: {version: v2}, weight: 1}
          fault: {abort: {code: UNAVAILABLE, percent: 5}}

      """
    let file = try mesh.write("routes.yaml", config)
    var result = try meshctl(["apply", "-f", file])
    #expect(result.status == 0, "\(result.stderr)")
    result = try meshctl(["get", "routes", "-o", "json"])
    let services =
      try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [[String: Any]]
    #expect(services?.map { $0["service"] as? String } == ["orders", "payments"], "\(result)")
    let orders = try #require(services?.first)
    #expect(orders["loadBalancing"] as? String == "round-robin")
    let routes = orders["routes"] as? [[String: Any]] ?? []
    #expect(routes.map { $0["name"] as? String } == ["canary", "default"])
    #expect(
      (routes.first?["retries"] as? [String: Any])?["on"] as? [String] == [
        "UNAVAILABLE", "ABORTED",
      ])
    #expect(routes.first?["timeout"] as? String == "2s")
    let payments = services?.last?["routes"] as? [[String: Any]]
    #expect((payments?.first?["retries"] as? [String: Any])?["attempts"] as? Int == 3)
    result = try meshctl(["get", "routes"])
    #expect(
      result.stdout.contains("orders    canary   every method + x-canary: 1"), "\(result.stdout)")
    #expect(result.stdout.contains("abort UNAVAILABLE 5.0%"), "\(result.stdout)")
    result = try meshctl(["get", "routes", "-o", "yaml"])
    #expect(result.stdout.contains("x-canary: '1'"), "\(result.stdout)")

    // Each mistake names its place; nothing is stored and the control plane keeps serving.
    let mistakes = [
      (
        config.replacingOccurrences(of: "weight: 1", with: "weight: 0"),
        "routes[0].split: every weight is 0"
      ),
      (
        config.replacingOccurrences(of: "- service: orders", with: "- service: ordres"),
        "routes[0].service: no service 'ordres' under services:"
      ),
      (
        config.replacingOccurrences(of: "attempts: 2", with: "attempts: 9"),
        "routes[0].retries.attempts: 9 is out of range 1...5"
      ),
    ]
    for (text, message) in mistakes {
      let bad = try mesh.write("bad-routes.yaml", text)
      result = try meshctl(["apply", "-f", bad])
      #expect(result.status != 0)
      #expect(result.stderr.contains("INVALID_ARGUMENT: \(bad):"), "\(result.stderr)")
      #expect(result.stderr.contains(message), "\(result.stderr)")
    }
    // Ten megabytes: refused before it is sent, by its size.
    let huge = try mesh.write(
      "ten-mb.yaml", "# " + String(repeating: "x", count: 10 << 20) + "\nservices: {}\n")
    result = try meshctl(["apply", "-f", huge])
    #expect(result.status != 0)
    #expect(result.stderr.contains("at most 1048576 bytes"), "\(result.stderr)")
    result = try meshctl(["history", "-o", "json"])
    let versions =
      try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [[String: Any]]
    #expect(versions?.count == 1, "\(result.stdout)\(result.stderr)")
  }

  @Test func onlyTheAdminIdentityMayCallAdminMethods() throws {
    // A folder whose "operator" identity is a workload's certificate.
    let other = mesh.directory.appendingPathComponent("workload").path
    try FileManager.default.createDirectory(atPath: other, withIntermediateDirectories: true)
    for (from, to) in [("users.pem", "operator.pem"), ("users-key.pem", "operator-key.pem")] {
      try FileManager.default.copyItem(atPath: "\(mesh.certs)/\(from)", toPath: "\(other)/\(to)")
    }
    try FileManager.default.copyItem(
      atPath: "\(mesh.certs)/bundle.pem", toPath: "\(other)/bundle.pem")
    for command in [
      ["tokens", "create", "--service", "users"], ["certs", "rotate", "--service", "users"],
      ["status"], ["get", "config"],
    ] {
      let result = try meshctl(command, certs: other)
      #expect(result.status != 0)
      #expect(
        result.stderr.contains(
          "PERMISSION_DENIED: spiffe://trellis.local/svc/users is not the mesh's admin"),
        "\(command): \(result.stderr)")
    }
    // Rotation needs the root's key as well, which this folder lacks.
    let rotate = try meshctl(["certs", "rotate-ca"], certs: other)
    #expect(rotate.status != 0)
    #expect(rotate.stderr.contains("the root and its key are needed"), "\(rotate.stderr)")
  }

  @Test func anAcknowledgedVersionSurvivesKill9() throws {
    let file = try mesh.write("mesh.yaml", "services:\n  users: {}\n")
    let applied = try meshctl(["apply", "-f", file])
    #expect(applied.status == 0, "\(applied.stderr)")
    plane.kill()
    plane = try Self.start(certs: mesh.certs, data: data)
    join = try logField(plane.log, "join_address")
    let config = try meshctl(["get", "config"])
    #expect(config.stdout == "services:\n  users: {}\n", "\(config.stdout)\(config.stderr)")
  }
}
