import ArgumentParser
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
import Logging
import MeshDashboard
import MeshIdentity
import MeshProtos
import MeshServiceKit
import NIOSSL
import X509

/// `meshctl dashboard`: the mesh in a browser — the live service graph, each service's
/// figures, callers and callees, and trace search with waterfalls — read from the control
/// plane as the operator.
struct Dashboard: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Serve the web dashboard: service graph, services, traces.",
    usage: "meshctl dashboard [<options>]",
    discussion: """
      It reads from the control plane as the operator (--certs) and serves plain HTTP on \
      loopback: whoever reaches the page sees what the operator sees. With --allow-remote it \
      may listen on any address, and then serves HTTPS (the operator's certificate) to \
      browsers that present an operator's client certificate of the mesh only. Ctrl-C stops.
      """)

  @Option(help: "Where to serve, HOST:PORT (loopback unless --allow-remote).")
  var listen = "127.0.0.1:15080"
  @Flag(
    help: """
      Allow an address other than loopback: HTTPS, and only for clients with an operator's \
      certificate of the mesh (spiffe://…/operator/…).
      """)
  var allowRemote = false
  @OptionGroup var controlPlane: ControlPlaneOptions

  func validate() throws {
    let address = try Self.address(listen)
    guard Self.isLoopback(address.host) || allowRemote else {
      throw ValidationError(
        """
        --listen \(listen): the dashboard serves on loopback only (127.0.0.1, ::1 or \
        localhost) unless told --allow-remote, which requires an operator's client \
        certificate; it shows what the operator may see
        """)
    }
  }

  static func address(_ text: String) throws -> HostPort {
    do {
      return try HostPort(parsing: text)
    } catch {
      throw ValidationError("--listen \(text): \(error)")
    }
  }

  static func isLoopback(_ host: String) -> Bool {
    host == "localhost" || host == "::1" || host.hasPrefix("127.")
  }

  /// HTTPS with the operator's certificate, for clients that present an operator's certificate
  /// of the mesh (checked as an X.509-SVID against the trust bundle, its path `/operator/…`).
  static func operatorsOnly(_ certs: String) throws -> HTTPServerBuilder {
    let files = CAFiles(dir: certs)
    var tls = TLSConfiguration.makeServerConfiguration(
      certificateChain: try NIOSSLCertificate.fromPEMFile(files.operatorCertificate).map {
        .certificate($0)
      },
      privateKey: .privateKey(try NIOSSLPrivateKey(file: files.operatorKey, format: .pem)))
    tls.minimumTLSVersion = .tlsv12
    tls.certificateVerification = .noHostnameVerification
    tls.trustRoots = .file(files.bundle)
    let bundle = try TrustBundle(pem: String(contentsOfFile: files.bundle, encoding: .utf8))
    let validator = SVIDValidator(bundle: bundle)
    return try .tls(
      .http1(),
      configuration: TLSChannelConfiguration(
        tlsConfiguration: tls,
        customAsyncVerificationCallback: { certificates in
          do {
            let chain = try certificates.map { try Certificate(derEncoded: try $0.toDERBytes()) }
            let identity = try await validator.validate(chain: chain, as: .client)
            return identity.path.hasPrefix("/operator/") ? .certificateVerified : .failed
          } catch {
            return .failed
          }
        }))
  }

  func run() async throws {
    let address = try Self.address(listen)
    let logger = Logger(label: "dashboard")
    let source = try ControlPlaneSource(controlPlane)
    // The logs of what `meshctl up` started here, when it did (followed across restarts).
    let logs =
      ShopRun.load() == nil
      ? nil
      : LogCollector { ShopRun.load()?.logSources ?? [] }
    let server = DashboardServer(source: source, logs: logs, logger: logger)
    let scheme = allowRemote ? "https" : "http"
    let application = Application(
      router: server.router(),
      server: allowRemote ? try Self.operatorsOnly(controlPlane.certs) : .http1(),
      configuration: .init(address: .hostname(address.host, port: address.port), serverName: nil),
      onServerRunning: { channel in
        let bound = channel.localAddress?.port.map { "\(address.host):\($0)" } ?? listen
        FileHandle.standardOutput.write(
          Data("The dashboard is at \(scheme)://\(bound)/ (Ctrl-C stops)\n".utf8))
      }, logger: logger)
    try await withThrowingDiscardingTaskGroup { group in
      for client in source.clients {
        group.addTask { try await client.runConnections() }
      }
      defer {
        for client in source.clients { client.beginGracefulShutdown() }
      }
      try await application.runService()
    }
  }
}

/// The control plane as the dashboard reads it: a client per replica `--control-plane` names
/// (connected as the operator, kept for the dashboard's life). What the replicas share (the
/// config, in their store) is asked of the first that answers; what each knows of its own
/// sidecars (live figures, spans, endpoints, taps, statuses) of every one, and merged.
final class ControlPlaneSource: DashboardSource {
  let clients: [GRPCClient<HTTP2ClientTransport.Posix>]
  let names: [String]

  init(_ options: ControlPlaneOptions) throws {
    let files = CAFiles(dir: options.certs)
    for path in [files.operatorCertificate, files.operatorKey, files.bundle]
    where !FileManager.default.fileExists(atPath: path) {
      throw MeshctlFailure("cannot read \(path): run meshctl certs init, or pass --certs")
    }
    let targets = try options.addresses()
    names = targets.map { "\($0)" }
    clients = try targets.map { target in
      GRPCClient(
        transport: try HTTP2ClientTransport.Posix(
          target: target.target,
          transportSecurity: .meshIdentity(
            certificate: files.operatorCertificate, key: files.operatorKey, bundle: files.bundle)
        ))
    }
  }

  /// `call`'s answer at the first replica that gives one; a replica that cannot be reached
  /// passes the call to the next.
  private func first<Result: Sendable>(
    _ call: @Sendable (GRPCClient<HTTP2ClientTransport.Posix>) async throws -> Result
  ) async throws -> Result {
    var failure: (any Error)?
    for client in clients {
      do {
        return try await call(client)
      } catch let error as RPCError where error.code == .unavailable {
        failure = error
      }
    }
    throw failure ?? MeshctlFailure("no control plane is named")
  }

  /// `call`'s answer at every replica at once, by replica name; one that fails or does not
  /// answer within 5 s is left out, unless none answers.
  private func every<Result: Sendable>(
    _ call: @escaping @Sendable (GRPCClient<HTTP2ClientTransport.Posix>) async throws -> Result
  ) async throws -> [(replica: String, answer: Result)] {
    guard clients.count > 1 else { return [(names[0], try await call(clients[0]))] }
    let results = await withTaskGroup(
      of: (Int, Swift.Result<Result, any Error>).self
    ) { group in
      for (index, client) in clients.enumerated() {
        group.addTask {
          do {
            return (index, .success(try await call(client)))
          } catch {
            return (index, .failure(error))
          }
        }
      }
      group.addTask {
        try? await Task.sleep(for: .seconds(5))
        return (-1, .failure(CancellationError()))
      }
      var results: [(Int, Swift.Result<Result, any Error>)] = []
      for await result in group {
        if result.0 == -1 { break }
        results.append(result)
        if results.count == clients.count { break }
      }
      group.cancelAll()
      return results
    }
    let answers = results.sorted { $0.0 < $1.0 }.compactMap { index, result in
      (try? result.get()).map { (names[index], $0) }
    }
    guard !answers.isEmpty else {
      // Every replica failed: the first failure says why.
      for (_, result) in results { _ = try result.get() }
      throw MeshctlFailure("no control plane answered within 5 s")
    }
    return answers
  }

  func top(_ request: Trellis_Mesh_V1_TopRequest) async throws -> Trellis_Mesh_V1_TopResponse {
    ReplicaMerge.top(
      try await every { try await Trellis_Mesh_V1_Telemetry.Client(wrapping: $0).top(request) }
        .map(\.answer))
  }

  func status() async throws -> Trellis_Mesh_V1_StatusResponse {
    ReplicaMerge.status(
      try await every {
        try await Trellis_Mesh_V1_Admin.Client(wrapping: $0).status(Trellis_Mesh_V1_StatusRequest())
      }.map { ($0.replica, $0.answer) }
    ).status
  }

  func endpoints(service: String) async throws -> Trellis_Mesh_V1_EndpointsResponse {
    var request = Trellis_Mesh_V1_EndpointsRequest()
    request.service = service
    return ReplicaMerge.endpoints(
      try await every { [request] in
        try await Trellis_Mesh_V1_Telemetry.Client(wrapping: $0).endpoints(request)
      }.map(\.answer))
  }

  func configVersions() async throws -> [Trellis_Mesh_V1_ConfigVersion] {
    try await first {
      try await Trellis_Mesh_V1_Admin.Client(wrapping: $0).listConfigVersions(.init()).versions
    }
  }

  func config(version: Int64) async throws -> Trellis_Mesh_V1_ConfigVersion {
    var request = Trellis_Mesh_V1_GetConfigRequest()
    request.version = version
    do {
      return try await first { [request] in
        try await Trellis_Mesh_V1_Admin.Client(wrapping: $0).getConfig(request)
      }
    } catch let error as RPCError where error.code == .notFound {
      throw HTTPError(.notFound, message: error.message)
    }
  }

  /// Opened at every replica (each hears the calls of its own sidecars); ends when they all
  /// have, with the first failure when none could tap.
  func tap(
    _ request: Trellis_Mesh_V1_TapRequest,
    each: @escaping @Sendable (Trellis_Mesh_V1_TapEvent) async throws -> Void
  ) async throws {
    let failures = await withTaskGroup(of: (any Error)?.self) { group in
      for client in clients {
        group.addTask {
          do {
            try await Trellis_Mesh_V1_Telemetry.Client(wrapping: client).tap(request) { response in
              for try await event in response.messages { try await each(event) }
            }
            return nil
          } catch {
            return error
          }
        }
      }
      var failures: [any Error] = []
      for await failure in group { if let failure { failures.append(failure) } }
      return failures
    }
    if failures.count == clients.count, let first = failures.first { throw first }
  }

  func listTraces(
    _ filter: Trellis_Mesh_V1_TraceFilter
  ) async throws -> Trellis_Mesh_V1_ListTracesResponse {
    var request = Trellis_Mesh_V1_ListTracesRequest()
    request.filter = filter
    return ReplicaMerge.traces(
      try await every { [request] in
        try await Trellis_Mesh_V1_Traces.Client(wrapping: $0).listTraces(request)
      }.map(\.answer), limit: filter.limit == 0 ? 20 : Int(filter.limit))
  }

  func traces(ids: [String]) async throws -> [OTLPExportRequest] {
    var request = Trellis_Mesh_V1_GetTracesRequest()
    request.traceIds = ids
    // A trace's spans are kept where their sidecars sent them: every replica's, together.
    return try await every { [request] in
      try await Trellis_Mesh_V1_Traces.Client(wrapping: $0).getTraces(request) { response in
        var all: [OTLPExportRequest] = []
        for try await message in response.messages { all.append(message) }
        return all
      }
    }.flatMap(\.answer)
  }
}
