import ArgumentParser
import EtcdAPI
import Foundation
import Logging
import MeshConfig
import MeshControlPlane
import MeshIdentity
import MeshServiceKit
import ServiceLifecycle

/// `control-plane`: the mesh's certificate authority and configuration store.
@main
struct ControlPlaneCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "control-plane",
    abstract: "Run the Trellis control plane: the mesh's CA and its configuration store.",
    usage: "control-plane [<options>]")

  @Option(help: "The mutual-TLS API (renewals, admin methods), HOST:PORT.")
  var listen = "127.0.0.1:15000"
  @Option(help: "The join listener (first certificates, paid for with a join token), HOST:PORT.")
  var join = "127.0.0.1:15001"
  @Option(
    help: """
      The host this control plane is reached at, as other replicas list it (`meshctl get \
      replicas`), when it listens on 0.0.0.0 or behind an address of another host.
      """)
  var advertise: String?
  @Option(help: "Folder holding the CA from `meshctl certs init`.") var certs = "certs"
  @Option(help: "Folder for the control plane's state.") var data = ".trellis/control-plane"
  @Option(
    help: """
      Where the state lives: sqlite (in --data) or etcd://HOST:PORT[,HOST:PORT…] (etcd's client \
      ports; the private keys stay in --data).
      """)
  var store = "sqlite"
  @Option(
    help: """
      With an etcd store: TLS to etcd's client ports, the members' certificates checked \
      against this CA (PEM). They must name the addresses in --store.
      """)
  var etcdCacert: String?
  @Option(help: "With --etcd-cacert: a client certificate for etcd (PEM; --client-cert-auth).")
  var etcdCert: String?
  @Option(help: "With --etcd-cert: its private key (PEM).") var etcdKey: String?
  @Option(
    help: """
      This control plane's name among those sharing an etcd store (default: the one kept in \
      --data/replica, made at first start).
      """)
  var replica: String?
  @Option(
    help: """
      How long a sidecar's config stream lasts (±20 %) before it is ended and the sidecar \
      subscribes again at a replica of its choosing: 30m, 1h.
      """)
  var configStreamAge = "30m"
  @Option(help: "Config streams served at once; more are sent to another replica.")
  var maxConfigStreams = 20_000
  @Option(
    help: """
      How long a sidecar's connection may be silent before it is pinged; one that does not \
      answer within a third of that (at most 10 s) is closed, and its stream freed: 30s, 2m.
      """)
  var keepalive = "30s"
  @Option(help: "The trust domain.") var trustDomain = SPIFFEID.defaultTrustDomain
  @Option(help: "Default lifetime of the certificates it issues: 90s, 15m, 24h.")
  var leafLifetime = "24h"
  @Option(help: "Log level: trace, debug, info, notice, warning, error or critical.")
  var logLevel = "info"
  @Option(help: "Spans the trace store keeps at most; the oldest traces go first.")
  var traceMaxSpans = 200_000
  @Option(help: "How long the trace store keeps a trace: 30m, 24h, 7d.")
  var traceRetention = "24h"

  /// TLS to etcd, as the --etcd-… options ask.
  private func etcdTLS() throws -> EtcdClient.TLS? {
    guard let etcdCacert else {
      guard etcdCert == nil, etcdKey == nil else {
        throw ValidationError("--etcd-cert and --etcd-key need --etcd-cacert")
      }
      return nil
    }
    do {
      return try EtcdClient.TLS(caFile: etcdCacert, certificateFile: etcdCert, keyFile: etcdKey)
    } catch {
      throw ValidationError("TLS to etcd: \(error) (--etcd-cacert, --etcd-cert, --etcd-key)")
    }
  }

  func run() async throws {
    guard let level = Logger.Level(rawValue: logLevel) else {
      throw ValidationError("--log-level \(logLevel) is not a log level")
    }
    guard let lifetime = parseDuration(leafLifetime), lifetime >= .seconds(60) else {
      throw ValidationError("--leaf-lifetime \(leafLifetime): expected a duration of at least 60s")
    }
    guard let retention = parseDuration(traceRetention), retention >= .seconds(60) else {
      throw ValidationError(
        "--trace-retention \(traceRetention): expected a duration of at least 60s")
    }
    guard traceMaxSpans >= 100 else {
      throw ValidationError("--trace-max-spans \(traceMaxSpans): keep at least 100 spans")
    }
    let listenAddress: HostPort
    let joinAddress: HostPort
    do {
      listenAddress = try HostPort(parsing: listen)
      joinAddress = try HostPort(parsing: join)
    } catch {
      throw ValidationError("\(error)")
    }
    let storeLocation: ControlPlane.Store
    if store == "sqlite" {
      guard etcdCacert == nil, etcdCert == nil, etcdKey == nil else {
        throw ValidationError("--etcd-cacert, --etcd-cert and --etcd-key go with --store etcd://…")
      }
      storeLocation = .sqlite
    } else if !store.hasPrefix("etcd://") {
      throw ValidationError(
        "--store: expected sqlite or etcd://HOST:PORT[,HOST:PORT…], got '\(store)'")
    } else {
      do {
        storeLocation = .etcd(try EtcdClient.endpoints(parsing: store), tls: try etcdTLS())
      } catch let error as ValidationError {
        throw error
      } catch {
        throw ValidationError("--store: \(error)")
      }
    }
    JSONLogHandler.bootstrap(level: level)
    let logger = Logger(label: "control-plane")
    var configuration = ControlPlane.Configuration(
      listen: (listenAddress.host, listenAddress.port),
      join: (joinAddress.host, joinAddress.port),
      certs: certs, data: data, trustDomain: trustDomain, leafLifetime: lifetime.timeInterval)
    configuration.traceRetention = .init(maximumSpans: traceMaxSpans, maximumAge: retention)
    configuration.store = storeLocation
    if let advertise {
      let bracketed = advertise.contains(":") ? "[\(advertise)]" : advertise
      guard !advertise.isEmpty, (try? HostPort(parsing: "\(bracketed):1")) != nil else {
        throw ValidationError("--advertise '\(advertise)': expected a host name or an address")
      }
      configuration.advertise = advertise
    }
    guard let age = parseDuration(configStreamAge), age >= .seconds(1) else {
      throw ValidationError(
        "--config-stream-age \(configStreamAge): expected a duration such as 30m")
    }
    guard maxConfigStreams >= 1 else {
      throw ValidationError("--max-config-streams \(maxConfigStreams): at least 1")
    }
    guard let keepaliveTime = parseDuration(keepalive), keepaliveTime >= .seconds(1) else {
      throw ValidationError("--keepalive \(keepalive): expected a duration of 1s or more")
    }
    configuration.keepalive.time = keepaliveTime
    configuration.keepalive.timeout = min(keepaliveTime / 3, .seconds(10))
    configuration.configStreamAge = age
    configuration.maximumConfigStreams = maxConfigStreams
    if let replica {
      guard !replica.isEmpty, replica.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" })
      else {
        throw ValidationError("--replica '\(replica)': use letters, digits and '-'")
      }
      configuration.replica = replica
    }
    let plane = ControlPlane(configuration, logger: logger)
    do {
      let group = ServiceGroup(
        services: [plane], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
      try await group.run()
    } catch {
      var text = "\(error)"
      if String(reflecting: error).contains("Address already in use") {
        text = "cannot listen on \(listen) or \(join): the address is already in use"
      }
      FileHandle.standardError.write(Data("control-plane: \(text)\n".utf8))
      throw ExitCode.failure
    }
  }
}
