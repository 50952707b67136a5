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

  /// With `everywhere`, the members serve on every address of this host (other hosts of a
  /// test's topology reach them), not only on loopback; `url` names loopback either way.
  public init(
    name: String = "etcd-test", members count: Int = 1, everywhere: Bool = false
  )
    throws
  {
    directory = try makeTemporaryDirectory(name)
    let ports = try (0..<count).map { _ in
      (client: try Int(freeLoopbackPort())!, peer: try Int(freeLoopbackPort())!)
    }
    url = "etcd://" + ports.map { "127.0.0.1:\($0.client)" }.joined(separator: ",")
    let cluster = ports.enumerated().map { "m\($0.offset + 1)=http://127.0.0.1:\($0.element.peer)" }
      .joined(separator: ",")
    members = []
    for (index, port) in ports.enumerated() {
      let name = "m\(index + 1)"
      let client = "http://127.0.0.1:\(port.client)"
      let listen = everywhere ? "http://0.0.0.0:\(port.client)" : client
      let peer = "http://127.0.0.1:\(port.peer)"
      let log = directory.appendingPathComponent("\(name).log")
      let arguments = [
        "--name", name, "--data-dir", directory.appendingPathComponent(name).path,
        "--listen-client-urls", listen, "--advertise-client-urls", client,
        "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
        "--initial-cluster", cluster, "--initial-cluster-state", "new",
        "--initial-cluster-token", directory.lastPathComponent,
        "--logger", "zap", "--log-outputs", log.path,
      ]
      members.append(
        Member(
          name: name, clientPort: port.client, peerPort: port.peer,
          process: try Self.launch(arguments), log: log, arguments: arguments))
    }
    // Ready once every member serves its client port (a loaded machine may take a while).
    for index in members.indices { try waitUntilServing(index) }
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
