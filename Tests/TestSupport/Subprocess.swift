import Foundation

/// The repository's root folder.
public let repositoryRoot: URL = URL(fileURLWithPath: #filePath)
  .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

/// The folder holding the built executables (`user-service`, `rpc`, …): the test bundle's own.
public let productsDirectory: URL = {
  var url = URL(fileURLWithPath: CommandLine.arguments[0]).standardizedFileURL
  while url.pathExtension == "xctest" || url.lastPathComponent.hasSuffix("PackageTests") {
    url = url.deletingLastPathComponent()
  }
  if FileManager.default.fileExists(atPath: url.appendingPathComponent("rpc").path) { return url }
  return repositoryRoot.appendingPathComponent(".build/debug")
}()

/// What a finished process left behind.
public struct ProcessResult: Sendable {
  public let status: Int32
  public let stdoutData: Data
  public let stderr: String
  public var stdout: String { String(decoding: stdoutData, as: UTF8.self) }
}

/// A failure of the test harness itself (a missing tool), with what to do about it.
public struct HarnessError: Error, CustomStringConvertible {
  public let description: String
  public init(_ description: String) { self.description = description }
}

/// Runs a program to completion. `program` is a path, or a name looked up on PATH.
@discardableResult
public func run(
  _ program: String, _ arguments: [String], stdin: Data? = nil, directory: URL? = nil,
  environment: [String: String] = [:]
) throws -> ProcessResult {
  let process = Process()
  process.executableURL = URL(fileURLWithPath: try resolve(program))
  process.arguments = arguments
  if let directory { process.currentDirectoryURL = directory }
  if !environment.isEmpty {
    process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
  }
  let out = Pipe()
  let err = Pipe()
  let input = Pipe()
  process.standardOutput = out
  process.standardError = err
  process.standardInput = input
  try process.run()
  if let stdin { input.fileHandleForWriting.write(stdin) }
  try input.fileHandleForWriting.close()
  // Read both pipes at once so neither fills up and blocks the child.
  nonisolated(unsafe) var errData = Data()
  let group = DispatchGroup()
  group.enter()
  DispatchQueue.global().async {
    errData = err.fileHandleForReading.readDataToEndOfFile()
    group.leave()
  }
  let outData = out.fileHandleForReading.readDataToEndOfFile()
  group.wait()
  process.waitUntilExit()
  return ProcessResult(
    status: process.terminationStatus, stdoutData: outData,
    stderr: String(decoding: errData, as: UTF8.self))
}

/// The full path of a program: as given if it has a slash, else found on PATH.
public func resolve(_ program: String) throws -> String {
  if program.contains("/") { return program }
  let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
  for directory in path.split(separator: ":") {
    let candidate = "\(directory)/\(program)"
    if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
  }
  throw HarnessError("\(program) is not installed; .ci/run installs everything the tests need")
}

/// A fresh temporary folder.
public func makeTemporaryDirectory(_ name: String = "trellis-test") throws -> URL {
  let url = FileManager.default.temporaryDirectory
    .appendingPathComponent("\(name)-\(UUID().uuidString.prefix(8))")
  try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
  return url
}
