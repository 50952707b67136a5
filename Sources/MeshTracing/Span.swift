/// One finished span, as a hop records it: OpenTelemetry's span model, limited to what the
/// mesh writes. Times are nanoseconds since the Unix epoch.
public struct Span: Sendable {
  public enum Kind: Int, Sendable {
    case `internal` = 1, server = 2, client = 3, producer = 4, consumer = 5
  }

  public enum Status: Sendable, Equatable {
    case unset, ok
    case error(String)
  }

  public struct Event: Sendable {
    public var name: String
    public var time: UInt64
    public var attributes: [Attribute]

    public init(name: String, time: UInt64 = WallClock.now(), attributes: [Attribute] = []) {
      self.name = name
      self.time = time
      self.attributes = attributes
    }
  }

  public var context: TraceContext
  /// The span that caused this one; nil for a trace's root.
  public var parent: SpanID?
  public var name: String
  public var kind: Kind
  public var start: UInt64
  public var end: UInt64
  public var attributes: [Attribute]
  public var events: [Event]
  public var status: Status
  /// Whether the parent was recorded in another process (the W3C flags' remote bits).
  public var parentIsRemote: Bool

  public init(
    context: TraceContext, parent: SpanID?, name: String, kind: Kind, start: UInt64,
    end: UInt64, attributes: [Attribute] = [], events: [Event] = [], status: Status = .unset,
    parentIsRemote: Bool = false
  ) {
    self.context = context
    self.parent = parent
    self.name = name
    self.kind = kind
    self.start = start
    self.end = end
    self.attributes = attributes
    self.events = events
    self.status = status
    self.parentIsRemote = parentIsRemote
  }
}

/// A span or event attribute: OpenTelemetry's scalar kinds.
public struct Attribute: Sendable, Equatable {
  public enum Value: Sendable, Equatable {
    case string(String)
    case int(Int64)
    case double(Double)
    case bool(Bool)
  }

  public var key: String
  public var value: Value

  public init(_ key: String, _ value: Value) {
    self.key = key
    self.value = value
  }

  public static func string(_ key: String, _ value: String) -> Attribute {
    Attribute(key, .string(value))
  }

  public static func int(_ key: String, _ value: Int) -> Attribute {
    Attribute(key, .int(Int64(value)))
  }

  public static func bool(_ key: String, _ value: Bool) -> Attribute {
    Attribute(key, .bool(value))
  }
}

/// What recorded spans are handed to. `record` is called on the data path: it must not block
/// or wait.
public protocol SpanSink: Sendable {
  func record(_ span: Span)
}

/// The attribute names the mesh writes: OpenTelemetry's RPC semantic conventions, and the
/// mesh's own under `trellis.`.
public enum SpanAttribute {
  public static let rpcSystem = "rpc.system"
  public static let rpcService = "rpc.service"
  public static let rpcMethod = "rpc.method"
  public static let grpcStatusCode = "rpc.grpc.status_code"
  public static let serverAddress = "server.address"
  public static let serverPort = "server.port"
  public static let peerIdentity = "trellis.peer.identity"
  public static let endpoint = "trellis.endpoint"
  public static let direction = "trellis.direction"
  public static let attempts = "trellis.attempts"
  /// The attempt this call is (1 for the first), from `grpc-previous-rpc-attempts`.
  public static let attempt = "trellis.attempt"
  public static let route = "trellis.route"
  public static let serviceName = "service.name"
  public static let component = "trellis.component"
}
