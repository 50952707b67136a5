import Foundation

/// An etcd member (Debian's `etcd-server`) for a test: a cluster of its own, its data in a
/// temporary folder, on loopback ports nobody used a moment before; serving once made.
public final class EtcdServer: @unchecked Sendable {
  /// `etcd://127.0.0.1:PORT`, as the control plane's `--store` takes it.
  public let url: String
  public let clientPort: Int
  public let directory: URL
  private let process: Process

  public init(name: String = "etcd-test") throws {
    directory = try makeTemporaryDirectory(name)
    clientPort = try Int(freeLoopbackPort())!
    let peerPort = try Int(freeLoopbackPort())!
    url = "etcd://127.0.0.1:\(clientPort)"
    let client = "http://127.0.0.1:\(clientPort)"
    let peer = "http://127.0.0.1:\(peerPort)"
    process = Process()
    process.executableURL = URL(fileURLWithPath: try resolve("etcd"))
    process.arguments = [
      "--name", "m1", "--data-dir", directory.appendingPathComponent("data").path,
      "--listen-client-urls", client, "--advertise-client-urls", client,
      "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
      "--initial-cluster", "m1=\(peer)", "--initial-cluster-state", "new",
      "--logger", "zap", "--log-outputs", directory.appendingPathComponent("etcd.log").path,
    ]
    process.standardOutput = FileHandle.nullDevice
    process.standardError = FileHandle.nullDevice
    try process.run()
    // Ready once it serves its client port (a loaded machine may take a while).
    let deadline = Date().addingTimeInterval(60)
    while !log.contains("serving client traffic") {
      guard process.isRunning, Date() < deadline else {
        stop()
        throw HarnessError("etcd did not start serving clients: \(log)")
      }
      Thread.sleep(forTimeInterval: 0.05)
    }
  }

  /// What etcd has logged.
  public var log: String {
    (try? String(contentsOf: directory.appendingPathComponent("etcd.log"), encoding: .utf8)) ?? ""
  }

  public func stop() {
    if process.isRunning { process.terminate() }
    process.waitUntilExit()
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
