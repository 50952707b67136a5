import GRPCCore
import MeshTracing

extension RPCError.Code {
  /// The code's canonical name from the gRPC specification ("NOT_FOUND"), as logs, metrics
  /// and tools print it.
  public var canonicalName: String { Status.Code.canonicalNames[rawValue] }
}

extension Status.Code {
  /// The code's canonical name from the gRPC specification ("OK", "NOT_FOUND").
  public var canonicalName: String { Self.canonicalNames[rawValue] }

  /// Indexed by code number.
  static var canonicalNames: [String] { GRPCStatusName.all }
}
