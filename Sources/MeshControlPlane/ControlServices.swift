import Crypto
import EtcdAPI
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import MeshConfig
import MeshIdentity
import MeshProtos
import SwiftASN1
import X509

/// What the control plane's services share: the store, the issuer, and the mesh's facts.
public struct ControlContext: Sendable {
  public var store: any ControlStore
  /// The roots, the issuer and the control plane's own certificate in force.
  public var trust: MeshTrust
  public var trustDomain: String { trust.trustDomain }
  public var defaultLeafLifetime: TimeInterval
  /// The shortest lifetime a caller may ask for (a minute, for tests of renewal).
  public var minimumLeafLifetime: TimeInterval = 60
  public var maximumLeafLifetime: TimeInterval = 30 * 86_400
  /// An operator's certificate may live a year, as `meshctl certs init` makes it.
  public var maximumOperatorLifetime: TimeInterval = 365 * 86_400
  public var maximumConfigBytes = MeshConfig.maximumBytes
  /// The sidecars subscribed to config.
  public let hub = ConfigHub()
  /// Config streams served at once; a sidecar beyond them is sent to another replica.
  public var maximumConfigStreams = 20_000
  /// How long a config stream lasts (±20 %) before it is ended, so that sidecars spread again
  /// over the replicas.
  public var configStreamAge: Duration = .seconds(1800)
  /// How long a registration stored before a restart lasts unless its sidecar renews it.
  public var registrationGrace: Duration = .seconds(30)

  /// Withdraws the registrations whose lease ran out, and pushes the change.
  public func expireRegistrations() async throws {
    let expired = hub.expireLeases()
    guard !expired.isEmpty else { return }
    for node in expired { try await store.setRegistration(node: node, endpoint: nil, lease: .zero) }
    hub.pushAll()
  }

  /// Takes in what other control planes change in a shared store, and pushes it to this one's
  /// sidecars; returns when the task is cancelled (at once for a store only this one writes).
  public func followStore(logger: Logger) async throws {
    try await store.follow { [self] change in
      do {
        try await self.take(change)
      } catch let error as TrustNotHeld {
        // Serving on with the trust it holds beats stopping to follow everything else.
        logger.error("cannot take in a new generation of trust", metadata: ["error": "\(error)"])
      }
    }
  }

  func take(_ change: StoreChange) async throws {
    switch change {
    case .resync:
      if let config = try await store.currentConfig() {
        hub.publish(version: config.version, yaml: config.yaml)
      }
      let stored = try await store.registrations().map {
        try Trellis_Mesh_V1_RegisteredEndpoint(serializedBytes: $0)
      }
      if hub.follow(registrations: stored) { hub.pushAll() }
      for (spiffeID, at) in try await store.renewalRequests() {
        hub.requestRenewal(of: spiffeID, at: at)
      }
      try await followTrust()
      try await followIssuers()
    case .config(let config):
      hub.publish(version: config.version, yaml: config.yaml)
    case .trust:
      try await followTrust()
    case .issuers:
      try await followIssuers()
    case .registration(let node, let endpoint):
      let registered = try endpoint.map {
        try Trellis_Mesh_V1_RegisteredEndpoint(serializedBytes: $0)
      }
      if hub.follow(node: node, endpoint: registered) { hub.pushAll() }
    case .renewal(let spiffeID, let at):
      hub.requestRenewal(of: spiffeID, at: at)
    }
  }

  /// Puts in force a generation of trust another control plane stored.
  private func followTrust() async throws {
    let stored: StoredTrust?
    do {
      stored = try await store.currentTrust()
    } catch let error as NoIssuerOfItsOwn {
      throw TrustNotHeld(description: error.description)
    }
    guard let stored, stored.generation > trust.current.number else { return }
    let generation = try MeshTrust.generation(stored)
    try trust.install(generation)
    hub.remember(issuer: generation.issuer.certificate, root: generation.issuerRoot)
    hub.publish(trust: generation)
  }

  /// Loads what the hub pushes (the running config, the trust, pending renewals) from the store.
  public init(
    store: any ControlStore, trust: MeshTrust, defaultLeafLifetime: TimeInterval = 86_400
  ) async throws {
    self.store = store
    self.trust = trust
    self.defaultLeafLifetime = defaultLeafLifetime
    hub.storeKeepsLeases = store.withdrawsExpiredRegistrations
    for stored in try await store.trustGenerations() where !stored.issuer.isEmpty {
      let issuer = try Certificate(pemEncoded: stored.issuer)
      let roots = try TrustBundle(pem: stored.bundle).roots
      hub.remember(issuer: issuer, root: roots.first { $0.subject == issuer.issuer })
    }
    try await followIssuers()
    hub.setRenewals(try await store.renewalRequests())
    hub.restore(
      try await store.registrations().map {
        try Trellis_Mesh_V1_RegisteredEndpoint(serializedBytes: $0)
      },
      lease: registrationGrace)
    if let config = try await store.currentConfig() {
      hub.publish(version: config.version, yaml: config.yaml)
    }
    hub.publish(trust: trust.current)
  }

  /// Stores the next generation of trust, puts it in force and pushes it to every sidecar.
  func install(
    bundle: [Certificate], issuer: SigningAuthority, reason: String
  ) async throws
    -> MeshTrust.Generation
  {
    let bundlePEM = try TrustBundle(roots: bundle).pemString()
    let number = try await store.storeTrust(
      bundle: bundlePEM, issuer: try issuer.certificate.serializeAsPEM().pemString,
      issuerKey: issuer.key.pemRepresentation, reason: reason)
    let generation = MeshTrust.Generation(
      number: number, bundle: TrustBundle(roots: bundle), bundlePEM: bundlePEM, issuer: issuer)
    try trust.install(generation)
    hub.remember(issuer: issuer.certificate, root: generation.issuerRoot)
    hub.publish(trust: generation)
    try await followIssuers()
    return generation
  }

  /// Takes in the issuers every control plane on the store signs with now.
  func followIssuers() async throws {
    let roots = trust.current.bundle.roots
    hub.setIssuersInForce(
      try await store.issuersInForce().map { pem in
        let issuer = try Certificate(pemEncoded: pem)
        return (issuer, roots.first { $0.subject == issuer.issuer })
      })
  }

  /// The admin identity `meshctl certs init` creates.
  var adminID: String { "spiffe://\(trustDomain)/operator/admin" }

  /// The caller's SPIFFE ID, from the certificate it presented (mutual TLS), if any.
  static func caller(_ context: ServerContext) -> SPIFFEID? {
    guard let leaf = peerCertificate(context) else { return nil }
    return try? SVIDValidator.leafIdentity(leaf)
  }

  /// The caller's certificate: from grpc-swift's TLS, or from the front that handed gRPC the
  /// connection (`ControlFront`).
  static func peerCertificate(_ context: ServerContext) -> Certificate? {
    if let transport = context.transportSpecific as? HTTP2ServerTransport.Posix.Context {
      return transport.peerCertificate
    }
    return FrontPeers.shared.leaf(local: context.localPeer, remote: context.remotePeer)
  }
}

/// A generation of trust this control plane cannot put in force: it does not hold the key.
struct TrustNotHeld: Error, CustomStringConvertible {
  var description: String
}

/// `trellis.mesh.v1.Identity`: signs workloads' CSRs into X.509-SVIDs.
public struct IdentityService: Trellis_Mesh_V1_Identity.SimpleServiceProtocol {
  let control: ControlContext

  public init(_ control: ControlContext) { self.control = control }

  public func certify(
    request: Trellis_Mesh_V1_CertifyRequest, context: ServerContext
  ) async throws -> Trellis_Mesh_V1_CertifyResponse {
    let csr: CertificateSigningRequest
    do {
      csr = try CertificateSigningRequest(pemEncoded: request.csr)
    } catch {
      throw RPCError(code: .invalidArgument, message: "the CSR is not a PEM certificate request")
    }
    do {
      try csr.checkWorkloadRequest()
    } catch {
      throw RPCError(code: .invalidArgument, message: error.description)
    }
    // Everything about the request is checked before a token is spent on it.
    let identity: SPIFFEID
    if !request.token.isEmpty {
      switch try await control.store.redeemToken(request.token, spend: false, now: Date()) {
      case .success(let id):
        identity = try SPIFFEID(parsing: id)
      case .failure(let refusal):
        throw RPCError(code: .permissionDenied, message: refusal.rawValue)
      }
    } else if let caller = ControlContext.caller(context) {
      identity = caller  // a renewal: the same identity, over the current certificate
    } else {
      throw RPCError(
        code: .unauthenticated,
        message: "a first certificate needs a join token; a renewal needs the current certificate")
    }
    // The identity is decided here; a request that asks for another one is refused, not
    // silently given this one.
    let requested: [String]
    do {
      let names = try csr.attributes.extensionRequest?.extensions.subjectAlternativeNames
      requested = (names ?? SubjectAlternativeNames([])).compactMap { name in
        if case .uniformResourceIdentifier(let uri) = name { return uri }
        return nil
      }
    } catch {
      throw RPCError(
        code: .invalidArgument, message: "the CSR's extension request does not parse: \(error)")
    }
    if let other = requested.first(where: { $0 != identity.description }) {
      throw RPCError(
        code: .permissionDenied,
        message:
          "the CSR asks for \(other), but \(request.token.isEmpty ? "the caller" : "the join token") is for \(identity)"
      )
    }
    guard identity.trustDomain == control.trustDomain else {
      throw RPCError(
        code: .permissionDenied,
        message: "\(identity) is not in trust domain \(control.trustDomain)"
      )
    }
    var lifetime = control.defaultLeafLifetime
    if request.lifetimeSeconds != 0 {
      lifetime = TimeInterval(request.lifetimeSeconds)
      let maximum =
        identity.path.hasPrefix("/operator/")
        ? control.maximumOperatorLifetime : control.maximumLeafLifetime
      guard lifetime >= control.minimumLeafLifetime, lifetime <= maximum else {
        throw RPCError(
          code: .invalidArgument,
          message:
            """
            a lifetime of \(request.lifetimeSeconds)s is outside \
            \(Int(control.minimumLeafLifetime))s to \(Int(maximum))s
            """
        )
      }
    }
    if !request.token.isEmpty,
      case .failure(let refusal) = try await control.store.redeemToken(
        request.token, spend: true, now: Date())
    {
      throw RPCError(code: .permissionDenied, message: refusal.rawValue)  // spent meanwhile
    }
    let trust = control.trust.current
    let certificate: Certificate
    do {
      certificate = try trust.issuer.issueSVID(
        for: identity, publicKey: csr.publicKey, lifetime: lifetime)  // the CSR was checked above
    } catch let error as IdentityError {
      throw RPCError(code: .invalidArgument, message: error.description)
    }
    let serial = certificate.serialHex
    try await control.store.recordCertificate(
      serial: serial, spiffeID: identity.description, notAfter: certificate.notValidAfter,
      issuerSerial: trust.issuerSerial, now: Date())
    var response = Trellis_Mesh_V1_CertifyResponse()
    response.spiffeID = identity.description
    response.certificateChain =
      try certificate.serializeAsPEM().pemString + "\n"
      + trust.issuer.certificate.serializeAsPEM().pemString + "\n"
    response.trustBundle = trust.bundlePEM
    response.notAfterUnix = Int64(certificate.notValidAfter.timeIntervalSince1970)
    response.serial = serial
    return response
  }
}

/// `trellis.mesh.v1.Admin`: the operator's methods, for the admin identity only.
public struct AdminService: Trellis_Mesh_V1_Admin.SimpleServiceProtocol {
  let control: ControlContext

  public init(_ control: ControlContext) { self.control = control }

  /// The caller, who must be the mesh's admin.
  private func admin(_ context: ServerContext) throws -> String {
    guard let caller = ControlContext.caller(context) else {
      throw RPCError(code: .unauthenticated, message: "admin methods need the admin certificate")
    }
    guard caller.description == control.adminID else {
      throw RPCError(
        code: .permissionDenied, message: "\(caller) is not the mesh's admin (\(control.adminID))")
    }
    return caller.description
  }

  public func createToken(
    request: Trellis_Mesh_V1_CreateTokenRequest, context: ServerContext
  ) async throws -> Trellis_Mesh_V1_CreateTokenResponse {
    _ = try admin(context)
    let identity: SPIFFEID
    do {
      identity = try SPIFFEID.workload(request.service, trustDomain: control.trustDomain)
    } catch {
      throw RPCError(code: .invalidArgument, message: "service '\(request.service)': \(error)")
    }
    let ttl = request.ttlSeconds == 0 ? 86_400 : TimeInterval(request.ttlSeconds)
    guard ttl > 0, ttl <= 30 * 86_400 else {
      throw RPCError(code: .invalidArgument, message: "a token lives between 1s and 30d")
    }
    let (token, expiresAt) = try await control.store.createToken(
      for: identity.description, ttl: ttl, now: Date())
    var response = Trellis_Mesh_V1_CreateTokenResponse()
    response.token = token
    response.spiffeID = identity.description
    response.expiresAtUnix = Int64(expiresAt.timeIntervalSince1970)
    return response
  }

  public func applyConfig(
    request: Trellis_Mesh_V1_ApplyConfigRequest, context: ServerContext
  ) async throws -> Trellis_Mesh_V1_ApplyConfigResponse {
    let caller = try admin(context)
    let file = request.fileName.isEmpty ? "mesh.yaml" : request.fileName
    guard request.yaml.utf8.count <= control.maximumConfigBytes else {
      throw RPCError(
        code: .invalidArgument,
        message:
          """
          \(file): \(request.yaml.utf8.count) bytes; a mesh config may be at most \
          \(control.maximumConfigBytes) bytes
          """
      )
    }
    try validate(request.yaml, file: file)
    let current = try await control.store.currentConfig()
    var response = Trellis_Mesh_V1_ApplyConfigResponse()
    response.diff = unifiedDiff(
      old: current?.yaml ?? "", new: request.yaml,
      oldName: current.map { "version \($0.version)" } ?? "(none)", newName: file)
    if request.dryRun {
      response.changed = current?.yaml != request.yaml
      response.version = (current?.version ?? 0) + (response.changed ? 1 : 0)
      return response
    }
    let stored = try await control.store.storeConfig(
      yaml: request.yaml, createdBy: caller, rolledBackFrom: nil)
    if stored.changed { control.hub.publish(version: stored.version, yaml: request.yaml) }
    response.version = stored.version
    response.changed = stored.changed
    return response
  }

  private func validate(_ yaml: String, file: String) throws {
    do {
      let config = try MeshConfig(yaml: yaml, file: file)
      guard config.trustDomain == control.trustDomain else {
        throw RPCError(
          code: .invalidArgument,
          message:
            """
            \(file): trustDomain: \(config.trustDomain) is not this mesh's \
            (\(control.trustDomain))
            """
        )
      }
    } catch let error as ConfigError {
      throw RPCError(code: .invalidArgument, message: error.description)
    }
  }

  public func getConfig(
    request: Trellis_Mesh_V1_GetConfigRequest, context: ServerContext
  ) async throws -> Trellis_Mesh_V1_ConfigVersion {
    _ = try admin(context)
    let stored =
      request.version == 0
      ? try await control.store.currentConfig()
      : try await control.store.config(version: request.version)
    guard let stored else {
      throw RPCError(
        code: .notFound,
        message: request.version == 0
          ? "no config has been applied yet (meshctl apply -f mesh.yaml)"
          : "there is no config version \(request.version)")
    }
    return message(stored, withText: true)
  }

  public func listConfigVersions(
    request: Trellis_Mesh_V1_ListConfigVersionsRequest, context: ServerContext
  ) async throws -> Trellis_Mesh_V1_ListConfigVersionsResponse {
    _ = try admin(context)
    var response = Trellis_Mesh_V1_ListConfigVersionsResponse()
    response.versions = try await control.store.configVersions().map {
      message($0, withText: false)
    }
    return response
  }

  public func rollback(
    request: Trellis_Mesh_V1_RollbackRequest, context: ServerContext
  ) async throws -> Trellis_Mesh_V1_ApplyConfigResponse {
    let caller = try admin(context)
    guard let target = try await control.store.config(version: request.version) else {
      throw RPCError(code: .notFound, message: "there is no config version \(request.version)")
    }
    let current = try await control.store.currentConfig()
    let stored = try await control.store.storeConfig(
      yaml: target.yaml, createdBy: caller, rolledBackFrom: target.version)
    if stored.changed { control.hub.publish(version: stored.version, yaml: target.yaml) }
    var response = Trellis_Mesh_V1_ApplyConfigResponse()
    response.version = stored.version
    response.changed = stored.changed
    response.diff = unifiedDiff(
      old: current?.yaml ?? "", new: target.yaml,
      oldName: current.map { "version \($0.version)" } ?? "(none)",
      newName: "version \(target.version)")
    return response
  }

  public func replicas(
    request: Trellis_Mesh_V1_ReplicasRequest, context: ServerContext
  ) async throws -> Trellis_Mesh_V1_ReplicasResponse {
    _ = try admin(context)
    let leader = try await control.store.leader()
    var response = Trellis_Mesh_V1_ReplicasResponse()
    response.store = control.store.kind
    response.replicas = try await control.store.replicas().sorted { $0.name < $1.name }.map {
      var replica = Trellis_Mesh_V1_Replica()
      replica.name = $0.name
      replica.address = $0.address
      replica.joinAddress = $0.joinAddress
      replica.leader = $0.name == leader
      replica.startedUnix = Int64($0.startedAt.timeIntervalSince1970)
      replica.issuer = $0.issuer
      return replica
    }
    return response
  }

  public func status(
    request: Trellis_Mesh_V1_StatusRequest, context: ServerContext
  ) async throws -> Trellis_Mesh_V1_StatusResponse {
    _ = try admin(context)
    var response = Trellis_Mesh_V1_StatusResponse()
    response.currentVersion = try await control.store.currentConfig()?.version ?? 0
    response.sidecars = control.hub.statuses
    let trust = control.trust.current
    response.trustGeneration = trust.number
    response.issuer = "\(trust.issuer.certificate.subject)"
    response.roots = trust.bundle.roots.map { "\($0.subject)" }
    response.discovery = control.hub.discovery
    response.rotations = control.hub.rotations
    return response
  }

  public func prepareIssuer(
    request: Trellis_Mesh_V1_PrepareIssuerRequest, context: ServerContext
  ) async throws -> Trellis_Mesh_V1_PrepareIssuerResponse {
    _ = try admin(context)
    let key = P256.Signing.PrivateKey()
    try await control.store.setPendingIssuerKey(key.pemRepresentation)
    var response = Trellis_Mesh_V1_PrepareIssuerResponse()
    response.csr = try CertificateSigningRequest.workloadPEM(key)
    return response
  }

  public func rotate(
    request: Trellis_Mesh_V1_RotateRequest,
    response: RPCWriter<Trellis_Mesh_V1_RotateProgress>, context: ServerContext
  ) async throws {
    _ = try admin(context)
    let rotation = TrustRotation(control)
    let step = try await rotation.start(request)
    let timeout = request.timeoutSeconds > 0 ? Double(request.timeoutSeconds) : 300
    let deadline = ContinuousClock.now + .milliseconds(Int64(timeout * 1000))
    // Shown in `Status` (the dashboard's trust page) while it runs.
    let running = control.hub.started(rotation: step, named: rotation.name(of: request))
    defer { control.hub.finished(rotation: running) }
    var last: Trellis_Mesh_V1_RotateProgress?
    while true {
      var message = control.hub.progressMessage(step)
      message.trustGeneration = control.trust.current.number
      message.trustBundle = control.trust.current.bundlePEM
      if message != last { try await response.write(message) }
      last = message
      if message.done { return }
      guard ContinuousClock.now < deadline else {
        throw RPCError(
          code: .deadlineExceeded,
          message:
            "\(message.waitingFor.count) sidecar(s) did not follow within \(Int(timeout))s: \(message.waitingFor.joined(separator: ", ")); the mesh stays at trust generation \(message.trustGeneration), and the same step asked again goes on waiting"
        )
      }
      try await Task.sleep(for: .milliseconds(200))
    }
  }

  private func message(
    _ stored: StoredConfig, withText: Bool
  )
    -> Trellis_Mesh_V1_ConfigVersion
  {
    var version = Trellis_Mesh_V1_ConfigVersion()
    version.version = stored.version
    if withText { version.yaml = stored.yaml }
    version.createdAtUnix = Int64(stored.createdAt.timeIntervalSince1970)
    version.createdBy = stored.createdBy
    version.rolledBackFrom = stored.rolledBackFrom ?? 0
    return version
  }
}
