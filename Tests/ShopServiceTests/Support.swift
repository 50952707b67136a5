import GRPCCore
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
