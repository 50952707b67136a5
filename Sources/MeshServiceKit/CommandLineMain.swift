import ArgumentParser

#if canImport(FoundationEssentials)
  import FoundationEssentials
#else
  import Foundation
#endif

/// Runs a command-line tool's root command with the exit statuses Trellis' CLIs share: a
/// failure the tool recognises is one line on standard error with its own status; a usage
/// error exits 2 (ArgumentParser's 64 would read as a gRPC status, as in grpcurl's 64 + code);
/// `--help` exits 0.
public enum CommandLineMain {
  /// `describe` turns a failure into its message and exit status, or nil for ArgumentParser's
  /// own errors.
  public static func run(
    _ root: any AsyncParsableCommand.Type, name: String,
    describe: @Sendable (any Error) -> (message: String, status: Int32)?
  ) async -> Never {
    do {
      var command = try root.parseAsRoot()
      if var command = command as? any AsyncParsableCommand {
        try await command.run()
      } else {
        try command.run()
      }
      exitProcess(0)
    } catch {
      if let (message, status) = describe(error) {
        StandardError.write("\(name): \(message)\n")
        exitProcess(status)
      }
      let code = root.exitCode(for: error)
      let message = root.fullMessage(for: error)
      if code == .success {
        print(message)
        exitProcess(0)
      }
      StandardError.write(message.isEmpty ? "" : message + "\n")
      exitProcess(code == .validationFailure ? 2 : code.rawValue)
    }
  }
}
