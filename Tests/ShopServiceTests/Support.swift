import Foundation
import GRPCCore
import LocalPostgres
import Logging
import ShopSupport
import Synchronization
import TestSupport
import Testing

/// A server context for calling a handler directly, as the transport would.
func context(_ method: String = "Test") -> ServerContext {
  ServerContext(
    descriptor: MethodDescriptor(fullyQualifiedService: "test", method: method),
    remotePeer: "in-process", localPeer: "in-process",
    cancellation: ServerContext.RPCCancellationHandle())
}

/// A database file in a fresh folder.
func databasePath(_ name: String) throws -> String {
  try makeTemporaryDirectory(name).appendingPathComponent("\(name).sqlite").path
}

/// Runs `body`, which must fail with an RPCError with `code`; returns the error's message.
@discardableResult
func expectStatus(
  _ code: RPCError.Code, sourceLocation: SourceLocation = #_sourceLocation,
  _ body: () async throws -> Void
) async -> String {
  do {
    try await body()
    Issue.record("expected \(code), the call succeeded", sourceLocation: sourceLocation)
  } catch let error as RPCError {
    #expect(error.code == code, "\(error)", sourceLocation: sourceLocation)
    return error.message
  } catch {
    Issue.record("expected an RPCError, got \(error)", sourceLocation: sourceLocation)
  }
  return ""
}

/// Where a test keeps a service's data: every repository test runs on both.
enum Backend: String, CaseIterable, Sendable, CustomTestStringConvertible {
  case sqlite, postgres

  var testDescription: String { rawValue }
}

/// A fresh database for `name` on `backend`: a new SQLite file, or a new database (with its own
/// role) in this suite's PostgreSQL cluster.
func database(
  _ name: String, on backend: Backend, suite: String = #fileID
) async throws -> ShopDatabaseLocation {
  switch backend {
  case .sqlite:
    return .sqlite(path: try databasePath(name))
  case .postgres:
    let cluster = try await offThePool { try TestPostgres.cluster(for: suite) }
    let unique = "\(name)_\(UUID().uuidString.prefix(8))".lowercased()
      .map { $0.isLetter || $0.isNumber ? $0 : "_" }
    return try ShopDatabaseLocation(
      try await cluster.createServiceDatabase(String(unique), logger: TestPostgres.logger))
  }
}

/// One PostgreSQL cluster per test suite (a suite that restarts its server disturbs no other),
/// started on first use (about a second) and stopped when the test process exits.
enum TestPostgres {
  static let logger = Logger(label: "test-postgres")
  private static let clusters = Mutex<
    [String: (cluster: LocalPostgres, server: LocalPostgres.Server)]
  >(
    [:])

  static func cluster(for suite: String) throws -> LocalPostgres {
    try clusters.withLock { clusters in
      if let running = clusters[suite] { return running.cluster }
      // Directly under /tmp: the `postgres` user (the server's, when tests run as root) must
      // reach it.
      let directory = "/tmp/trellis-pg-\(UUID().uuidString.prefix(8))"
      let cluster = LocalPostgres(directory: directory, port: Int(try freeLoopbackPort())!)
      if clusters.isEmpty { atexit { TestPostgres.stopAll() } }
      try cluster.initialize()
      clusters[suite] = (cluster, try cluster.start())
      return cluster
    }
  }

  static func stopAll() {
    let all = clusters.withLock { $0.values }
    for running in all {
      running.server.stop(.immediate)
      try? FileManager.default.removeItem(atPath: running.cluster.directory)
    }
  }
}

/// Runs blocking work (starting or stopping a server, waiting for a process) on a thread of its
/// own: the cooperative threads the async tests share are few (two on a 2-core machine), and a
/// database pool's calls and their time bounds wait for them.
func offThePool<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
  try await withCheckedThrowingContinuation { continuation in
    Thread.detachNewThread { continuation.resume(with: Result { try work() }) }
  }
}
