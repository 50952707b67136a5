import GRPCCore

/// Runs `body` with a client of `transport` for a command's calls, and closes the client's
/// connections as soon as `body` returns or throws.
///
/// `withGRPCClient` shuts its client down gracefully, which waits for every connection to
/// settle: one that lost its server (which exited, say, as a Watch stream ended) is meanwhile
/// reconnecting, and the wait can outlast the command by the length of a backoff. A command
/// whose calls are over has nothing to wait for, so the client is stopped abruptly instead (by
/// cancelling the task that runs its connections, as grpc-swift documents).
public func withCommandClient<Transport: ClientTransport, Result: Sendable>(
  transport: Transport, _ body: (GRPCClient<Transport>) async throws -> Result
) async throws -> Result {
  let client = GRPCClient(transport: transport)
  return try await withThrowingTaskGroup(of: Void.self, returning: Result.self) { group in
    group.addTask { try await client.runConnections() }
    defer { group.cancelAll() }
    return try await body(client)
  }
}
