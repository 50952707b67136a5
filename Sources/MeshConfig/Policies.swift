/// The traffic policies of the mesh config: per service (balancing, outlier detection, circuit
/// breaking, the retry budget, which methods are idempotent) and per route (timeouts, retries,
/// traffic split, fault injection). `docs/mesh-config.md` documents every field.
///
/// Every field has the default a route without it gets, so a config that says nothing still
/// means something definite, and `meshctl get routes` can show it.

/// How a caller's sidecar picks an endpoint.
public enum LoadBalancing: String, Equatable, Sendable, CaseIterable {
  /// Power of two choices over a peak-EWMA of each endpoint's latency.
  case p2cEWMA = "p2c-ewma"
  case roundRobin = "round-robin"
  case leastRequest = "least-request"
}

/// Endpoints that fail in a row are left out for a while.
public struct OutlierDetection: Equatable, Sendable {
  public var consecutiveFailures = 5
  /// An ejection lasts this long times the number of times the endpoint was ejected.
  public var baseEjectionTime: Duration = .seconds(30)
  /// At most this share of a service's endpoints is ejected at once.
  public var maxEjectionPercent = 50

  public init() {}
}

/// Limits past which a call is answered UNAVAILABLE at once.
public struct CircuitBreaker: Equatable, Sendable {
  public var maxConcurrentRequests = 1024
  /// Calls waiting for a connection or a stream.
  public var maxPendingRequests = 1024

  public init() {}
}

/// Retries may add at most `percent` of the calls plus `minPerSecond`, over `window`.
public struct RetryBudget: Equatable, Sendable {
  public var percent = 20
  public var minPerSecond = 10
  public var window: Duration = .seconds(10)

  public init() {}
}

/// The gRPC status codes by their names in the gRPC spec, as configs write them.
public enum GRPCStatusName {
  public static let all: [String] = [
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
    "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
  ]

  /// The code of `name` (any case, `-` or `_`), or nil.
  public static func code(_ name: String) -> Int? {
    all.firstIndex(of: String(name.uppercased().map { $0 == "-" ? "_" : $0 }))
  }
}

/// When and how a call is tried again.
public struct RetryPolicy: Equatable, Sendable {
  /// Attempts in all, the first included (1: no retry); at most 5.
  public var attempts = 3
  /// Codes after which an idempotent call is retried (gRPC status codes).
  public var retryOn: [Int] = [14]  // UNAVAILABLE
  public var backoffBase: Duration = .milliseconds(25)
  public var backoffMax: Duration = .milliseconds(250)

  public init() {}
}

/// Injected failures, for chaos drills.
public struct FaultInjection: Equatable, Sendable {
  public struct Abort: Equatable, Sendable {
    public var code: Int
    public var percent: Double
  }

  public struct Delay: Equatable, Sendable {
    public var duration: Duration
    public var percent: Double
  }

  public var abort: Abort?
  public var delay: Delay?

  public init(abort: Abort? = nil, delay: Delay? = nil) {
    self.abort = abort
    self.delay = delay
  }
}

/// A share of a route's calls sent to the endpoints carrying some labels.
public struct WeightedSubset: Equatable, Sendable {
  public var labels: [String: String]
  public var weight: Int

  public init(labels: [String: String], weight: Int) {
    self.labels = labels
    self.weight = weight
  }
}

/// Calls to one service that match (by method and headers), and what is done with them. The
/// first route that matches a call applies; a call no route matches gets the defaults.
public struct Route: Equatable, Sendable {
  public struct Match: Equatable, Sendable {
    /// `package.Service/Method` or `package.Service/*`; nil: every method.
    public var methods: [String]?
    /// Exact values of request headers (lower-case names).
    public var headers: [String: String]

    public init(methods: [String]? = nil, headers: [String: String] = [:]) {
      self.methods = methods
      self.headers = headers
    }

    /// Whether a call to `path` (`/package.Service/Method`) with `headers` matches.
    public func matches(path: String, header: (String) -> String?) -> Bool {
      if let methods {
        let method = path.dropFirst()
        let hit = methods.contains { pattern in
          pattern.hasSuffix("/*") ? method.hasPrefix(pattern.dropLast()) : method == pattern
        }
        if !hit { return false }
      }
      return headers.allSatisfy { header($0.key) == $0.value }
    }
  }

  public var service: String
  public var name: String?
  public var match: Match
  /// The whole call, retries included; nil: the caller's `grpc-timeout` alone.
  public var timeout: Duration?
  /// Each attempt.
  public var perTryTimeout: Duration?
  public var retries: RetryPolicy
  /// Empty: every endpoint of the service.
  public var split: [WeightedSubset]
  public var fault: FaultInjection?

  public init(
    service: String, name: String? = nil, match: Match = Match(), timeout: Duration? = nil,
    perTryTimeout: Duration? = nil, retries: RetryPolicy = RetryPolicy(),
    split: [WeightedSubset] = [], fault: FaultInjection? = nil
  ) {
    self.service = service
    self.name = name
    self.match = match
    self.timeout = timeout
    self.perTryTimeout = perTryTimeout
    self.retries = retries
    self.split = split
    self.fault = fault
  }
}

/// How traces are kept.
public struct Tracing: Equatable, Sendable {
  /// The share of new traces recorded (an incoming sampled flag is always honoured).
  public var sampling: Double = 0.01
  /// One JSON line per call in each sidecar's log.
  public var accessLog = false

  public init() {}
}

/// The API gateway's settings.
public struct GatewaySettings: Equatable, Sendable {
  public struct APIKey: Equatable, Sendable {
    public var name: String
    /// The key's SHA-256, hex; the key itself is never in the config.
    public var sha256: String
  }

  public var apiKeys: [APIKey] = []

  public init() {}
}

// MARK: Reading YAML

extension MeshConfig.Service {
  /// The per-service policies, each at its default when absent.
  static func readPolicies(
    _ fields: ConfigNode.Fields, into service: inout MeshConfig.Service
  ) throws {
    if let text = try fields["loadBalancing"].optionalString() {
      guard let value = LoadBalancing(rawValue: text) else {
        throw fields["loadBalancing"].error(
          "expected one of \(LoadBalancing.allCases.map(\.rawValue).joined(separator: ", ")), got '\(text)'"
        )
      }
      service.loadBalancing = value
    }
    if fields["outlierDetection"].isPresent {
      let node = fields["outlierDetection"]
      let f = try node.fields(["consecutiveFailures", "baseEjectionTime", "maxEjectionPercent"])
      var value = OutlierDetection()
      value.consecutiveFailures =
        try f["consecutiveFailures"].int(in: 1...1000) ?? value.consecutiveFailures
      value.baseEjectionTime = try f["baseEjectionTime"].duration() ?? value.baseEjectionTime
      value.maxEjectionPercent =
        try f["maxEjectionPercent"].int(in: 0...100) ?? value.maxEjectionPercent
      service.outlierDetection = value
    }
    if fields["circuitBreaker"].isPresent {
      let f = try fields["circuitBreaker"].fields(["maxConcurrentRequests", "maxPendingRequests"])
      var value = CircuitBreaker()
      value.maxConcurrentRequests =
        try f["maxConcurrentRequests"].int(in: 1...1_000_000) ?? value.maxConcurrentRequests
      value.maxPendingRequests =
        try f["maxPendingRequests"].int(in: 0...1_000_000) ?? value.maxPendingRequests
      service.circuitBreaker = value
    }
    if fields["retryBudget"].isPresent {
      let f = try fields["retryBudget"].fields(["percent", "minPerSecond", "window"])
      var value = RetryBudget()
      value.percent = try f["percent"].int(in: 0...100) ?? value.percent
      value.minPerSecond = try f["minPerSecond"].int(in: 0...100_000) ?? value.minPerSecond
      value.window = try f["window"].duration() ?? value.window
      service.retryBudget = value
    }
    for (method, node) in try fields["methods"].mapping() {
      guard Authorization.isMethodPattern(method), !method.hasSuffix("/*") else {
        throw node.error("'\(method)' is not package.Service/Method")
      }
      let f = try node.fields(["idempotent"])
      guard let idempotent = try f["idempotent"].bool() else {
        throw f["idempotent"].error("required: true or false")
      }
      service.idempotency[method.hasPrefix("/") ? String(method.dropFirst()) : method] =
        idempotent
    }
  }
}

extension Route {
  init(_ node: ConfigNode, services: [String: MeshConfig.Service]) throws {
    let fields = try node.fields([
      "service", "name", "match", "timeout", "perTryTimeout", "retries", "split", "fault",
    ])
    let service = try fields["service"].string()
    guard services[service] != nil else {
      throw fields["service"].error(
        "no service '\(service)' under services: (declare it, with or without endpoints)")
    }
    self.init(service: service, name: try fields["name"].optionalString())
    if fields["match"].isPresent {
      let f = try fields["match"].fields(["methods", "headers"])
      if f["methods"].isPresent {
        let methods = try f["methods"].strings()
        for method in methods where !Authorization.isMethodPattern(method) {
          throw f["methods"].error("'\(method)' is not package.Service/Method or package.Service/*")
        }
        match.methods = methods.map { $0.hasPrefix("/") ? String($0.dropFirst()) : $0 }
      }
      for (name, value) in try f["headers"].mapping() {
        guard !name.isEmpty, !name.hasPrefix(":"), name == name.lowercased(),
          name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" || $0 == "." })
        else {
          throw value.error("'\(name)' is not a lower-case header name (pseudo-headers excluded)")
        }
        match.headers[name] = try value.string()
      }
    }
    timeout = try fields["timeout"].duration()
    perTryTimeout = try fields["perTryTimeout"].duration()
    if let timeout, let perTryTimeout, perTryTimeout > timeout {
      throw fields["perTryTimeout"].error("longer than the route's timeout (\(timeout))")
    }
    if fields["retries"].isPresent {
      let f = try fields["retries"].fields(["attempts", "on", "backoff"])
      retries.attempts = try f["attempts"].int(in: 1...5) ?? retries.attempts
      if f["on"].isPresent {
        retries.retryOn = try f["on"].strings().map { name in
          guard let code = GRPCStatusName.code(name), code != 0 else {
            throw f["on"].error("'\(name)' is not a gRPC status code other than OK")
          }
          return code
        }
      }
      if f["backoff"].isPresent {
        let b = try f["backoff"].fields(["base", "max"])
        retries.backoffBase = try b["base"].duration() ?? retries.backoffBase
        retries.backoffMax = try b["max"].duration() ?? retries.backoffMax
        guard retries.backoffBase <= retries.backoffMax else {
          throw b["base"].error("longer than backoff.max")
        }
      }
    }
    for entry in try fields["split"].sequence() {
      let f = try entry.fields(["labels", "weight"])
      var labels: [String: String] = [:]
      for (key, value) in try f["labels"].mapping() { labels[key] = try value.string() }
      guard !labels.isEmpty else { throw f["labels"].error("name the subset's labels") }
      guard let weight = try f["weight"].int(in: 0...1000) else {
        throw f["weight"].error("required")
      }
      split.append(WeightedSubset(labels: labels, weight: weight))
    }
    if !split.isEmpty, split.allSatisfy({ $0.weight == 0 }) {
      throw fields["split"].error("every weight is 0: no call could be sent anywhere")
    }
    if fields["fault"].isPresent {
      let f = try fields["fault"].fields(["abort", "delay"])
      var fault = FaultInjection()
      if f["abort"].isPresent {
        let a = try f["abort"].fields(["code", "percent"])
        let name = try a["code"].string()
        guard let code = GRPCStatusName.code(name), code != 0 else {
          throw a["code"].error("'\(name)' is not a gRPC status code other than OK")
        }
        fault.abort = .init(code: code, percent: try a["percent"].percent())
      }
      if f["delay"].isPresent {
        let d = try f["delay"].fields(["duration", "percent"])
        guard let duration = try d["duration"].duration() else {
          throw d["duration"].error("required")
        }
        fault.delay = .init(duration: duration, percent: try d["percent"].percent())
      }
      self.fault = fault
    }
  }
}

extension Tracing {
  init(_ node: ConfigNode) throws {
    self.init()
    let f = try node.fields(["sampling", "accessLog"])
    if f["sampling"].isPresent {
      guard let value = Double(try f["sampling"].string()), (0...1).contains(value) else {
        throw f["sampling"].error("expected a share from 0 to 1")
      }
      sampling = value
    }
    accessLog = try f["accessLog"].bool() ?? accessLog
  }
}

extension GatewaySettings {
  init(_ node: ConfigNode) throws {
    self.init()
    let f = try node.fields(["apiKeys"])
    var names: Set<String> = []
    for entry in try f["apiKeys"].sequence() {
      let k = try entry.fields(["name", "sha256"])
      let name = try k["name"].string()
      guard names.insert(name).inserted else { throw k["name"].error("'\(name)' is given twice") }
      let hash = try k["sha256"].string().lowercased()
      guard hash.count == 64, hash.allSatisfy(\.isHexDigit) else {
        throw k["sha256"].error("expected the key's SHA-256 as 64 hex digits")
      }
      apiKeys.append(APIKey(name: name, sha256: hash))
    }
  }
}

extension ConfigNode {
  /// A share in percent, 0 to 100, fractions allowed.
  func percent() throws -> Double {
    guard let value = Double(try string()), (0...100).contains(value) else {
      throw error("expected a percentage from 0 to 100")
    }
    return value
  }

  func bool() throws -> Bool? {
    guard isPresent else { return nil }
    switch try string() {
    case "true": return true
    case "false": return false
    case let other: throw error("expected true or false, got '\(other)'")
    }
  }
}
