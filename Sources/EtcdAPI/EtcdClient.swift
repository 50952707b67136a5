import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2

/// A client of etcd's v3 API (gRPC) over one or more members' client ports: the calls the
/// control plane's store makes, with etcd's own messages (`Etcdserverpb_…`, `Mvccpb_…`).
///
/// With several members, calls go round robin to those that are up; etcd forwards what needs
/// the leader.
///
/// Run `run()` in a task for as long as the client is used; `close()` ends it.
public final class EtcdClient: Sendable {
  /// The members' client ports.
  public let endpoints: [Endpoint]
  private let client: GRPCClient<HTTP2ClientTransport.Posix>

  /// One member's client port.
  public struct Endpoint: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
      self.host = host
      self.port = port
    }

    public var description: String { "\(host):\(port)" }
  }

  /// A store option's endpoints: `etcd://HOST:PORT[,HOST:PORT…]`.
  public static func endpoints(parsing url: String) throws -> [Endpoint] {
    guard url.hasPrefix("etcd://") else {
      throw EtcdError("expected etcd://HOST:PORT[,HOST:PORT…], got '\(url)'")
    }
    let list = url.dropFirst("etcd://".count)
    guard !list.isEmpty else { throw EtcdError("'\(url)' names no member") }
    return try list.split(separator: ",", omittingEmptySubsequences: false).map { item in
      guard let colon = item.lastIndex(of: ":"), let port = Int(item[item.index(after: colon)...]),
        (1...65535).contains(port), colon != item.startIndex
      else {
        throw EtcdError("'\(item)' in '\(url)' is not HOST:PORT")
      }
      return Endpoint(host: String(item[..<colon]), port: port)
    }
  }

  /// TLS to etcd's client port (etcd's `--cert-file`, with `--client-cert-auth` for a client
  /// certificate): the members' certificates are checked against `caFile` and must name the
  /// address (or host name) dialled, as etcdctl's `--cacert`, `--cert` and `--key` do.
  public struct TLS: Sendable, Equatable {
    public var caFile: String
    public var certificateFile: String?
    public var keyFile: String?

    /// Checks that the files can be read and that a certificate comes with its key.
    public init(caFile: String, certificateFile: String? = nil, keyFile: String? = nil) throws {
      guard (certificateFile == nil) == (keyFile == nil) else {
        throw EtcdError("a client certificate for etcd needs its key, and a key its certificate")
      }
      for file in [caFile, certificateFile, keyFile].compactMap({ $0 })
      where !FileManager.default.isReadableFile(atPath: file) {
        throw EtcdError("cannot read \(file)")
      }
      self.caFile = caFile
      self.certificateFile = certificateFile
      self.keyFile = keyFile
    }

    var transportSecurity: HTTP2ClientTransport.Posix.TransportSecurity {
      let roots = TLSConfig.TrustRootsSource.certificates([.file(path: caFile, format: .pem)])
      guard let certificateFile, let keyFile else {
        return .tls { $0.trustRoots = roots }
      }
      return .mTLS(
        certificateChain: [.file(path: certificateFile, format: .pem)],
        privateKey: .file(path: keyFile, format: .pem)
      ) { $0.trustRoots = roots }
    }
  }

  /// A client of the members at `endpoints` (IPv4 addresses, or one host name), over TLS when
  /// `tls` is given, else in plain text.
  public init(endpoints: [Endpoint], tls: TLS? = nil) throws {
    guard let first = endpoints.first else { throw EtcdError("no etcd member given") }
    self.endpoints = endpoints
    let target: any ResolvableTarget
    if endpoints.allSatisfy({ Self.isIPv4($0.host) }) {
      target = ResolvableTargets.IPv4(
        addresses: endpoints.map { SocketAddress.IPv4(host: $0.host, port: $0.port) })
    } else if endpoints.count == 1 {
      target = ResolvableTargets.DNS(host: first.host, port: first.port)
    } else {
      throw EtcdError("several etcd members are given by IPv4 address, not by name")
    }
    // Round robin over every member that is up: pick-first would only ever use the first
    // address of the list, and lose etcd with that one member. A member cut off (its host
    // gone: no reset, no answer) is found out by pings within 9 s, and the calls sent to it
    // fail then; meanwhile a read sent to it is sent again to another member after 2 s.
    let transport = try HTTP2ClientTransport.Posix(
      target: target, transportSecurity: tls?.transportSecurity ?? .plaintext,
      config: .defaults {
        $0.backoff.max = .seconds(2)
        // etcd refuses pings more often than every 5 s (--grpc-keepalive-min-time). Pings go
        // on between calls too: a connection's pings stop for good once it had no call open,
        // and a member cut off would then hold every call sent to it until its deadline.
        $0.connection.keepalive = .init(
          time: .seconds(6), timeout: .seconds(3), allowWithoutCalls: true)
      },
      serviceConfig: Self.serviceConfig)
    client = GRPCClient(transport: transport)
  }

  /// Round robin; reads hedged. No deadline: a call waits for its member while the member
  /// answers pings, and fails once it does not (a process's starved tasks would otherwise
  /// see calls time out that etcd answered in time).
  static let serviceConfig = ServiceConfig(
    methodConfig: [
      MethodConfig(
        names: [
          .init(service: "etcdserverpb.KV", method: "Range"),
          .init(service: "etcdserverpb.Maintenance", method: "Status"),
          .init(service: "etcdserverpb.Cluster", method: "MemberList"),
        ],
        executionPolicy: .hedge(
          HedgingPolicy(
            maxAttempts: 3, hedgingDelay: .seconds(2), nonFatalStatusCodes: [.unavailable])))
    ],
    loadBalancingConfig: [.roundRobin])

  /// Keeps the connections; returns once `close()` is called.
  public func run() async throws {
    try await client.runConnections()
  }

  public func close() {
    client.beginGracefulShutdown()
  }

  private static func isIPv4(_ host: String) -> Bool {
    let parts = host.split(separator: ".", omittingEmptySubsequences: false)
    return parts.count == 4 && parts.allSatisfy { UInt8($0) != nil }
  }

  private var kv: Etcdserverpb_KV.Client<HTTP2ClientTransport.Posix> { .init(wrapping: client) }
  private var lease: Etcdserverpb_Lease.Client<HTTP2ClientTransport.Posix> {
    .init(wrapping: client)
  }

  // MARK: Keys

  /// The key `key`, or nil.
  public func get(_ key: String) async throws -> Mvccpb_KeyValue? {
    var request = Etcdserverpb_RangeRequest()
    request.key = Data(key.utf8)
    return try await named { try await kv.range(request).kvs.first }
  }

  /// The keys under `prefix` in key order (or the reverse), at most `limit` of them
  /// (0: all), and the revision they were read at.
  public func list(
    prefix: String, descending: Bool = false, limit: Int64 = 0
  ) async throws -> Etcdserverpb_RangeResponse {
    var request = Etcdserverpb_RangeRequest()
    request.key = Data(prefix.utf8)
    request.rangeEnd = Self.rangeEnd(ofPrefix: Data(prefix.utf8))
    request.limit = limit
    if descending {
      request.sortTarget = .key
      request.sortOrder = .descend
    }
    return try await named { try await kv.range(request) }
  }

  /// How many keys are under `prefix`.
  public func count(prefix: String) async throws -> Int64 {
    var request = Etcdserverpb_RangeRequest()
    request.key = Data(prefix.utf8)
    request.rangeEnd = Self.rangeEnd(ofPrefix: Data(prefix.utf8))
    request.countOnly = true
    return try await named { try await kv.range(request).count }
  }

  /// Sets `key` (attached to `lease`, if not 0): the store's revision after it.
  @discardableResult
  public func put(_ key: String, _ value: Data, lease: Int64 = 0) async throws -> Int64 {
    var request = Etcdserverpb_PutRequest()
    request.key = Data(key.utf8)
    request.value = value
    request.lease = lease
    return try await named { try await kv.put(request).header.revision }
  }

  /// Deletes `key`, or every key under it with `prefix`: how many were deleted.
  @discardableResult
  public func delete(_ key: String, prefix: Bool = false) async throws -> Int64 {
    var request = Etcdserverpb_DeleteRangeRequest()
    request.key = Data(key.utf8)
    if prefix { request.rangeEnd = Self.rangeEnd(ofPrefix: Data(key.utf8)) }
    return try await named { try await kv.deleteRange(request).deleted }
  }

  /// Applies `request` atomically (at most 128 operations, etcd's default limit).
  public func txn(_ request: Etcdserverpb_TxnRequest) async throws -> Etcdserverpb_TxnResponse {
    try await named { try await kv.txn(request) }
  }

  /// Forgets the history before `revision`.
  public func compact(revision: Int64) async throws {
    var request = Etcdserverpb_CompactionRequest()
    request.revision = revision
    _ = try await named { try await kv.compact(request) }
  }

  /// The end of the range of keys that start with `prefix`: the prefix with its last byte
  /// that is not 0xff incremented (and what follows dropped); "\0", every key, if there is none.
  public static func rangeEnd(ofPrefix prefix: Data) -> Data {
    var end = Array(prefix)
    while let last = end.last {
      if last < 0xff {
        end[end.count - 1] = last + 1
        return Data(end)
      }
      end.removeLast()
    }
    return Data([0])
  }

  // MARK: Leases

  /// A lease of `ttl` seconds: its ID.
  public func grantLease(ttl: Int64) async throws -> Int64 {
    var request = Etcdserverpb_LeaseGrantRequest()
    request.ttl = ttl
    let response = try await named { try await lease.leaseGrant(request) }
    guard response.error.isEmpty else { throw EtcdError("lease not granted: \(response.error)") }
    return response.id
  }

  /// Renews lease `id`: its TTL from now, or nil when it has expired.
  public func keepAlive(_ id: Int64) async throws -> Int64? {
    var keepAlive = Etcdserverpb_LeaseKeepAliveRequest()
    keepAlive.id = id
    let request = keepAlive
    do {
      return try await lease.leaseKeepAlive(
        requestProducer: { writer in try await writer.write(request) },
        onResponse: { response in
          for try await message in response.messages {
            return message.ttl > 0 ? message.ttl : nil
          }
          throw EtcdError("etcd closed the keep-alive stream of lease \(id) without answering")
        })
    } catch let error as RPCError where error.code == .notFound {
      return nil  // "requested lease not found": it expired, or was revoked
    }
  }

  /// Ends lease `id` now: the keys attached to it are deleted.
  public func revokeLease(_ id: Int64) async throws {
    var request = Etcdserverpb_LeaseRevokeRequest()
    request.id = id
    _ = try await named { try await lease.leaseRevoke(request) }
  }

  // MARK: Watching

  /// Watches the keys under `prefix` from `revision` (0: from now), handing each response with
  /// events to `body` until it returns false. A watch that etcd cancels — its start revision
  /// compacted — throws `EtcdError.compacted` with the oldest revision still kept.
  public func watch(
    prefix: String, from revision: Int64 = 0,
    _ body: @Sendable @escaping (Etcdserverpb_WatchResponse) async throws -> Bool
  ) async throws {
    var create = Etcdserverpb_WatchCreateRequest()
    create.key = Data(prefix.utf8)
    create.rangeEnd = Self.rangeEnd(ofPrefix: Data(prefix.utf8))
    create.startRevision = revision
    var watch = Etcdserverpb_WatchRequest()
    watch.createRequest = create
    let request = watch
    let done = AsyncStream<Void>.makeStream()
    try await Etcdserverpb_Watch.Client(wrapping: client).watch(
      requestProducer: { writer in
        try await writer.write(request)
        // The request stream stays open for as long as the watch: closing it ends the watch.
        for await _ in done.stream {}
      },
      onResponse: { response in
        defer { done.continuation.finish() }
        for try await message in response.messages {
          if message.canceled {
            if message.compactRevision > 0 {
              throw EtcdError.compacted(oldest: message.compactRevision)
            }
            throw EtcdError("etcd cancelled the watch of '\(prefix)': \(message.cancelReason)")
          }
          if message.created && message.events.isEmpty { continue }
          if try await !body(message) { return }
        }
      })
  }

  /// Runs a call to etcd; its failure names etcd, so that a control plane passing it on is
  /// not taken for a control plane that cannot be reached.
  private func named<Result>(_ call: () async throws -> Result) async throws -> Result {
    do {
      return try await call()
    } catch let error as RPCError {
      throw RPCError(
        code: error.code, message: "etcd: \(error.message)", metadata: error.metadata, cause: error)
    }
  }

  // MARK: The cluster

  /// Waits until a member answers Status, for at most `timeout`.
  public func waitUntilReachable(timeout: Duration) async throws {
    let deadline = ContinuousClock.now + timeout
    while true {
      do {
        _ = try await status()
        return
      } catch  where ContinuousClock.now < deadline {
        try await Task.sleep(for: .milliseconds(100))
      } catch {
        throw EtcdError(
          "cannot reach etcd at \(endpoints.map(\.description).joined(separator: ",")): \(error)")
      }
    }
  }

  /// The status of the member that answers.
  public func status() async throws -> Etcdserverpb_StatusResponse {
    try await named { try await Etcdserverpb_Maintenance.Client(wrapping: client).status(.init()) }
  }

  /// The cluster's members.
  public func members() async throws -> [Etcdserverpb_Member] {
    try await named {
      try await Etcdserverpb_Cluster.Client(wrapping: client).memberList(.init()).members
    }
  }
}

/// What etcd refused, or could not be asked.
public struct EtcdError: Error, CustomStringConvertible, Equatable {
  public let description: String
  /// Set when a read or a watch asked for a revision that was compacted: the oldest one kept.
  public let compactedBefore: Int64?

  public init(_ description: String) {
    self.description = description
    compactedBefore = nil
  }

  public static func compacted(oldest: Int64) -> EtcdError {
    EtcdError(
      description: "the revision asked for was compacted; the oldest kept is \(oldest)",
      compactedBefore: oldest)
  }

  private init(description: String, compactedBefore: Int64?) {
    self.description = description
    self.compactedBefore = compactedBefore
  }
}
