import Foundation

/// A service executable (or any program that logs a JSON `listening` line with its `address`)
/// running in the background for a test, on a port the system chose.
public final class ServiceProcess: @unchecked Sendable {
  public let address: String
  private let process: Process
  private let logURL: URL

  /// Starts `program` with `arguments` and waits until it logs the address it listens on.
  public init(
    _ program: String, _ arguments: [String], timeout: TimeInterval = 30,
    environment: [String: String] = [:]
  ) throws {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: try resolve(program))
    process.arguments = arguments
    if !environment.isEmpty {
      process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
    }
    let logURL = FileManager.default.temporaryDirectory
      .appendingPathComponent("service-\(UUID().uuidString.prefix(8)).log")
    _ = FileManager.default.createFile(atPath: logURL.path, contents: nil)
    let log = try FileHandle(forWritingTo: logURL)
    process.standardError = log
    process.standardOutput = log
    try process.run()
    self.process = process
    self.logURL = logURL

    let deadline = Date().addingTimeInterval(timeout)
    while true {
      let text = (try? String(contentsOf: logURL, encoding: .utf8)) ?? ""
      if let address = Self.listeningAddress(in: text) {
        self.address = address
        return
      }
      if !process.isRunning || Date() > deadline {
        process.terminate()
        throw HarnessError(
          "\(program) did not start (exit \(process.isRunning ? "none" : "\(process.terminationStatus)")): \(text)"
        )
      }
      Thread.sleep(forTimeInterval: 0.05)
    }
  }

  /// Everything the process has logged so far.
  public var log: String { (try? String(contentsOf: logURL, encoding: .utf8)) ?? "" }

  /// The process id.
  public var pid: Int32 { process.processIdentifier }

  /// Sends SIGTERM and waits for the process to exit; returns its exit status.
  @discardableResult
  public func stop(timeout: TimeInterval = 15) -> Int32 {
    if process.isRunning { process.terminate() }
    // A process that ignores SIGTERM past the timeout is killed, so no test hangs on it.
    let deadline = Date().addingTimeInterval(timeout)
    while process.isRunning, Date() < deadline { Thread.sleep(forTimeInterval: 0.02) }
    if process.isRunning { Foundation.kill(process.processIdentifier, SIGKILL) }
    process.waitUntilExit()
    return process.terminationStatus
  }

  /// Kills the process outright, as a crash would.
  public func kill() {
    if process.isRunning { Foundation.kill(process.processIdentifier, SIGKILL) }
    process.waitUntilExit()
  }

  deinit {
    if process.isRunning { stop() }
  }

  static func listeningAddress(in log: String) -> String? {
    for line in log.split(separator: "\n") where line.contains("\"listening\"") {
      guard let data = line.data(using: .utf8),
        let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
        let address = object["address"] as? String
      else { continue }
      return address
    }
    return nil
  }
}
