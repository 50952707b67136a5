import GRPCCore

extension RPCError.Code {
  /// The code's canonical name from the gRPC specification ("NOT_FOUND"), as logs, metrics
  /// and tools print it.
  public var canonicalName: String { Status.Code.canonicalNames[rawValue] }
}

extension Status.Code {
  /// The code's canonical name from the gRPC specification ("OK", "NOT_FOUND").
  public var canonicalName: String { Self.canonicalNames[rawValue] }

  /// Indexed by code number.
  static let canonicalNames = [
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
    "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
  ]
}
