import ArgumentParser
import Foundation
import GRPCCore
import MeshServiceKit

/// `rpc`: call any gRPC service from the command line, with grpcurl's muscle memory.
///
/// Exit status, as grpcurl: 0 success; 64 + the gRPC status code when the server answers with
/// a non-OK status (NOT_FOUND → 69); 1 for any other failure; 2 for a usage error.
@main
struct RPC: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "rpc",
    abstract: "Call gRPC services: list, describe and invoke them using server reflection.",
    discussion: """
      Exit status: 0 on success, 64 + the gRPC status code for a non-OK status \
      (NOT_FOUND exits 69), 1 for other failures, 2 for usage errors.
      """,
    subcommands: [List.self, Describe.self, Call.self, Bench.self])

  static func main() async {
    await CommandLineMain.run(RPC.self, name: "rpc") { error in
      switch error {
      case let failure as CLIFailure: return (failure.message, failure.exitCode)
      case let error as RPCError:
        let failure = CLIFailure(error)
        return (failure.message, failure.exitCode)
      default: return nil
      }
    }
  }
}

/// A failure the CLI reports as one line and an exit status.
struct CLIFailure: Error {
  let message: String
  let exitCode: Int32

  /// Anything but a gRPC status: exit 1.
  static func other(_ message: String) -> CLIFailure { CLIFailure(message: message, exitCode: 1) }

  /// A bad argument found after parsing: exit 2.
  static func usage(_ message: String) -> CLIFailure { CLIFailure(message: message, exitCode: 2) }

  init(message: String, exitCode: Int32) {
    self.message = message
    self.exitCode = exitCode
  }

  /// A status the server sent: exit 64 + its code. A failure of the connection itself (the
  /// transport reports it as UNAVAILABLE with an underlying cause, such as a refused TLS
  /// handshake) is not the server's answer: exit 1.
  init(_ error: RPCError) {
    if error.code == .unavailable, let cause = error.cause {
      self.init(message: "cannot connect: \(error.message) (\(cause))", exitCode: 1)
    } else {
      self.init(
        message: "\(error.code.canonicalName): \(error.message)",
        exitCode: 64 + Int32(error.code.rawValue))
    }
  }
}
