import MeshIdentity

/// What a sidecar needs to start: who it is, where its app is, where it listens, its
/// certificate files, and — in static mode, until a control plane serves it — the mesh config
/// file. Relative paths are relative to the bootstrap file.
///
/// ```yaml
/// service: users
/// app: 127.0.0.1:50051
/// listen:
///   inbound: 0.0.0.0:7101
///   outbound: 127.0.0.1:7102
///   admin: 127.0.0.1:7103
/// advertise: 127.0.0.1:7101        # the inbound address others dial (default: listen.inbound)
/// tls:
///   cert: ../certs/users.pem
///   key: ../certs/users-key.pem
///   bundle: ../certs/bundle.pem
/// mesh: mesh.yaml
/// trustDomain: trellis.local       # optional
/// threads: 1                       # optional
/// controlPlane:                    # instead of tls: the identity comes from the control plane
///   address: 127.0.0.1:15000       #   its mutual-TLS API (renewals); replicas: a list, or
///                                  #   HOST:PORT,HOST:PORT — one at a time, the next if it fails
///   join: 127.0.0.1:15001          #   its join listener (the first certificate); a list too
///   tokenFile: users.token         #   from `meshctl tokens create --out`, used once
///   bundle: certs/bundle.pem       #   verifies the control plane at first contact
/// state: .trellis/users            # key, certificate and bundle kept across restarts
/// register:                       # with a control plane: the endpoint is registered while
///   labels: {version: v1}          #   the app reports SERVING, with these labels, on a lease
///   lease: 15s                     #   renewed every third of it (`register: false`: never)
/// limits:                          # optional; these are the defaults
///   idleTimeout: 5m                # a connection without calls for this long is closed
///   handshakeTimeout: 10s          # from TCP to the caller's first SETTINGS (TLS, preface)
///   drainTimeout: 30s              # calls in flight at SIGTERM get this long to finish
///   maxConcurrentStreams: 1024     # streams a caller may have open on one connection
/// tracing:                         # optional: where spans go (OTLP/gRPC); by default the
///   collector: 127.0.0.1:4317      #   control plane's collector (mutual TLS), or nowhere
///                                  #   without a control plane; here plaintext OTLP/gRPC
/// ```
public struct SidecarBootstrap: Equatable, Sendable {
  public var service: String
  public var app: Address
  public var inbound: Address
  public var outbound: Address
  public var admin: Address?
  public var advertise: Address
  public var certificate: String
  public var privateKey: String
  public var bundle: String
  /// The mesh config file (static mode).
  public var mesh: String?
  public var trustDomain: String
  public var threads: Int
  public var limits = Limits()
  /// An OTLP/gRPC collector (plaintext) spans go to instead of the control plane.
  public var collector: Address?
  /// How the sidecar gets its identity from the control plane; nil in static mode (the `tls`
  /// files come from `meshctl certs`).
  public var controlPlane: ControlPlaneLink?
  /// How the endpoint is registered with the control plane; nil: it is not.
  public var registration: Registration? = Registration()

  public struct Registration: Equatable, Sendable {
    public var labels: [String: String] = [:]
    public var lease: Duration = .seconds(15)

    public init() {}
  }
  /// Where the sidecar keeps what it must survive a restart with: its key, certificate and
  /// trust bundle (with a control plane).
  public var state: String?

  /// The control plane's listeners and what pays for the first certificate.
  public struct ControlPlaneLink: Equatable, Sendable {
    /// The mutual-TLS APIs (config, renewals) of the control plane's replicas: one or more.
    public var addresses: [Address]
    /// Their join listeners (the first certificate, with the token).
    public var joins: [Address]
    /// A file holding the join token (mode 0600), used once.
    public var tokenFile: String
    /// The trust bundle that verifies the control plane at first contact.
    public var bundle: String

    public init(addresses: [Address], joins: [Address], tokenFile: String, bundle: String) {
      self.addresses = addresses
      self.joins = joins
      self.tokenFile = tokenFile
      self.bundle = bundle
    }
  }

  public struct Limits: Equatable, Sendable {
    public var idleTimeout: Duration = .seconds(300)
    public var handshakeTimeout: Duration = .seconds(10)
    public var drainTimeout: Duration = .seconds(30)
    public var maxConcurrentStreams = 1024
    public init() {}
  }

  public init(
    service: String, app: Address, inbound: Address, outbound: Address, admin: Address?,
    advertise: Address? = nil, certificate: String, privateKey: String, bundle: String,
    mesh: String?, trustDomain: String = SPIFFEID.defaultTrustDomain, threads: Int = 1
  ) {
    self.service = service
    self.app = app
    self.inbound = inbound
    self.outbound = outbound
    self.admin = admin
    self.advertise = advertise ?? inbound
    self.certificate = certificate
    self.privateKey = privateKey
    self.bundle = bundle
    self.mesh = mesh
    self.trustDomain = trustDomain
    self.threads = threads
  }

  /// Reads a bootstrap file's text; `directory` resolves relative paths.
  public init(yaml: String, file: String, directory: String) throws(ConfigError) {
    do {
      try self.init(ConfigNode.parse(yaml, file: file), directory: directory)
    } catch let error as ConfigError {
      throw error
    } catch {
      throw ConfigError(file: file, line: nil, column: nil, field: "", message: "\(error)")
    }
  }

  init(_ root: ConfigNode, directory: String) throws {
    let fields = try root.fields([
      "service", "app", "listen", "advertise", "tls", "mesh", "trustDomain", "threads", "limits",
      "controlPlane", "state", "register", "tracing",
    ])
    let trustDomain = try fields["trustDomain"].optionalString() ?? SPIFFEID.defaultTrustDomain
    let service = try fields["service"].string()
    do {
      _ = try SPIFFEID.workload(service, trustDomain: trustDomain)
    } catch {
      throw fields["service"].error("'\(service)' is not a valid service name: \(error)")
    }
    func address(_ node: ConfigNode) throws -> Address {
      do {
        return try Address(parsing: try node.string())
      } catch let error as AddressError {
        throw node.error(error.description)
      }
    }
    /// One address or more: a list, or HOST:PORT[,HOST:PORT…].
    func addresses(_ node: ConfigNode) throws -> [Address] {
      let texts = try node.strings().flatMap { $0.split(separator: ",").map(String.init) }
      guard !texts.isEmpty else { throw node.error("required") }
      var seen: [Address] = []
      for text in texts {
        let parsed: Address
        switch Result(catching: { () throws(AddressError) -> Address in
          try Address(parsing: String(text.filter { $0 != " " }))
        }) {
        case .success(let address): parsed = address
        case .failure(let error): throw node.error(error.description)
        }
        guard !seen.contains(parsed) else { throw node.error("\(parsed) is listed twice") }
        seen.append(parsed)
      }
      return seen
    }
    func path(_ node: ConfigNode) throws -> String {
      let text = try node.string()
      return text.hasPrefix("/") ? text : "\(directory)/\(text)"
    }
    let listen = try fields["listen"].fields(["inbound", "outbound", "admin"])
    let tls = try fields["tls"].fields(["cert", "key", "bundle"])
    var link: ControlPlaneLink?
    var state: String?
    if fields["controlPlane"].isPresent {
      let node = try fields["controlPlane"].fields(["address", "join", "tokenFile", "bundle"])
      link = ControlPlaneLink(
        addresses: try addresses(node["address"]), joins: try addresses(node["join"]),
        tokenFile: try path(node["tokenFile"]), bundle: try path(node["bundle"]))
      state =
        fields["state"].isPresent ? try path(fields["state"]) : "\(directory)/.trellis/\(service)"
    }
    // With a control plane the certificate files are the sidecar's own, in its state folder.
    func tlsPath(_ key: String, _ file: String) throws -> String {
      if let state, !tls[key].isPresent { return "\(state)/\(file)" }
      return try path(tls[key])
    }
    let inbound = try address(listen["inbound"])
    var advertise = inbound
    if fields["advertise"].isPresent {
      advertise = try address(fields["advertise"])
      guard advertise.port != 0 else {
        throw fields["advertise"].error("an advertised address needs a real port")
      }
    }
    self.init(
      service: service, app: try address(fields["app"]), inbound: inbound,
      outbound: try address(listen["outbound"]),
      admin: listen["admin"].isPresent ? try address(listen["admin"]) : nil,
      advertise: advertise, certificate: try tlsPath("cert", "svid.pem"),
      privateKey: try tlsPath("key", "svid-key.pem"), bundle: try tlsPath("bundle", "bundle.pem"),
      mesh: fields["mesh"].isPresent ? try path(fields["mesh"]) : nil, trustDomain: trustDomain,
      threads: try fields["threads"].int(in: 1...64) ?? 1)
    let limits = try fields["limits"].fields([
      "idleTimeout", "handshakeTimeout", "drainTimeout", "maxConcurrentStreams",
    ])
    if let value = try limits["idleTimeout"].duration() { self.limits.idleTimeout = value }
    if let value = try limits["handshakeTimeout"].duration() {
      self.limits.handshakeTimeout = value
    }
    if let value = try limits["drainTimeout"].duration() { self.limits.drainTimeout = value }
    if let value = try limits["maxConcurrentStreams"].int(in: 1...Int(Int32.max)) {
      self.limits.maxConcurrentStreams = value
    }
    self.controlPlane = link
    self.state = state
    let tracing = try fields["tracing"].fields(["collector"])
    if tracing["collector"].isPresent { collector = try address(tracing["collector"]) }
    let register = fields["register"]
    if case .scalar? = register.node, register.isPresent {
      registration = try register.bool() == true ? Registration() : nil
    } else if register.isPresent {
      let f = try register.fields(["labels", "lease"])
      var value = Registration()
      for (key, label) in try f["labels"].mapping() { value.labels[key] = try label.string() }
      if let lease = try f["lease"].duration() {
        guard lease >= .seconds(3) else { throw f["lease"].error("a lease is at least 3s") }
        value.lease = lease
      }
      registration = value
    }
  }
}
