import ArgumentParser
import GRPCCore
import Logging
import ServiceLifecycle

#if canImport(FoundationEssentials)
  import FoundationEssentials
#else
  import Foundation
#endif

/// The options every service executable takes.
public struct ServiceOptions: ParsableArguments {
  @Option(help: "Address to serve on, HOST:PORT. Port 0 picks a free port.")
  public var listen: String?

  @Option(help: "Log level: trace, debug, info, notice, warning, error or critical.")
  public var logLevel: String = "info"

  @Option(
    help:
      """
      Seconds to report NOT_SERVING, still serving, after SIGTERM before stopping: the sidecar's \
      time to withdraw the endpoint.
      """
  )
  public var shutdownDelay: Double = 0

  public init() {}

  /// Starts a service executable: JSON logs, the services hosted on `listen` (or
  /// `defaultListen`), until SIGTERM or SIGINT. Failures to start are one line on standard
  /// error and exit status 1.
  public func serve(
    name: String, defaultListen: String, descriptorSets: [[UInt8]], others: [any Service] = [],
    makeServices: () throws -> [any RegistrableRPCService]
  ) async throws {
    guard let level = Logger.Level(rawValue: logLevel) else {
      throw ValidationError(
        "--log-level \(logLevel) is not one of trace, debug, info, notice, warning, error, critical"
      )
    }
    let address: HostPort
    do {
      address = try HostPort(parsing: listen ?? defaultListen)
    } catch {
      throw ValidationError("--listen: \(error)")
    }
    JSONLogHandler.bootstrap(level: level)
    let logger = Logger(label: name)
    do {
      let exporter = try AppTracing.bootstrap(service: name, logger: logger)
      var configuration = ServiceHost.Configuration(
        listen: address, services: try makeServices(), descriptorSets: descriptorSets)
      configuration.shutdownDelay = .milliseconds(Int64(max(shutdownDelay, 0) * 1000))
      let host = try ServiceHost(configuration, logger: logger)
      try await host.runUntilSignalled(with: others + (exporter.map { [$0] } ?? []))
    } catch {
      StandardError.write("\(name): \(Self.describe(error, address))\n")
      throw ExitCode.failure
    }
  }

  private static func describe(_ error: any Error, _ address: HostPort) -> String {
    // The transport wraps a bind failure twice; say what the operator can act on.
    let text = String(reflecting: error)
    if text.contains("Address already in use") {
      return "cannot listen on \(address): the address is already in use"
    }
    if let error = error as? RuntimeError, let cause = error.cause {
      return "\(error.message) \(cause)"
    }
    return "\(error)"
  }
}
