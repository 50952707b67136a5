import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import MeshProtos
import MeshTranscoding
import ServiceLifecycle

/// Hosts an app's gRPC services, with what every service in the mesh needs around them:
/// `grpc.health.v1`, server reflection (v1 and v1alpha) from the services' descriptors, one log
/// line per RPC, and a graceful shutdown that lets in-flight calls finish.
///
/// A `Service`: run it in a `ServiceGroup`, or with `run(until:)` from an executable.
public struct ServiceHost: Service {
  /// What to host and where.
  public struct Configuration: Sendable {
    public var listen: HostPort
    /// The app's services.
    public var services: [any RegistrableRPCService]
    /// Serialized `FileDescriptorSet`s declaring the services (with imports), for reflection.
    public var descriptorSets: [[UInt8]]
    /// The largest request message accepted, in bytes.
    public var maxRequestBytes = 4 * 1024 * 1024
    /// How long the host reports NOT_SERVING, still serving, before it stops taking calls: the
    /// time its sidecar needs to see that and withdraw the endpoint, so a rolling restart
    /// loses no call.
    public var shutdownDelay: Duration = .zero

    public init(
      listen: HostPort, services: [any RegistrableRPCService], descriptorSets: [[UInt8]]
    ) {
      self.listen = listen
      self.services = services
      self.descriptorSets = descriptorSets
    }
  }

  public let health = HealthStatus()
  private let configuration: Configuration
  private let pool: DescriptorPool
  private let hostedServices: [String]
  private let logger: Logger

  /// Fails when the descriptor sets do not describe the services.
  public init(_ configuration: Configuration, logger: Logger) throws {
    self.configuration = configuration
    self.logger = logger
    let files = try configuration.descriptorSets.flatMap {
      try DescriptorPool(fileDescriptorSet: $0).files
    }
    self.pool = try DescriptorPool(
      files: files
        + (try DescriptorPool(fileDescriptorSet: MeshProtosDescriptors.fileDescriptorSet).files))
    var names = Set<String>()
    for service in configuration.services {
      var router = RPCRouter<HTTP2ServerTransport.Posix>()
      service.registerMethods(with: &router)
      for method in router.methods { names.insert(method.service.fullyQualifiedService) }
    }
    for name in names where pool.service(named: name) == nil {
      throw DescriptorError("the descriptor sets do not declare service \(name)")
    }
    self.hostedServices = names.sorted()
  }

  public func run() async throws {
    let address: SocketAddress =
      configuration.listen.isIPv6
      ? .ipv6(host: configuration.listen.host, port: configuration.listen.port)
      : .ipv4(host: configuration.listen.host, port: configuration.listen.port)
    let transport = HTTP2ServerTransport.Posix(
      address: address, transportSecurity: .plaintext,
      config: .defaults { $0.rpc.maxRequestPayloadSize = configuration.maxRequestBytes })
    let reflection = ReflectionService(
      pool: pool,
      serviceNames: (hostedServices + [
        "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
      ]).sorted())
    let server = GRPCServer(
      transport: transport,
      services: configuration.services + [
        HealthService(status: health), reflection, ReflectionServiceV1Alpha(v1: reflection),
      ],
      interceptors: [TracingServerInterceptor(), RequestLogger(logger: logger)])

    try await withGracefulShutdownHandler {
      try await withThrowingDiscardingTaskGroup { group in
        group.addTask { try await server.serve() }
        // When binding fails, serve() throws the reason (the address is taken); let that
        // error, not this one, end the group.
        guard let listening = try? await transport.listeningAddress else { return }
        let bound =
          listening.ipv4.map { "\($0.host):\($0.port)" }
          ?? listening.ipv6.map { "[\($0.host)]:\($0.port)" } ?? "\(listening)"
        health.set(.serving, for: "")
        for name in hostedServices { health.set(.serving, for: name) }
        logger.info(
          "listening",
          metadata: ["address": "\(bound)", "services": .array(hostedServices.map { "\($0)" })])
      }
    } onGracefulShutdown: { [delay = configuration.shutdownDelay] in
      health.shutDown()
      guard delay > .zero else {
        logger.info("shutting down: finishing in-flight calls")
        server.beginGracefulShutdown()
        return
      }
      logger.info(
        "shutting down: reporting NOT_SERVING, still serving", metadata: ["for": "\(delay)"])
      Task {
        try? await Task.sleep(for: delay)
        logger.info("shutting down: finishing in-flight calls")
        server.beginGracefulShutdown()
      }
    }
  }

  /// Runs the host and `others` until SIGTERM or SIGINT, then shuts them down gracefully.
  public func runUntilSignalled(with others: [any Service] = []) async throws {
    let group = ServiceGroup(
      services: [self] + others, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
    try await group.run()
  }
}
