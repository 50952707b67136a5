import MeshConfig
import Testing

/// The traffic policies of the mesh config: every field read, every default definite, and
/// each mistake refused with the file, line and field.
@Suite struct PolicyTests {
  let full = """
    tracing: {sampling: 0.25, accessLog: true}
    gateway:
      apiKeys:
        - name: mobile
          sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    services:
      orders:
        endpoints:
          - address: 127.0.0.1:7001
            labels: {version: v1}
          - address: 127.0.0.1:7002
            labels: {version: v2}
        loadBalancing: least-request
        outlierDetection: {consecutiveFailures: 3, baseEjectionTime: 10s, maxEjectionPercent: 30}
        circuitBreaker: {maxConcurrentRequests: 100, maxPendingRequests: 10}
        retryBudget: {percent: 10, minPerSecond: 5, window: 30s}
        methods:
          shop.v1.OrderService/CreateOrder: {idempotent: false}
          shop.v1.OrderService/GetOrder: {idempotent: true}
      payments: {}
    routes:
      - service: orders
        name: canary
        match:
          methods: [shop.v1.OrderService/*]
          headers: {x-canary: "1"}
        timeout: 2s
        perTryTimeout: 500ms
        retries: {attempts: 4, on: [unavailable, RESOURCE_EXHAUSTED], backoff: {base: 10ms, max: 1s}}
        split:
          - labels: {version: v1}
            weight: 90
          - labels: {version: v2}
            weight: 10
        fault:
          abort: {code: UNAVAILABLE, percent: 5}
          delay: {duration: 100ms, percent: 12.5}
    """

  @Test func everyFieldIsRead() throws {
    let config = try MeshConfig(yaml: full)
    #expect(config.tracing.sampling == 0.25)
    #expect(config.tracing.accessLog)
    #expect(config.gateway.apiKeys.map(\.name) == ["mobile"])
    let orders = try #require(config.services["orders"])
    #expect(orders.loadBalancing == .leastRequest)
    #expect(orders.outlierDetection.consecutiveFailures == 3)
    #expect(orders.outlierDetection.baseEjectionTime == .seconds(10))
    #expect(orders.outlierDetection.maxEjectionPercent == 30)
    #expect(orders.circuitBreaker.maxConcurrentRequests == 100)
    #expect(orders.circuitBreaker.maxPendingRequests == 10)
    #expect(orders.retryBudget.percent == 10 && orders.retryBudget.window == .seconds(30))
    #expect(orders.idempotency["shop.v1.OrderService/CreateOrder"] == false)
    #expect(orders.idempotency["shop.v1.OrderService/GetOrder"] == true)
    let route = try #require(config.routes.first)
    #expect(route.name == "canary")
    #expect(route.match.methods == ["shop.v1.OrderService/*"])
    #expect(route.match.headers == ["x-canary": "1"])
    #expect(route.timeout == .seconds(2) && route.perTryTimeout == .milliseconds(500))
    #expect(route.retries.attempts == 4)
    #expect(route.retries.retryOn == [14, 8])
    #expect(route.retries.backoffBase == .milliseconds(10))
    #expect(route.split.map(\.weight) == [90, 10])
    #expect(route.fault?.abort?.code == 14)
    #expect(route.fault?.delay?.percent == 12.5)
    #expect(
      route.match.matches(path: "/shop.v1.OrderService/GetOrder") { $0 == "x-canary" ? "1" : nil })
    #expect(!route.match.matches(path: "/shop.v1.OrderService/GetOrder") { _ in nil })
    #expect(!route.match.matches(path: "/shop.v1.UserService/GetUser") { _ in "1" })
  }

  @Test func aServiceWithoutPoliciesGetsTheDefaults() throws {
    let config = try MeshConfig(yaml: full)
    let payments = try #require(config.services["payments"])
    #expect(payments.loadBalancing == .p2cEWMA)
    #expect(payments.outlierDetection == OutlierDetection())
    #expect(payments.outlierDetection.consecutiveFailures == 5)
    #expect(payments.retryBudget.percent == 20 && payments.retryBudget.minPerSecond == 10)
    let routes = config.effectiveRoutes(for: "payments")
    #expect(routes.count == 1)
    #expect(routes[0].name == "default")
    #expect(routes[0].retries.attempts == 3)
    #expect(routes[0].retries.retryOn == [14])
    #expect(routes[0].retries.backoffBase == .milliseconds(25))
    #expect(routes[0].retries.backoffMax == .milliseconds(250))
    // A service's own routes come first, then the default.
    #expect(config.effectiveRoutes(for: "orders").map(\.name) == ["canary", "default"])
  }

  /// (the YAML, what the error must say)
  static let mistakes: [(String, String)] = [
    (
      "services: {orders: {}}\nroutes:\n  - service: users\n",
      "test.yaml:3:14: routes[0].service: no service 'users' under services:"
    ),
    (
      """
      services: {orders: {}}
      routes:
        - service: orders
          split:
            - {labels: {version: v1}, weight: 0}
            - {labels: {version: v2}, weight: 0}
      """,
      "routes[0].split: every weight is 0"
    ),
    (
      "services: {orders: {}}\nroutes:\n  - service: orders\n    retries: {attempts: 6}\n",
      "routes[0].retries.attempts: 6 is out of range 1...5"
    ),
    (
      "services: {orders: {}}\nroutes:\n  - service: orders\n    retries: {on: [NOPE]}\n",
      "routes[0].retries.on: 'NOPE' is not a gRPC status code"
    ),
    (
      """
      services: {orders: {}}\nroutes:\n  - service: orders\n    timeout: 1s\n    perTryTimeout: \
      2s\n
      """,
      "routes[0].perTryTimeout: longer than the route's timeout"
    ),
    (
      """
      services: {orders: {}}\nroutes:\n  - service: orders\n    match: {headers: {X-Canary: \
      '1'}}\n
      """,
      "'X-Canary' is not a lower-case header name"
    ),
    (
      """
      services: {orders: {}}\nroutes:\n  - service: orders\n    fault: {abort: {code: OK, percent: \
      5}}\n
      """,
      "routes[0].fault.abort.code: 'OK' is not a gRPC status code other than OK"
    ),
    (
      """
      services: {orders: {}}\nroutes:\n  - service: orders\n    fault: {delay: {duration: 1s, \
      percent: 101}}\n
      """,
      "routes[0].fault.delay.percent: expected a percentage from 0 to 100"
    ),
    (
      "services:\n  orders:\n    loadBalancing: random\n",
      "services.orders.loadBalancing: expected one of p2c-ewma, round-robin, least-request"
    ),
    (
      "services:\n  orders:\n    methods:\n      shop.v1.OrderService/*: {idempotent: true}\n",
      "is not package.Service/Method"
    ),
    ("tracing: {sampling: 2}\n", "tracing.sampling: expected a share from 0 to 1"),
    (
      "gateway: {apiKeys: [{name: k, sha256: abc}]}\n",
      "gateway.apiKeys[0].sha256: expected the key's SHA-256 as 64 hex digits"
    ),
    (
      "services: {orders: {}}\nroutes:\n  - service: orders\n    retrys: {}\n",
      "routes[0].retrys: unknown field"
    ),
  ]

  @Test(arguments: mistakes)
  func aMistakeIsRefusedWithItsPlace(_ yaml: String, _ expected: String) {
    do {
      _ = try MeshConfig(yaml: yaml, file: "test.yaml")
      Issue.record("accepted: \(yaml)")
    } catch {
      #expect(error.description.contains(expected), "\(error.description)")
    }
  }
}
