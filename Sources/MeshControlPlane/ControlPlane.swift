import Crypto
import EtcdAPI
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import MeshIdentity
import NIOCore
import ServiceLifecycle
import X509

/// The control plane: the mesh's certificate authority and configuration store, served over
/// two listeners.
///
/// - `listen`: mutual TLS. Every caller presents an SVID of the mesh: workloads renew their
///   certificates here, the operator runs the admin methods.
/// - `join`: TLS without a client certificate, for a workload's first certificate, paid for
///   with a join token. Only `Identity` is served there.
///
/// The control plane's own certificate (`spiffe://<td>/svc/control-plane`) is issued at start
/// by the issuer it signs with.
public struct ControlPlane: Service {
  public struct Configuration: Sendable {
    public var listen: (host: String, port: Int)
    public var join: (host: String, port: Int)
    /// Where `meshctl certs init` wrote the CA (the issuer and its key, the bundle).
    public var certs: String
    /// Where the state lives (`control.sqlite`), and the traces; with etcd, the issuer keys.
    public var data: String
    /// The store: SQLite in `data` (the default), or an etcd cluster.
    public var store: Store = .sqlite
    /// This control plane's name among those sharing an etcd store; nil: the one kept in
    /// `data/replica`, made at first start.
    public var replica: String?
    /// How often the leader sweeps expired records (and, on etcd, compacts history).
    public var sweepInterval: Duration = .seconds(60)
    /// How long a sidecar's config stream lasts (±20 %) before it is ended, so that sidecars
    /// spread again over the replicas; and how many streams it serves at once.
    public var configStreamAge: Duration = .seconds(1800)
    public var maximumConfigStreams = 20_000
    /// Keepalive on the mutual-TLS listener. A connection silent for `time` is pinged, and
    /// closed when nothing has come from it `timeout` twice over after that (`SilentPeerHandler`),
    /// so that a sidecar whose host vanished (no FIN, no RST) or whose process hangs gives back
    /// its stream. Sidecars ping each 10 s to find a hung replica, on config streams idle for
    /// minutes: allowed, where gRPC's default (one ping each 5 minutes) sends them away for
    /// `too_many_pings` after the third.
    public var keepalive = HTTP2ServerTransport.Config.Keepalive(
      time: .seconds(30), timeout: .seconds(10),
      clientBehavior: .init(minPingIntervalWithoutCalls: .seconds(5), allowWithoutCalls: true))
    public var trustDomain: String
    public var leafLifetime: TimeInterval
    /// How many spans, and for how long, the trace store keeps.
    public var traceRetention = TraceStore.Retention()
    /// The host other replicas' tools and sidecars reach this one at, when it is not the one
    /// it listens on (`0.0.0.0`, or an address behind a NAT); nil: the listening address.
    public var advertise: String?

    public init(
      listen: (host: String, port: Int), join: (host: String, port: Int), certs: String,
      data: String, trustDomain: String, leafLifetime: TimeInterval
    ) {
      self.listen = listen
      self.join = join
      self.certs = certs
      self.data = data
      self.trustDomain = trustDomain
      self.leafLifetime = leafLifetime
    }
  }

  /// Where the control plane keeps its state.
  public enum Store: Sendable, Equatable {
    case sqlite
    /// The members' client ports (`--store etcd://HOST:PORT[,HOST:PORT…]`); the private keys
    /// stay in `data/keys`.
    case etcd([EtcdClient.Endpoint], tls: EtcdClient.TLS? = nil)
  }

  private let configuration: Configuration
  private let logger: Logger

  public init(_ configuration: Configuration, logger: Logger) {
    self.configuration = configuration
    self.logger = logger
  }

  public func run() async throws {
    let store: any ControlStore
    var etcd: EtcdClient?
    let replica = try configuration.replica ?? Self.replicaName(in: configuration.data)
    let startedAt = Date()
    switch configuration.store {
    case .sqlite:
      store = try SQLiteControlStore(directory: configuration.data)
    case .etcd(let endpoints, let tls):
      let client = try EtcdClient(endpoints: endpoints, tls: tls)
      Task { try await client.run() }
      etcd = client
      try await client.waitUntilReachable(timeout: .seconds(30))
      store = try EtcdControlStore(
        etcd: client, replica: replica, keyDirectory: configuration.data + "/keys")
      logger.info(
        "store",
        metadata: [
          "etcd": "\(endpoints.map(\.description).joined(separator: ","))", "replica": "\(replica)",
          "tls": "\(tls == nil ? "off" : tls?.certificateFile == nil ? "on" : "mutual")",
        ])
    }
    defer { etcd?.close() }
    let traces = try TraceStore(
      directory: configuration.data, retention: configuration.traceRetention)
    let trust = try MeshTrust(try await loadTrust(store), trustDomain: configuration.trustDomain)
    var context = try await ControlContext(
      store: store, trust: trust, defaultLeafLifetime: configuration.leafLifetime)
    context.configStreamAge = configuration.configStreamAge
    context.maximumConfigStreams = configuration.maximumConfigStreams
    let control = context
    let identity = trust.identity

    // Both listeners read the certificate in force, and the mutual-TLS one the roots in force,
    // at every handshake: a rotation changes them without a restart.
    let generation = trust.current
    let own = trust.own
    let chain: [TLSConfig.CertificateSource] = own.chainPEM.map {
      .bytes(Array($0.utf8), format: .pem)
    }
    let key = TLSConfig.PrivateKeySource.bytes(Array(own.keyPEM.utf8), format: .pem)
    var transportConfig = HTTP2ServerTransport.Posix.Config.defaults
    transportConfig.connection.keepalive = configuration.keepalive
    // A ping not answered starts a graceful close (GOAWAY, and a wait for an acknowledgement),
    // which a vanished peer never finishes: silent past the ping's timeout and as long again,
    // its connection is closed.
    let keepalive = configuration.keepalive
    transportConfig.channelDebuggingCallbacks.onAcceptTCPConnection = SilentPeerHandler.installer(
      limit: keepalive.time + keepalive.timeout * 2)
    let telemetry = TelemetryHub()
    let services: [any RegistrableRPCService] = [
      IdentityService(control), AdminService(control), ConfigService(control),
      CollectorService(store: traces), TracesService(store: traces),
      TelemetryService(hub: telemetry),
    ]
    // The mutual-TLS listener: the front (OpenSSL, and config streams on the HTTP/2 core) when
    // the system's OpenSSL 3 loads, else grpc-swift's own.
    let main: MainListener
    if let reason = ControlFront.unavailable() {
      logger.warning(
        "serving every connection on grpc-swift's TLS, about 200 KB per sidecar",
        metadata: ["reason": "\(reason)"])
      let mtls = HTTP2ServerTransport.Posix(
        address: .ipv4(host: configuration.listen.host, port: configuration.listen.port),
        transportSecurity: .mTLS(certificateChain: chain, privateKey: key) { tls in
          tls.trustRoots = .certificates([.bytes(Array(generation.bundlePEM.utf8), format: .pem)])
          tls.clientCertificateVerification = .noHostnameVerification
          tls.customVerificationCallback = trust.verify
          tls.certificateReloader = trust
        },
        config: transportConfig)
      main = MainListener(server: GRPCServer(transport: mtls, services: services)) {
        try? await mtls.listeningAddress
      }
    } else {
      let listener = ControlFront(
        host: configuration.listen.host, port: configuration.listen.port, trust: trust,
        calls: NativeCalls(control: control, telemetry: telemetry, traces: traces),
        pingAfter: TimeAmount(keepalive.time),
        closeAfter: TimeAmount(keepalive.timeout * 2))
      let front = HTTP2ServerTransport.Custom(
        listenerFactory: listener,
        config: .init(
          compression: transportConfig.compression, connection: transportConfig.connection,
          http2: transportConfig.http2, rpc: transportConfig.rpc,
          channelDebuggingCallbacks: transportConfig.channelDebuggingCallbacks))
      main = MainListener(server: GRPCServer(transport: front, services: services)) {
        // gRPC's own answer is the carrier's; the listener's address is the front's.
        _ = await front.listeningAddress
        guard let bound = listener.listeningAddress, let port = bound.port else { return nil }
        switch bound {
        case .v4(let address): return .ipv4(host: address.host, port: port)
        case .v6(let address): return .ipv6(host: address.host, port: port)
        case .unixDomainSocket: return nil
        }
      }
    }
    let join = HTTP2ServerTransport.Posix(
      address: .ipv4(host: configuration.join.host, port: configuration.join.port),
      transportSecurity: .tls(certificateChain: chain, privateKey: key) { tls in
        tls.certificateReloader = trust
      })
    let joinServer = GRPCServer(transport: join, services: [IdentityService(control)])

    try await withGracefulShutdownHandler {
      try await withThrowingDiscardingTaskGroup { group in
        group.addTask { try await main.serve() }
        group.addTask { try await joinServer.serve() }
        group.addTask {
          // What other control planes on the same store change reaches this one's sidecars.
          try await cancelWhenGracefulShutdown { try await control.followStore(logger: logger) }
        }
        group.addTask { [sweepInterval = configuration.sweepInterval] in
          // What must happen once, whatever the number of control planes, their leader does.
          try? await cancelWhenGracefulShutdown {
            try await store.whileLeading {
              logger.info("leading: sweeping the store", metadata: ["store": "\(store.kind)"])
              defer { logger.info("no longer leading") }
              while !Task.isCancelled {
                do {
                  let swept = try await store.sweep(now: Date())
                  if swept > 0 {
                    logger.info("swept expired records", metadata: ["count": "\(swept)"])
                  }
                } catch {
                  logger.error("cannot sweep the store", metadata: ["error": "\(error)"])
                }
                try await Task.sleep(for: sweepInterval)
              }
            }
          }
        }
        group.addTask {
          // A sidecar that vanished loses its registration when its lease runs out.
          while !Task.isShuttingDownGracefully, !Task.isCancelled {
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: .seconds(1)) }
            do {
              try await control.expireRegistrations()
            } catch {
              logger.error("cannot withdraw expired registrations", metadata: ["error": "\(error)"])
            }
            do {
              try traces.enforceRetention()
            } catch {
              logger.error("cannot trim the trace store", metadata: ["error": "\(error)"])
            }
            // Its own certificate lives 30 days; new handshakes take the renewed one.
            do {
              if try trust.renewOwnCertificateIfDue() {
                logger.info("own certificate renewed", metadata: ["identity": "\(identity)"])
              }
            } catch {
              logger.error("cannot renew its own certificate", metadata: ["error": "\(error)"])
            }
          }
        }
        guard let listening = await main.listeningAddress(),
          let joining = try? await join.listeningAddress
        else { return }
        let advertise = configuration.advertise
        if advertise == nil, ["0.0.0.0", "::"].contains(configuration.listen.host),
          configuration.store != .sqlite
        {
          logger.warning(
            "listening on every address: give --advertise, or the other replicas' tools list this one at \(configuration.listen.host)"
          )
        }
        logger.info(
          "listening",
          metadata: [
            "address": "\(Self.describe(listening))", "join_address": "\(Self.describe(joining))",
            "identity": "\(identity)",
          ])
        group.addTask {
          // The others, and the operator's tools, find this one in the store.
          try? await cancelWhenGracefulShutdown {
            try await store.announce {
              ReplicaAnnouncement(
                name: replica, address: Self.describe(listening, as: advertise),
                joinAddress: Self.describe(joining, as: advertise), startedAt: startedAt,
                issuer: "\(trust.current.issuer.certificate.subject)")
            }
          }
        }
      }
    } onGracefulShutdown: {
      logger.info("shutting down")
      main.beginGracefulShutdown()
      joinServer.beginGracefulShutdown()
    }
  }

  /// The trust in force: the newest stored generation, or the first one, made from the CA
  /// that `meshctl certs init` wrote.
  private func loadTrust(_ store: any ControlStore) async throws -> MeshTrust.Generation {
    do {
      if let stored = try await store.currentTrust() { return try MeshTrust.generation(stored) }
    } catch let missing as NoIssuerOfItsOwn where missing.keyDirectory == nil {
      guard let store = store as? EtcdControlStore else { throw missing }
      return try await waitForIssuer(store)
    }
    let files = CAFiles(dir: configuration.certs)
    let issuer = try files.loadIssuer()
    let bundle = try String(contentsOfFile: files.bundle, encoding: .utf8)
    let issuerPEM = try issuer.certificate.serializeAsPEM().pemString
    let reason = "the CA in \(configuration.certs)/"
    if let store = store as? EtcdControlStore {
      // Of control planes starting together on an empty store, one installs the CA's issuer;
      // every other one gets an issuer of its own.
      guard
        try await store.storeFirstTrust(
          bundle: bundle, issuer: issuerPEM, issuerKey: issuer.key.pemRepresentation,
          reason: reason)
      else { return try await waitForIssuer(store) }
      return try MeshTrust.generation(try await store.currentTrust()!)
    }
    let number = try await store.storeTrust(
      bundle: bundle, issuer: issuerPEM, issuerKey: issuer.key.pemRepresentation, reason: reason)
    return MeshTrust.Generation(
      number: number, bundle: try TrustBundle(pem: bundle), bundlePEM: bundle, issuer: issuer)
  }

  /// A control plane joining others on etcd signs with an issuer of its own, whose key never
  /// leaves this machine: it makes the key, writes a CSR to `data/issuer.csr`, and waits for
  /// the operator to sign it with the root (`meshctl certs sign-issuer`) into
  /// `data/issuer.pem`.
  private func waitForIssuer(_ store: EtcdControlStore) async throws -> MeshTrust.Generation {
    let key: P256.Signing.PrivateKey
    if let pem = try await store.pendingIssuerKey(),
      let pending = try? P256.Signing.PrivateKey(pemRepresentation: pem)
    {
      key = pending
    } else {
      key = P256.Signing.PrivateKey()
      try await store.setPendingIssuerKey(key.pemRepresentation)
    }
    let csrPath = configuration.data + "/issuer.csr"
    let certificatePath = configuration.data + "/issuer.pem"
    try CertificateSigningRequest.workloadPEM(key).write(
      toFile: csrPath, atomically: true, encoding: .utf8)
    logger.notice(
      "this control plane has no issuer of its own yet: sign its CSR with the root",
      metadata: [
        "replica": "\(store.replica)", "csr": "\(csrPath)",
        "command": "meshctl certs sign-issuer \(csrPath) --out \(certificatePath)",
      ])
    var refused = ""
    while true {
      if let pem = try? String(contentsOfFile: certificatePath, encoding: .utf8) {
        do {
          try await checkOwnIssuer(pem, key: key, store)
          try await store.recordIssuer(certificate: pem, key: key.pemRepresentation)
          try? FileManager.default.removeItem(atPath: csrPath)
          logger.notice("issuer installed", metadata: ["replica": "\(store.replica)"])
          return try MeshTrust.generation(try await store.currentTrust()!)
        } catch {
          if "\(error)" != refused {
            refused = "\(error)"
            logger.error("\(certificatePath) cannot be this control plane's issuer: \(error)")
          }
        }
      }
      try await cancelWhenGracefulShutdown { try await Task.sleep(for: .milliseconds(200)) }
    }
  }

  /// An issuer for `key`, a CA signed by a root of the generation in force.
  private func checkOwnIssuer(
    _ pem: String, key: P256.Signing.PrivateKey, _ store: EtcdControlStore
  )
    async throws
  {
    let certificate = try Certificate(pemEncoded: pem)
    guard certificate.publicKey == Certificate.PublicKey(key.publicKey) else {
      throw IdentityError(
        "it is not for the key this control plane made (\(configuration.data)/issuer.csr)")
    }
    guard case .isCertificateAuthority = try certificate.extensions.basicConstraints else {
      throw IdentityError("it is not a CA")
    }
    let roots = try TrustBundle(pem: try await store.currentBundle() ?? "").roots
    guard
      roots.contains(where: {
        $0.subject == certificate.issuer
          && $0.publicKey.isValidSignature(certificate.signature, for: certificate)
      })
    else {
      throw IdentityError("it is not signed by a root of the mesh's bundle")
    }
  }

  /// The name this control plane goes by among those sharing a store: kept in `data/replica`.
  static func replicaName(in data: String) throws -> String {
    let file = data + "/replica"
    if let name = try? String(contentsOfFile: file, encoding: .utf8)
      .trimmingCharacters(in: .whitespacesAndNewlines), !name.isEmpty
    {
      return name
    }
    try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
    let name =
      "cp-"
      + (0..<4).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }
      .joined()
    try (name + "\n").write(toFile: file, atomically: true, encoding: .utf8)
    return name
  }

  private static func describe(
    _ address: GRPCNIOTransportCore.SocketAddress, as host: String? = nil
  ) -> String {
    if let host, let port = address.ipv4?.port ?? address.ipv6?.port {
      return host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }
    return address.ipv4.map { "\($0.host):\($0.port)" }
      ?? address.ipv6.map { "[\($0.host)]:\($0.port)" } ?? "\(address)"
  }
}

/// The mutual-TLS listener's server, whichever transport it runs on.
private struct MainListener: Sendable {
  let serve: @Sendable () async throws -> Void
  let beginGracefulShutdown: @Sendable () -> Void
  let listeningAddress: @Sendable () async -> GRPCNIOTransportCore.SocketAddress?

  init<Transport: ServerTransport>(
    server: GRPCServer<Transport>,
    listeningAddress: @escaping @Sendable () async -> GRPCNIOTransportCore.SocketAddress?
  ) {
    serve = { try await server.serve() }
    beginGracefulShutdown = { server.beginGracefulShutdown() }
    self.listeningAddress = listeningAddress
  }
}

/// Runs the body of a stream that lasts as long as its peer does (a sidecar's config or
/// telemetry stream, an operator's tap) until it ends by itself or the control plane shuts
/// down. Then it ends with UNAVAILABLE, so the peer comes back to the next control plane
/// (sidecars keep the config they run) instead of holding this one's shutdown forever.
func endingAtShutdown<Result: Sendable>(
  _ body: @escaping @Sendable () async throws -> Result
) async throws -> Result {
  let shuttingDown = RPCError(code: .unavailable, message: "the control plane is shutting down")
  let result: Result
  do {
    result = try await cancelWhenGracefulShutdown(body)
  } catch  where Task.isShuttingDownGracefully {
    throw shuttingDown
  }
  // A body that ends quietly when cancelled (a tap's event stream) ends the same way.
  if Task.isShuttingDownGracefully { throw shuttingDown }
  return result
}
