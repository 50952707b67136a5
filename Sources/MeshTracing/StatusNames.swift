/// gRPC status codes by number, named as the protocol names them ("OK", "NOT_FOUND").
public enum GRPCStatusName {
  public static let all = [
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
    "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
  ]

  /// The name of `code`; `UNKNOWN` for a number outside the protocol's.
  public static func of(_ code: Int) -> String {
    all.indices.contains(code) ? all[code] : "UNKNOWN"
  }
}
