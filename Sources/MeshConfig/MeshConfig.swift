import MeshIdentity

/// The mesh's configuration: which services exist, where their endpoints are, who may call
/// them, and how calls to them are balanced, retried, limited, split and traced. One schema,
/// read from YAML: in static mode each sidecar reads it from a file; the control plane
/// validates, stores and pushes the same document. `docs/mesh-config.md` has every field.
///
/// ```yaml
/// trustDomain: trellis.local        # optional
/// defaultPolicy: allow-mesh         # or deny: a service without rules refuses every caller
/// services:
///   users:
///     endpoints:
///       - address: 127.0.0.1:7101
///         labels: {version: v1}
///     authorization:
///       allow:
///         - from: [gateway, orders]                  # service names or SPIFFE IDs
///         - from: spiffe://trellis.local/operator/admin
///           methods: [shop.v1.UserService/*]
/// ```
public struct MeshConfig: Equatable, Sendable {
  public var trustDomain: String
  public var defaultPolicy: DefaultPolicy
  public var services: [String: Service]
  /// The largest config the control plane stores (and `meshctl` sends).
  public static let maximumBytes = 1 << 20

  /// In order: the first route of a service that matches a call applies.
  public var routes: [Route] = []
  public var tracing = Tracing()
  public var gateway = GatewaySettings()

  public enum DefaultPolicy: String, Equatable, Sendable {
    /// A service without authorization rules accepts any caller with a verified identity of
    /// the mesh's trust domain.
    case allowMesh = "allow-mesh"
    /// A service without authorization rules accepts nobody.
    case deny
  }

  public struct Service: Equatable, Sendable {
    public var endpoints: [Endpoint]
    /// nil: the mesh's default policy applies.
    public var authorization: Authorization?
    public var loadBalancing = LoadBalancing.p2cEWMA
    public var outlierDetection = OutlierDetection()
    public var circuitBreaker = CircuitBreaker()
    public var retryBudget = RetryBudget()
    /// Whether a method (`package.Service/Method`) may be retried after it reached the app,
    /// overriding what the service's own descriptors say.
    public var idempotency: [String: Bool] = [:]
    /// Methods (`package.Service/Method`) whose responses stream — subscriptions, watches —
    /// from the service's descriptors: a route's `timeout` does not apply to them (a stream
    /// that lasts is what they are for; the caller's own deadline still does).
    public var streaming: Set<String> = []

    public init(endpoints: [Endpoint] = [], authorization: Authorization? = nil) {
      self.endpoints = endpoints
      self.authorization = authorization
    }
  }

  public struct Endpoint: Equatable, Sendable {
    public var address: Address
    public var labels: [String: String]

    public init(address: Address, labels: [String: String] = [:]) {
      self.address = address
      self.labels = labels
    }
  }

  public init(
    trustDomain: String = SPIFFEID.defaultTrustDomain, defaultPolicy: DefaultPolicy = .allowMesh,
    services: [String: Service] = [:]
  ) {
    self.trustDomain = trustDomain
    self.defaultPolicy = defaultPolicy
    self.services = services
  }

  /// The routes of `service`, in order, ending with the default route (every call, the
  /// default policies) unless a route already matches every call.
  public func effectiveRoutes(for service: String) -> [Route] {
    let own = routes.filter { $0.service == service }
    if own.contains(where: { $0.match.methods == nil && $0.match.headers.isEmpty }) { return own }
    return own + [Route(service: service, name: "default")]
  }

  /// Who may call `service`.
  public func policy(for service: String) -> Authorization {
    if let rules = services[service]?.authorization { return rules }
    switch defaultPolicy {
    case .allowMesh: return Authorization(rules: [.init(callers: .anyInTrustDomain(trustDomain))])
    case .deny: return Authorization(rules: [])
    }
  }
}

/// A host and port. IPv6 hosts are written in brackets: `[::1]:7101`.
public struct Address: Hashable, Sendable, CustomStringConvertible {
  public var host: String
  public var port: Int

  public init(host: String, port: Int) {
    self.host = host
    self.port = port
  }

  /// Parses `HOST:PORT`; nil names what is wrong.
  public init(parsing text: String) throws(AddressError) {
    var host: Substring
    let portText: Substring
    if text.hasPrefix("[") {
      guard let close = text.firstIndex(of: "]"),
        text[text.index(after: close)...].hasPrefix(":")
      else { throw AddressError("expected [IPv6]:PORT, got '\(text)'") }
      host = text[text.index(after: text.startIndex)..<close]
      portText = text[text.index(close, offsetBy: 2)...]
    } else {
      guard let colon = text.lastIndex(of: ":") else {
        throw AddressError("expected HOST:PORT, got '\(text)'")
      }
      host = text[..<colon]
      portText = text[text.index(after: colon)...]
    }
    guard !host.isEmpty else { throw AddressError("no host in '\(text)'") }
    guard let port = Int(portText), (0...65535).contains(port) else {
      throw AddressError("'\(portText)' is not a port (0-65535) in '\(text)'")
    }
    host = host.hasPrefix("[") ? host.dropFirst() : host
    self.init(host: String(host), port: port)
  }

  public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

public struct AddressError: Error, CustomStringConvertible {
  public var description: String
  init(_ description: String) { self.description = description }
}

/// Which callers may call which methods of a service: the allow rules, any of which admits a
/// call. No rule, no call.
public struct Authorization: Equatable, Sendable {
  public var rules: [Rule]

  public init(rules: [Rule]) {
    self.rules = rules
  }

  public struct Rule: Equatable, Sendable {
    public var callers: Callers
    /// nil: every method. Entries are `package.Service/Method` or `package.Service/*`.
    public var methods: [String]?

    public init(callers: Callers, methods: [String]? = nil) {
      self.callers = callers
      self.methods = methods
    }
  }

  public enum Callers: Equatable, Sendable {
    case identities(Set<String>)
    case anyInTrustDomain(String)
  }

  /// Whether `caller` (a verified SPIFFE ID) may call `path` (`/package.Service/Method`).
  public func allows(caller: String, path: String) -> Bool {
    rules.contains { rule in
      let callerMatches: Bool
      switch rule.callers {
      case .identities(let identities): callerMatches = identities.contains(caller)
      case .anyInTrustDomain(let domain): callerMatches = caller.hasPrefix("spiffe://\(domain)/")
      }
      guard callerMatches else { return false }
      guard let methods = rule.methods else { return true }
      let method = path.dropFirst()  // "/pkg.Service/Method" → "pkg.Service/Method"
      return methods.contains { pattern in
        if pattern.hasSuffix("/*") {
          return method.hasPrefix(pattern.dropLast())
        }
        return method == pattern
      }
    }
  }
}

// MARK: Reading YAML

extension MeshConfig {
  /// Reads and validates a mesh config; a mistake is a `ConfigError` naming the file, line and
  /// field.
  public init(yaml: String, file: String = "mesh.yaml") throws(ConfigError) {
    do {
      let root = try ConfigNode.parse(yaml, file: file)
      try self.init(root)
    } catch let error as ConfigError {
      throw error
    } catch {
      throw ConfigError(file: file, line: nil, column: nil, field: "", message: "\(error)")
    }
  }

  init(_ root: ConfigNode) throws {
    let fields = try root.fields([
      "trustDomain", "defaultPolicy", "services", "routes", "tracing", "gateway",
    ])
    let trustDomain = try fields["trustDomain"].optionalString() ?? SPIFFEID.defaultTrustDomain
    do {
      _ = try SPIFFEID(parsing: "spiffe://\(trustDomain)/x")
    } catch {
      throw fields["trustDomain"].error("'\(trustDomain)' is not a valid trust domain: \(error)")
    }
    var defaultPolicy = DefaultPolicy.allowMesh
    if let text = try fields["defaultPolicy"].optionalString() {
      guard let policy = DefaultPolicy(rawValue: text) else {
        throw fields["defaultPolicy"].error("expected allow-mesh or deny, got '\(text)'")
      }
      defaultPolicy = policy
    }
    var services: [String: Service] = [:]
    for (name, node) in try fields["services"].mapping() {
      do {
        _ = try SPIFFEID.workload(name, trustDomain: trustDomain)
      } catch {
        throw node.error("'\(name)' is not a valid service name: \(error)")
      }
      services[name] = try Service(node, trustDomain: trustDomain)
    }
    self.init(trustDomain: trustDomain, defaultPolicy: defaultPolicy, services: services)
    routes = try fields["routes"].sequence().map { try Route($0, services: services) }
    if fields["tracing"].isPresent { tracing = try Tracing(fields["tracing"]) }
    if fields["gateway"].isPresent { gateway = try GatewaySettings(fields["gateway"]) }
  }
}

extension MeshConfig.Service {
  init(_ node: ConfigNode, trustDomain: String) throws {
    let fields = try node.fields([
      "endpoints", "authorization", "loadBalancing", "outlierDetection", "circuitBreaker",
      "retryBudget", "methods",
    ])
    var endpoints: [MeshConfig.Endpoint] = []
    var seen: Set<Address> = []
    for entry in try fields["endpoints"].sequence() {
      let endpoint = try MeshConfig.Endpoint(entry)
      guard seen.insert(endpoint.address).inserted else {
        throw entry.error("\(endpoint.address) is listed twice")
      }
      endpoints.append(endpoint)
    }
    var authorization: Authorization?
    if fields["authorization"].isPresent {
      authorization = try Authorization(fields["authorization"], trustDomain: trustDomain)
    }
    self.init(endpoints: endpoints, authorization: authorization)
    try Self.readPolicies(fields, into: &self)
  }
}

extension MeshConfig.Endpoint {
  init(_ node: ConfigNode) throws {
    let fields = try node.fields(["address", "labels"])
    let addressNode = fields["address"]
    let address: Address
    do {
      address = try Address(parsing: try addressNode.string())
    } catch let error as AddressError {
      throw addressNode.error(error.description)
    }
    guard address.port != 0 else { throw addressNode.error("port 0 cannot be dialled") }
    var labels: [String: String] = [:]
    for (key, value) in try fields["labels"].mapping() { labels[key] = try value.string() }
    self.init(address: address, labels: labels)
  }
}

extension Authorization {
  init(_ node: ConfigNode, trustDomain: String) throws {
    let fields = try node.fields(["allow"])
    var rules: [Rule] = []
    for entry in try fields["allow"].sequence() {
      let ruleFields = try entry.fields(["from", "methods"])
      let fromNode = ruleFields["from"]
      var identities: Set<String> = []
      for caller in try fromNode.strings() {
        if caller.hasPrefix("spiffe://") {
          do {
            identities.insert(try SPIFFEID(parsing: caller).description)
          } catch {
            throw fromNode.error("'\(caller)' is not a valid SPIFFE ID: \(error)")
          }
        } else {
          do {
            identities.insert(try SPIFFEID.workload(caller, trustDomain: trustDomain).description)
          } catch {
            throw fromNode.error("'\(caller)' is neither a service name nor a SPIFFE ID")
          }
        }
      }
      guard !identities.isEmpty else { throw fromNode.error("name at least one caller") }
      var methods: [String]?
      if ruleFields["methods"].isPresent {
        let list = try ruleFields["methods"].strings()
        for method in list where !Self.isMethodPattern(method) {
          throw ruleFields["methods"].error(
            "'\(method)' is not package.Service/Method or package.Service/*")
        }
        methods = list.map { $0.hasPrefix("/") ? String($0.dropFirst()) : $0 }
      }
      rules.append(Rule(callers: .identities(identities), methods: methods))
    }
    self.init(rules: rules)
  }

  static func isMethodPattern(_ text: String) -> Bool {
    let trimmed = text.hasPrefix("/") ? text.dropFirst() : Substring(text)
    let parts = trimmed.split(separator: "/", omittingEmptySubsequences: false)
    guard parts.count == 2, parts[0].contains("."), !parts[1].isEmpty else { return false }
    let isName: (Substring) -> Bool = { part in
      part.allSatisfy { $0.isLetter || $0.isNumber || $0 == "_" || $0 == "." }
        && !part.hasPrefix(".") && !part.hasSuffix(".") && !part.contains("..")
    }
    return isName(parts[0]) && (parts[1] == "*" || isName(parts[1]) && !parts[1].contains("."))
  }
}
