import Foundation

/// An etcd cluster (Debian's `etcd-server`) for a test: one member or several, a cluster of
/// its own, its data in a temporary folder, on loopback ports nobody used a moment before;
/// serving once made.
public final class EtcdServer: @unchecked Sendable {
  /// `etcd://127.0.0.1:PORT[,127.0.0.1:PORT…]`, as the control plane's `--store` takes it.
  public let url: String
  /// The first member's client port.
  public var clientPort: Int { members[0].clientPort }
  public let directory: URL
  public private(set) var members: [Member]

  /// One member: its process and its ports.
  public struct Member {
    public let name: String
    public let clientPort: Int
    public let peerPort: Int
    let process: Process
    let log: URL
    let arguments: [String]
  }

  /// With `tls`, the client ports speak TLS only and want a client certificate: the CA, a
  /// client's certificate and key, and a certificate from another CA for the tests to refuse.
  public let tls: TLSFiles?

  /// The PEM files of a TLS cluster, made with openssl.
  public struct TLSFiles: Sendable {
    public let ca: String
    public let clientCertificate: String
    public let clientKey: String
    /// A client certificate and key from a CA etcd does not trust.
    public let strangerCertificate: String
    public let strangerKey: String
  }

  /// With `everywhere`, the members serve on every address of this host (other hosts of a
  /// test's topology reach them), not only on loopback; `url` names loopback either way.
  public init(
    name: String = "etcd-test", members count: Int = 1, everywhere: Bool = false, tls: Bool = false
  )
    throws
  {
    directory = try makeTemporaryDirectory(name)
    self.tls = tls ? try Self.makeTLSFiles(in: directory.appendingPathComponent("tls")) : nil
    let scheme = tls ? "https" : "http"
    let serverFiles =
      tls
      ? [
        "--cert-file", directory.appendingPathComponent("tls/server.pem").path, "--key-file",
        directory.appendingPathComponent("tls/server-key.pem").path, "--trusted-ca-file",
        directory.appendingPathComponent("tls/ca.pem").path, "--client-cert-auth",
      ] : []
    let ports = try (0..<count).map { _ in
      (client: try Int(freeLoopbackPort())!, peer: try Int(freeLoopbackPort())!)
    }
    url = "etcd://" + ports.map { "127.0.0.1:\($0.client)" }.joined(separator: ",")
    let cluster = ports.enumerated().map { "m\($0.offset + 1)=http://127.0.0.1:\($0.element.peer)" }
      .joined(separator: ",")
    members = []
    for (index, port) in ports.enumerated() {
      let name = "m\(index + 1)"
      let client = "\(scheme)://127.0.0.1:\(port.client)"
      let listen = everywhere ? "\(scheme)://0.0.0.0:\(port.client)" : client
      let peer = "http://127.0.0.1:\(port.peer)"
      let log = directory.appendingPathComponent("\(name).log")
      let arguments =
        [
          "--name", name, "--data-dir", directory.appendingPathComponent(name).path,
          "--listen-client-urls", listen, "--advertise-client-urls", client,
          "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
          "--initial-cluster", cluster, "--initial-cluster-state", "new",
          "--initial-cluster-token", directory.lastPathComponent,
          "--logger", "zap", "--log-outputs", log.path,
        ] + serverFiles
      members.append(
        Member(
          name: name, clientPort: port.client, peerPort: port.peer,
          process: try Self.launch(arguments), log: log, arguments: arguments))
    }
    // Ready once every member serves its client port (a loaded machine may take a while).
    for index in members.indices { try waitUntilServing(index) }
  }

  /// A CA, a server certificate for 127.0.0.1, a client certificate, and a stranger's.
  private static func makeTLSFiles(in folder: URL) throws -> TLSFiles {
    try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
    let path = { (name: String) in folder.appendingPathComponent(name).path }
    func openssl(_ arguments: [String]) throws {
      let result = try run("openssl", arguments)
      guard result.status == 0 else {
        throw HarnessError("openssl \(arguments.joined(separator: " ")): \(result.stderr)")
      }
    }
    let key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    for ca in ["ca", "stranger-ca"] {
      try openssl(
        ["req", "-x509"] + key + [
          "-keyout", path("\(ca)-key.pem"), "-out", path("\(ca).pem"), "-days", "2",
          "-subj", "/CN=etcd test \(ca)",
        ])
    }
    for (name, ca, extensions) in [
      ("server", "ca", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
      ("client", "ca", "extendedKeyUsage=clientAuth"),
      ("stranger", "stranger-ca", "extendedKeyUsage=clientAuth"),
    ] {
      try openssl(
        ["req", "-new"] + key + [
          "-keyout", path("\(name)-key.pem"), "-out", path("\(name).csr"), "-subj",
          "/CN=etcd test \(name)",
        ])
      try extensions.write(toFile: path("\(name).ext"), atomically: true, encoding: .utf8)
      try openssl([
        "x509", "-req", "-in", path("\(name).csr"), "-CA", path("\(ca).pem"), "-CAkey",
        path("\(ca)-key.pem"), "-CAcreateserial", "-days", "2", "-out", path("\(name).pem"),
        "-extfile", path("\(name).ext"),
      ])
    }
    return TLSFiles(
      ca: path("ca.pem"), clientCertificate: path("client.pem"), clientKey: path("client-key.pem"),
      strangerCertificate: path("stranger.pem"), strangerKey: path("stranger-key.pem"))
  }

  private static func launch(_ arguments: [String]) throws -> Process {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: try resolve("etcd"))
    process.arguments = arguments
    process.standardOutput = FileHandle.nullDevice
    process.standardError = FileHandle.nullDevice
    try process.run()
    return process
  }

  private func waitUntilServing(_ index: Int, after offset: Int = 0) throws {
    let deadline = Date().addingTimeInterval(60)
    while !log(of: index).dropFirst(offset).contains("serving client traffic") {
      guard members[index].process.isRunning, Date() < deadline else {
        stop()
        throw HarnessError("etcd member \(members[index].name) did not start serving: \(log)")
      }
      Thread.sleep(forTimeInterval: 0.05)
    }
  }

  /// What the members have logged.
  public var log: String { members.indices.map { log(of: $0) }.joined(separator: "\n") }

  public func log(of index: Int) -> String {
    (try? String(contentsOf: members[index].log, encoding: .utf8)) ?? ""
  }

  /// The member leading now, as the members' logs tell: the running one that became leader at
  /// the highest term (raft logs "<id> became leader at term N").
  public func leader() -> Int? {
    var best: (index: Int, term: Int)?
    for index in members.indices where members[index].process.isRunning {
      for line in log(of: index).split(separator: "\n") where line.contains("became leader at term")
      {
        guard let range = line.range(of: "became leader at term "),
          let term = Int(line[range.upperBound...].prefix { $0.isNumber })
        else { continue }
        if term > best?.term ?? 0 { best = (index, term) }
      }
    }
    return best?.index
  }

  /// Stops member `index` (SIGSTOP): its connections stay open and nothing is answered, as
  /// with a host cut off. `resume` lets it go on.
  public func pause(_ index: Int) {
    Foundation.kill(members[index].process.processIdentifier, SIGSTOP)
  }

  public func resume(_ index: Int) {
    Foundation.kill(members[index].process.processIdentifier, SIGCONT)
  }

  /// Kills member `index` outright, as a crash would.
  public func kill(_ index: Int) {
    let process = members[index].process
    if process.isRunning { Foundation.kill(process.processIdentifier, SIGKILL) }
    process.waitUntilExit()
  }

  /// Starts member `index` again on its data, after `kill`.
  public func restart(_ index: Int) throws {
    let offset = log(of: index).count
    let member = members[index]
    members[index] = Member(
      name: member.name, clientPort: member.clientPort, peerPort: member.peerPort,
      process: try Self.launch(member.arguments), log: member.log, arguments: member.arguments)
    try waitUntilServing(index, after: offset)
  }

  public func stop() {
    for member in members {
      if member.process.isRunning { Foundation.kill(member.process.processIdentifier, SIGCONT) }
      if member.process.isRunning { member.process.terminate() }
      member.process.waitUntilExit()
    }
  }

  deinit {
    stop()
    try? FileManager.default.removeItem(at: directory)
  }
}

/// A loopback port nobody listens on now, for a process whose address must be known before it
/// starts.
public func freeLoopbackPort() throws -> String {
  try run(
    try resolve("python3"),
    [
      "-c",
      "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])",
    ]
  ).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
}
