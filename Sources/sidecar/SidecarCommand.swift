import ArgumentParser
import GRPCCore
import Logging
import MeshConfig
import MeshControlClient
import MeshIdentity
import MeshProxy
import MeshServiceKit
import MeshTracing
import ServiceLifecycle

#if canImport(FoundationEssentials)
  import FoundationEssentials
#else
  import Foundation
#endif

/// `sidecar`: the proxy beside every service.
///
/// Started with a bootstrap file (`--config`, see the README); in static mode the bootstrap
/// names a mesh config file with the other services' endpoints and the authorization rules.
/// For quick experiments the same settings can be given as flags instead.
@main
struct SidecarCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "sidecar",
    abstract: "Carry a service's gRPC traffic over mutual TLS with workload identities.",
    discussion: """
      Either --config FILE, or the settings as flags (--service, --app, --cert, --key, --bundle \
      and optionally the rest).
      """)

  @Option(help: "The bootstrap file (YAML).") var config: String?

  @Option(help: "This workload's service name.") var service: String?
  @Option(help: "The local app's h2c address, HOST:PORT.") var app: String?
  @Option(help: "Where peers reach this service (mutual TLS), HOST:PORT.")
  var inbound = "127.0.0.1:15001"
  @Option(help: "Where the local app sends its calls (h2c), HOST:PORT.")
  var outbound = "127.0.0.1:15002"
  @Option(help: "Admin HTTP listener (/ready, /live, /metrics, /certs), HOST:PORT.")
  var admin: String?
  @Option(help: "PEM certificate chain (leaf first).") var cert: String?
  @Option(help: "PEM private key.") var key: String?
  @Option(help: "PEM trust bundle (the mesh's roots).") var bundle: String?
  @Option(help: "The mesh config file (endpoints and authorization, YAML).") var mesh: String?
  @Option(
    name: .customLong("route"),
    help:
      "A service this app calls and a peer sidecar's inbound address: NAME=HOST:PORT. Repeatable."
  )
  var routes: [String] = []
  @Option(help: "Event-loop threads.") var threads = 1
  @Option(help: "The trust domain.") var trustDomain = SPIFFEID.defaultTrustDomain
  @Option(help: "Log level: trace, debug, info, notice, warning, error or critical.")
  var logLevel: String = "info"

  func validate() throws {
    guard Logger.Level(rawValue: logLevel) != nil else {
      throw ValidationError(
        "--log-level \(logLevel) is not one of trace, debug, info, notice, warning, error, critical"
      )
    }
  }

  func run() async throws {
    JSONLogHandler.bootstrap(level: Logger.Level(rawValue: logLevel) ?? .info)
    let logger = Logger(label: "sidecar")
    var configuration: Sidecar.Configuration
    let tls: ProxyTLS
    var keeper: CertificateKeeper?
    // The config stream asks the keeper to renew; the keeper reports new certificates.
    let events = CertificateEvents()
    // The control plane's replicas, one in use at a time by every part of the sidecar.
    var replicas: ControlPlaneReplicas?
    do {
      configuration = try loadConfiguration()
      let bootstrap = configuration.bootstrap
      replicas = bootstrap.controlPlane.map(ControlPlaneReplicas.init)
      if let link = bootstrap.controlPlane {
        // The identity comes from the control plane; the sidecar is not started without it.
        keeper = CertificateKeeper(
          link: link, replicas: replicas!,
          files: .init(
            certificate: bootstrap.certificate, privateKey: bootstrap.privateKey,
            bundle: bootstrap.bundle),
          events: events, logger: logger)
        try await keeper?.ensureCertificate()
      }
      tls = try Self.loadTLS(configuration)
    } catch let error as ValidationError {
      throw error
    } catch {
      StandardError.write("sidecar: \(Self.describe(error))\n")
      throw ExitCode.failure
    }
    let bootstrap = configuration.bootstrap
    // One connection to the replica in use carries the config stream, telemetry and spans.
    let connection = replicas.map {
      ControlPlaneConnection(
        replicas: $0,
        files: .init(
          certificate: bootstrap.certificate, privateKey: bootstrap.privateKey,
          bundle: bootstrap.bundle))
    }
    let exporter = Self.spanExporter(bootstrap, connection: connection, logger: logger)
    if let exporter {
      configuration.spans = exporter.queue
      configuration.appSpans = { bytes in try exporter.relay(bytes) }
      configuration.extraMetrics = { Self.exporterMetrics(exporter) }
    }
    let telemetry = bootstrap.controlPlane.map { _ in LiveTelemetry() }
    configuration.telemetry = telemetry
    let sidecar = Sidecar(configuration: configuration, tls: tls, logger: logger)
    // A service group stops its services one at a time, last first: the telemetry reporter,
    // then the subscriber (which withdraws the endpoint, so peers stop sending calls here),
    // then the sidecar (GOAWAY; the calls in flight finish), then the keeper, then the span
    // exporter, so the spans of the calls the drain let finish are sent too, and the
    // connection to the control plane they all used last.
    var services: [any Service] =
      (connection.map { [$0] } ?? []) + (exporter.map { [$0] } ?? []) + (keeper.map { [$0] } ?? [])
    services.append(sidecar)
    if let connection, let state = bootstrap.state {
      // Routes and rules come from the control plane; until it answers, the last config this
      // sidecar ran (or the bootstrap's mesh file) serves.
      let advertised = sidecar.advertised
      let subscriber = ConfigSubscriber(
        connection: connection,
        files: .init(
          certificate: bootstrap.certificate, privateKey: bootstrap.privateKey,
          bundle: bootstrap.bundle),
        identity: .init(service: bootstrap.service, trustDomain: configuration.mesh.trustDomain),
        advertised: { await advertised.value() },
        registering: bootstrap.registration.map {
          .init(app: bootstrap.app, labels: $0.labels, lease: $0.lease)
        },
        base: configuration.mesh, state: state, events: events, logger: logger
      ) { config, version in sidecar.apply(config, version: version) }
      if let persisted = subscriber.persisted() {
        sidecar.apply(persisted.config, version: persisted.version)
        logger.info("using the persisted config", metadata: ["version": "\(persisted.version)"])
      }
      services.append(subscriber)
      if let telemetry {
        // Live figures for `meshctl top` and `meshctl tap`.
        services.append(
          TelemetryReporter(
            connection: connection,
            telemetry: telemetry, instance: { await advertised.value() },
            endpoints: { [routing = sidecar.routing] in routing.endpointSnapshots() },
            logger: logger))
      }
    }
    let group = ServiceGroup(
      services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
    do {
      try await group.run()
    } catch let error as ListenError {
      StandardError.write("sidecar: \(error)\n")
      throw ExitCode.failure
    }
  }

  /// Where the sidecar's spans (and its app's) go: the bootstrap's collector, or the control
  /// plane's; nil (nothing recorded) without either.
  private static func spanExporter(
    _ bootstrap: SidecarBootstrap, connection: ControlPlaneConnection?, logger: Logger
  ) -> SpanExporter? {
    let destination: OTLPTraceSender.Destination
    if let collector = bootstrap.collector {
      destination = .plaintext(collector)
    } else if let connection {
      destination = .controlPlane(connection)
    } else {
      return nil
    }
    let sender = OTLPTraceSender(destination)
    logger.info("exporting spans", metadata: ["collector": "\(sender.description)"])
    return SpanExporter(
      queue: SpanQueue(),
      resource: [
        .string(SpanAttribute.serviceName, bootstrap.service),
        .string(SpanAttribute.component, "sidecar"),
        .string("service.instance.id", "\(bootstrap.advertise)"),
      ],
      logger: logger, send: { try await sender.send($0) })
  }

  private static func exporterMetrics(_ exporter: SpanExporter) -> String {
    """
    # HELP trellis_spans_recorded_total Spans this sidecar recorded for export.
    # TYPE trellis_spans_recorded_total counter
    trellis_spans_recorded_total \(exporter.queue.recorded)
    # HELP trellis_spans_dropped_total Spans lost: the export queue was full, or an export failed.
    # TYPE trellis_spans_dropped_total counter
    trellis_spans_dropped_total \(exporter.queue.dropped)
    # HELP trellis_span_export_failures_total Span exports the collector did not accept.
    # TYPE trellis_span_export_failures_total counter
    trellis_span_export_failures_total \(exporter.failures)

    """
  }

  private func loadConfiguration() throws -> Sidecar.Configuration {
    if let config {
      let flags = [
        service, app, admin, cert, key, bundle, mesh,
      ].compactMap { $0 }
      guard flags.isEmpty, routes.isEmpty else {
        throw ValidationError("--config: give the settings in the file or as flags, not both")
      }
      let text = try Self.read(config)
      let directory = URL(fileURLWithPath: config).deletingLastPathComponent().path
      let bootstrap = try SidecarBootstrap(yaml: text, file: config, directory: directory)
      var meshConfig = MeshConfig(trustDomain: bootstrap.trustDomain)
      if let mesh = bootstrap.mesh {
        meshConfig = try MeshConfig(yaml: try Self.read(mesh), file: mesh)
      }
      return .init(bootstrap: bootstrap, mesh: meshConfig)
    }
    guard let service, let app, let cert, let key, let bundle else {
      throw ValidationError(
        "give --config FILE, or --service, --app, --cert, --key and --bundle")
    }
    func address(_ text: String, _ flag: String) throws -> Address {
      do { return try Address(parsing: text) } catch {
        throw ValidationError("--\(flag): \(error)")
      }
    }
    let bootstrap = SidecarBootstrap(
      service: service, app: try address(app, "app"), inbound: try address(inbound, "inbound"),
      outbound: try address(outbound, "outbound"),
      admin: try admin.map { try address($0, "admin") }, certificate: cert, privateKey: key,
      bundle: bundle, mesh: mesh, trustDomain: trustDomain, threads: threads)
    var meshConfig = MeshConfig(trustDomain: trustDomain)
    if let mesh { meshConfig = try MeshConfig(yaml: try Self.read(mesh), file: mesh) }
    for route in routes {
      let parts = route.split(separator: "=", maxSplits: 1).map(String.init)
      guard parts.count == 2, !parts[0].isEmpty else {
        throw ValidationError("--route \(route): expected NAME=HOST:PORT")
      }
      _ = try SPIFFEID.workload(parts[0], trustDomain: trustDomain)
      meshConfig.services[parts[0], default: .init()].endpoints.append(
        .init(address: try address(parts[1], "route")))
    }
    return .init(bootstrap: bootstrap, mesh: meshConfig)
  }

  /// A start-up failure in words: a refused join names the gRPC status.
  private static func describe(_ error: any Error) -> String {
    if let error = error as? RPCError {
      return
        """
        cannot get a certificate from the control plane: \(error.code.canonicalName): \
        \(error.message)
        """
    }
    return "\(error)"
  }

  private static func read(_ path: String) throws -> String {
    do {
      return try String(contentsOfFile: path, encoding: .utf8)
    } catch {
      throw ConfigError(
        file: path, line: nil, column: nil, field: "", message: "cannot read the file")
    }
  }

  private static func loadTLS(_ configuration: Sidecar.Configuration) throws -> ProxyTLS {
    let bootstrap = configuration.bootstrap
    return try ProxyTLS(
      certificate: bootstrap.certificate, privateKey: bootstrap.privateKey,
      bundle: bootstrap.bundle, trustDomain: configuration.mesh.trustDomain)
  }
}
