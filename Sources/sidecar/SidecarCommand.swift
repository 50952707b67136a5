import ArgumentParser
import Foundation
import Logging
import MeshIdentity
import MeshProxy
import MeshServiceKit
import ServiceLifecycle

/// `sidecar`: the proxy beside every service.
///
/// Static mode: identity from certificate files and routes from flags. The bootstrap file and
/// the control plane's pushed config replace the flags.
@main
struct SidecarCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "sidecar",
    abstract: "Carry a service's gRPC traffic over mutual TLS with workload identities.")

  @Option(help: "This workload's service name.") var service: String
  @Option(help: "The local app's h2c address, HOST:PORT.") var app: String
  @Option(help: "Where peers reach this service (mutual TLS), HOST:PORT.")
  var inbound = "127.0.0.1:15001"
  @Option(help: "Where the local app sends its calls (h2c), HOST:PORT.")
  var outbound = "127.0.0.1:15002"
  @Option(help: "PEM certificate chain (leaf first).") var cert: String
  @Option(help: "PEM private key.") var key: String
  @Option(help: "PEM trust bundle (the mesh's roots).") var bundle: String
  @Option(
    name: .customLong("route"),
    help:
      "A service this app calls and a peer sidecar's inbound address: NAME=HOST:PORT. Repeatable."
  )
  var routes: [String] = []
  @Option(help: "Event-loop threads.") var threads = 1
  @Option(help: "The trust domain.") var trustDomain = SPIFFEID.defaultTrustDomain

  func run() async throws {
    JSONLogHandler.bootstrap()
    let logger = Logger(label: "sidecar")
    func address(_ text: String, _ flag: String) throws -> HostPort {
      do { return try HostPort(parsing: text) } catch {
        throw ValidationError("--\(flag): \(error)")
      }
    }
    let appAddress = try address(app, "app")
    let inboundAddress = try address(inbound, "inbound")
    let outboundAddress = try address(outbound, "outbound")
    var table: [String: [Endpoint]] = [:]
    for route in routes {
      let parts = route.split(separator: "=", maxSplits: 1).map(String.init)
      guard parts.count == 2, !parts[0].isEmpty else {
        throw ValidationError("--route \(route): expected NAME=HOST:PORT")
      }
      let target = try address(parts[1], "route")
      let identity = try SPIFFEID.workload(parts[0], trustDomain: trustDomain)
      table[parts[0], default: []].append(
        Endpoint(host: target.host, port: target.port, expectedIdentity: identity.description))
    }
    let tls: ProxyTLS
    do {
      let chain = try CertificateFiles.readCertificates(cert)
      guard let keyText = try? String(contentsOfFile: key, encoding: .utf8) else {
        throw IdentityError("cannot read \(key)")
      }
      let trust = TrustBundle(roots: try CertificateFiles.readCertificates(bundle))
      tls = try ProxyTLS(
        certificateChain: chain, privateKeyPEM: keyText, bundle: trust, trustDomain: trustDomain)
    } catch {
      FileHandle.standardError.write(Data("sidecar: \(error)\n".utf8))
      throw ExitCode.failure
    }
    let sidecar = Sidecar(
      configuration: .init(
        service: service, inboundListen: (inboundAddress.host, inboundAddress.port),
        outboundListen: (outboundAddress.host, outboundAddress.port),
        app: Endpoint(host: appAddress.host, port: appAddress.port), routes: table),
      tls: tls, threads: threads, logger: logger)
    let group = ServiceGroup(
      services: [sidecar], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
    try await group.run()
  }
}
