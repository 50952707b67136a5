import Foundation
import Synchronization
import TestSupport
import Testing

/// The path of a built executable of this package.
func binary(_ name: String) -> String {
  productsDirectory.appendingPathComponent(name).path
}

let integrationInputs = repositoryRoot.appendingPathComponent("Tests/IntegrationTests/Inputs")

/// Starts a shop service on a free loopback port with a database in `directory`.
func startService(_ name: String, database: URL, extra: [String] = []) throws -> ServiceProcess {
  try ServiceProcess(binary(name), ["--listen", "127.0.0.1:0", "--db", database.path] + extra)
}

/// Runs `rpc` with arguments; returns its exit status and output.
@discardableResult
func rpc(_ arguments: [String], stdin: String? = nil) throws -> ProcessResult {
  try run(binary("rpc"), arguments, stdin: stdin.map { Data($0.utf8) })
}

/// Parses JSON output of `rpc` (one or more pretty-printed messages) into Foundation values.
func jsonObjects(_ text: String) throws -> [[String: Any]] {
  // Messages are printed one after another; split them at top-level closing braces.
  var objects: [[String: Any]] = []
  var depth = 0
  var start = text.startIndex
  var inString = false
  var escaped = false
  for index in text.indices {
    let c = text[index]
    if inString {
      if escaped {
        escaped = false
      } else if c == "\\" {
        escaped = true
      } else if c == "\"" {
        inString = false
      }
      continue
    }
    if c == "\"" { inString = true }
    if c == "{" {
      if depth == 0 { start = index }
      depth += 1
    }
    if c == "}" {
      depth -= 1
      if depth == 0 {
        let chunk = String(text[start...index])
        let object = try JSONSerialization.jsonObject(with: Data(chunk.utf8)) as? [String: Any]
        objects.append(try #require(object))
      }
    }
  }
  return objects
}

/// A Python load (`transparency.py load`, `resilience.py load`) running in the background:
/// calls back to back through a sidecar's outbound listener while a test does something to the
/// mesh.
struct BackgroundLoad {
  let process = Process()
  let output = Pipe()

  init(through outbound: String, seconds: Int) throws {
    try self.init(
      python: [
        PythonInteropTests.python.appendingPathComponent("transparency.py").path, "load",
        outbound, "\(seconds)",
      ])
  }

  /// Any Python load script's command line.
  init(python arguments: [String], environment: [String: String] = [:]) throws {
    process.executableURL = URL(fileURLWithPath: try resolve("python3"))
    process.arguments = arguments
    if !environment.isEmpty {
      process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
    }
    process.standardOutput = output
    try process.run()
  }

  /// Any program, in the background; its standard output is read at the end.
  init(command: String, _ arguments: [String]) throws {
    process.executableURL = URL(fileURLWithPath: command)
    process.arguments = arguments
    process.standardOutput = output
    try process.run()
  }

  /// Waits for the end; returns what it printed.
  func finishText() throws -> String {
    let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    process.waitUntilExit()
    return text
  }

  /// Waits for the end; returns the summary (`ok`, `failed`, `first`).
  func finish() throws -> [String: Any] {
    // Read first: a summary larger than the pipe's buffer would otherwise block the writer.
    let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    process.waitUntilExit()
    return try jsonObjects(text).first ?? ["failed": -1, "output": text]
  }
}

/// Runs `body` while signing, as the operator would, the issuer CSR a control plane writes.
func withOperatorSigning<Result>(
  csr: String, out: String, certs: String, _ body: () throws -> Result
) throws -> Result {
  let signed = DispatchSemaphore(value: 0)
  let outcome = Mutex<String>("")
  DispatchQueue.global().async {
    defer { signed.signal() }
    let deadline = Date().addingTimeInterval(90)
    while !FileManager.default.fileExists(atPath: csr), Date() < deadline {
      Thread.sleep(forTimeInterval: 0.1)
    }
    let result = try? run(
      binary("meshctl"), ["certs", "sign-issuer", csr, "--out", out, "--dir", certs])
    outcome.withLock {
      $0 = "\(result?.status ?? -1) \(result?.stdout ?? "") \(result?.stderr ?? "")"
    }
  }
  let result = try body()
  signed.wait()
  let text = outcome.withLock { $0 }
  #expect(text.hasPrefix("0 signed issuer"), "\(text)")
  return result
}

func waitFor(seconds: Double, _ condition: () throws -> Bool) throws -> Bool {
  let deadline = Date().addingTimeInterval(seconds)
  while Date() < deadline {
    if try condition() { return true }
    Thread.sleep(forTimeInterval: 0.25)
  }
  return false
}

/// How many established TCP connections process `pid` holds to `port` (on any address), read
/// from `/proc`: its sockets' inodes, matched in the kernel's tables.
func establishedConnections(of pid: Int32, toPort port: Int) throws -> Int {
  let descriptors = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")
  var inodes = Set<String>()
  for descriptor in descriptors {
    guard
      let target = try? FileManager.default.destinationOfSymbolicLink(
        atPath: "/proc/\(pid)/fd/\(descriptor)"),
      target.hasPrefix("socket:[")
    else { continue }
    inodes.insert(String(target.dropFirst("socket:[".count).dropLast()))
  }
  var count = 0
  for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
    // Read to the end: the kernel's tables report a size of 0.
    guard let data = try FileHandle(forReadingFrom: URL(fileURLWithPath: table)).readToEnd()
    else { continue }
    let text = String(decoding: data, as: UTF8.self)
    for line in text.split(separator: "\n").dropFirst() {
      // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
      let fields = line.split(separator: " ")
      guard fields.count > 9, fields[3] == "01", inodes.contains(String(fields[9])),
        let remotePort = fields[2].split(separator: ":").last.flatMap({ Int($0, radix: 16) }),
        remotePort == port
      else { continue }
      count += 1
    }
  }
  return count
}
