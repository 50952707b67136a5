import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import NIOCore
import NIOHTTP2
import Synchronization

/// A client of etcd's v3 API (gRPC) over one or more members' client ports: the calls the
/// control plane's store makes, with etcd's own messages (`Etcdserverpb_…`, `Mvccpb_…`).
///
/// Each member has a connection of its own. Calls go round robin to the members that are up;
/// etcd forwards what needs the leader. A read that a member has not answered within
/// `hedgingDelay` is sent to the next member too, and the first answer wins; a read that a
/// member refuses as unavailable goes to the next member at once.
///
/// A member is up while a watch of a key nobody writes stays open on its connection: the
/// stream keeps pings going on that connection (etcd refuses pings on a connection with no
/// stream open), so a member cut off — no reset, no answer — is found out within
/// `pingInterval + pingTimeout`, and every call sent to it fails then.
///
/// Run `run()` in a task for as long as the client is used; `close()` ends it.
public final class EtcdClient: Sendable {
  /// The members' client ports.
  public let endpoints: [Endpoint]
  private let members: [Member]
  private let state = Mutex(State())
  /// How long a read waits for its member before it is sent to the next one too.
  let hedgingDelay: Duration

  static let pingInterval = Duration.seconds(6)
  static let pingTimeout = Duration.seconds(3)
  /// The key the watch that keeps a member's connection pinged is on: nothing writes it.
  static let pingedKey = Data("\u{0}trellis/etcd-client/connection".utf8)

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

  private struct Member: Sendable {
    let endpoint: Endpoint
    let client: GRPCClient<HTTP2ClientTransport.Posix>
  }

  private struct State {
    var up: [Bool] = []
    var opened: [Int] = []
    var next = 0
    var closed = false
    /// Ends the pinged watches when the client closes.
    var closing: [AsyncStream<Void>.Continuation] = []
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

  /// A client of the members at `endpoints` (addresses or host names), over TLS when `tls`
  /// is given, else in plain text.
  public init(endpoints: [Endpoint], tls: TLS? = nil, hedgingDelay: Duration = .seconds(2)) throws {
    guard !endpoints.isEmpty else { throw EtcdError("no etcd member given") }
    self.endpoints = endpoints
    self.hedgingDelay = hedgingDelay
    members = try endpoints.map { endpoint in
      let target: any ResolvableTarget =
        Self.isIPv4(endpoint.host)
        ? ResolvableTargets.IPv4(
          addresses: [SocketAddress.IPv4(host: endpoint.host, port: endpoint.port)])
        : ResolvableTargets.DNS(host: endpoint.host, port: endpoint.port)
      let transport = try HTTP2ClientTransport.Posix(
        target: target, transportSecurity: tls?.transportSecurity ?? .plaintext,
        config: .defaults {
          $0.backoff.max = .seconds(2)
          // etcd refuses pings more often than every 5 s (--grpc-keepalive-min-time), and
          // any on a connection without a stream open.
          $0.connection.keepalive = .init(
            time: Self.pingInterval, timeout: Self.pingTimeout, allowWithoutCalls: false)
          // The member's own pings are answered below the HTTP/2 handler (`PeerPingAnswerer`).
          $0.channelDebuggingCallbacks.onCreateTCPConnection = { channel in
            channel.eventLoop.makeCompletedFuture {
              let http2 = try channel.pipeline.syncOperations.handler(type: NIOHTTP2Handler.self)
              try channel.pipeline.syncOperations.addHandler(
                PeerPingAnswerer(), position: .before(http2))
            }
          }
        })
      return Member(endpoint: endpoint, client: GRPCClient(transport: transport))
    }
    state.withLock { state in
      state.up = Array(repeating: false, count: endpoints.count)
      state.opened = Array(repeating: 0, count: endpoints.count)
    }
  }

  /// Keeps the connections; returns once `close()` is called.
  public func run() async throws {
    try await withThrowingDiscardingTaskGroup { group in
      for (index, member) in members.enumerated() {
        group.addTask { try await member.client.runConnections() }
        group.addTask { await self.keepPinged(index) }
      }
    }
  }

  public func close() {
    let closing = state.withLock { state in
      state.closed = true
      defer { state.closing = [] }
      return state.closing
    }
    for continuation in closing { continuation.finish() }
    for member in members { member.client.beginGracefulShutdown() }
  }

  /// Whether each member is up (its connection's pinged watch is open), in `endpoints` order.
  public var membersUp: [Bool] { state.withLock { $0.up } }

  /// How many times each member's pinged watch was opened: more than once when its
  /// connection was lost (or closed by the member) and made again.
  public var membersConnected: [Int] { state.withLock { $0.opened } }

  /// Holds a watch open on member `index`'s connection for as long as the client runs, and
  /// marks the member up while it is; opens it again (after a pause) when it fails.
  private func keepPinged(_ index: Int) async {
    var pause = Duration.milliseconds(100)
    while !Task.isCancelled {
      let done = AsyncStream<Void>.makeStream()
      guard
        state.withLock({ state in
          if !state.closed { state.closing.append(done.continuation) }
          return !state.closed
        })
      else { return }
      var create = Etcdserverpb_WatchCreateRequest()
      create.key = Self.pingedKey
      var watch = Etcdserverpb_WatchRequest()
      watch.createRequest = create
      let request = watch
      do {
        try await Etcdserverpb_Watch.Client(wrapping: members[index].client).watch(
          requestProducer: { writer in
            try await writer.write(request)
            for await _ in done.stream {}
          },
          onResponse: { response in
            for try await message in response.messages where message.created {
              self.state.withLock { state in
                state.up[index] = true
                state.opened[index] += 1
              }
            }
          })
      } catch {}
      let (wasUp, closed) = state.withLock { state in
        defer { state.up[index] = false }
        return (state.up[index], state.closed)
      }
      if closed { return }
      pause = wasUp ? .milliseconds(100) : min(pause * 2, .seconds(2))
      try? await Task.sleep(for: pause)
    }
  }

  /// The members in the order a call tries them: those up, round robin, then the others.
  private func order() -> [Member] {
    let indices = state.withLock { state in
      let count = state.up.count
      let start = state.next
      state.next = (state.next + 1) % count
      let rotated = (0..<count).map { (start + $0) % count }
      return rotated.filter { state.up[$0] } + rotated.filter { !state.up[$0] }
    }
    return indices.map { members[$0] }
  }

  /// A call that changes something, or a stream: sent to one member.
  private func once<Result>(
    _ call: (GRPCClient<HTTP2ClientTransport.Posix>) async throws -> Result
  ) async throws -> Result {
    try await named { try await call(order()[0].client) }
  }

  /// A read: sent to the next member as well when its member has not answered within
  /// `hedgingDelay`, or at once when its member is unavailable; the first answer wins.
  private func read<Result: Sendable>(
    _ call: @Sendable @escaping (GRPCClient<HTTP2ClientTransport.Posix>) async throws -> Result
  ) async throws -> Result {
    let members = order()
    return try await named {
      try await withThrowingTaskGroup(of: ReadAttempt<Result>.self) { group in
        var started = 0
        var running = 0
        var lastError: (any Error)?
        func startNext() {
          let client = members[started].client
          started += 1
          running += 1
          group.addTask {
            do { return .answered(try await call(client)) } catch { return .failed(error) }
          }
          if started < members.count {
            group.addTask { [hedgingDelay, started] in
              try await Task.sleep(for: hedgingDelay)
              return .hedge(after: started)
            }
          }
        }
        startNext()
        while let attempt = try await group.next() {
          switch attempt {
          case .answered(let result):
            group.cancelAll()
            return result
          case .failed(let error):
            running -= 1
            lastError = error
            let unavailable = (error as? RPCError)?.code == .unavailable
            if unavailable, started < members.count {
              startNext()
            } else if !unavailable || running == 0 {
              group.cancelAll()
              throw error
            }
          case .hedge(let after):
            // Only the timer of the member asked last counts: when a failure moved on to the
            // next member early, the timer of the one before is stale.
            if after == started, started < members.count, running > 0 { startNext() }
          }
        }
        throw lastError ?? CancellationError()
      }
    }
  }

  private static func kv(
    _ client: GRPCClient<HTTP2ClientTransport.Posix>
  ) -> Etcdserverpb_KV.Client<HTTP2ClientTransport.Posix> { .init(wrapping: client) }

  private static func lease(
    _ client: GRPCClient<HTTP2ClientTransport.Posix>
  ) -> Etcdserverpb_Lease.Client<HTTP2ClientTransport.Posix> { .init(wrapping: client) }

  private static func isIPv4(_ host: String) -> Bool {
    let parts = host.split(separator: ".", omittingEmptySubsequences: false)
    return parts.count == 4 && parts.allSatisfy { UInt8($0) != nil }
  }

  // MARK: Keys

  /// The key `key`, or nil.
  public func get(_ key: String) async throws -> Mvccpb_KeyValue? {
    var request = Etcdserverpb_RangeRequest()
    request.key = Data(key.utf8)
    return try await read { [request] in try await Self.kv($0).range(request) }.kvs.first
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
    return try await read { [request] in try await Self.kv($0).range(request) }
  }

  /// How many keys are under `prefix`.
  public func count(prefix: String) async throws -> Int64 {
    var request = Etcdserverpb_RangeRequest()
    request.key = Data(prefix.utf8)
    request.rangeEnd = Self.rangeEnd(ofPrefix: Data(prefix.utf8))
    request.countOnly = true
    return try await read { [request] in try await Self.kv($0).range(request) }.count
  }

  /// Sets `key` (attached to `lease`, if not 0): the store's revision after it.
  @discardableResult
  public func put(_ key: String, _ value: Data, lease: Int64 = 0) async throws -> Int64 {
    var request = Etcdserverpb_PutRequest()
    request.key = Data(key.utf8)
    request.value = value
    request.lease = lease
    return try await once { [request] in try await Self.kv($0).put(request) }.header.revision
  }

  /// Deletes `key`, or every key under it with `prefix`: how many were deleted.
  @discardableResult
  public func delete(_ key: String, prefix: Bool = false) async throws -> Int64 {
    var request = Etcdserverpb_DeleteRangeRequest()
    request.key = Data(key.utf8)
    if prefix { request.rangeEnd = Self.rangeEnd(ofPrefix: Data(key.utf8)) }
    return try await once { [request] in try await Self.kv($0).deleteRange(request) }.deleted
  }

  /// Applies `request` atomically (at most 128 operations, etcd's default limit).
  public func txn(_ request: Etcdserverpb_TxnRequest) async throws -> Etcdserverpb_TxnResponse {
    try await once { [request] in try await Self.kv($0).txn(request) }
  }

  /// Forgets the history before `revision`.
  public func compact(revision: Int64) async throws {
    var request = Etcdserverpb_CompactionRequest()
    request.revision = revision
    _ = try await once { [request] in try await Self.kv($0).compact(request) }
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
    let response = try await once { [request] in try await Self.lease($0).leaseGrant(request) }
    guard response.error.isEmpty else { throw EtcdError("lease not granted: \(response.error)") }
    return response.id
  }

  /// Renews lease `id`: its TTL from now, or nil when it has expired.
  public func keepAlive(_ id: Int64) async throws -> Int64? {
    var keepAlive = Etcdserverpb_LeaseKeepAliveRequest()
    keepAlive.id = id
    let request = keepAlive
    do {
      return try await once { client in
        try await Self.lease(client).leaseKeepAlive(
          requestProducer: { writer in try await writer.write(request) },
          onResponse: { response in
            for try await message in response.messages {
              return message.ttl > 0 ? message.ttl : nil
            }
            throw EtcdError("etcd closed the keep-alive stream of lease \(id) without answering")
          })
      }
    } catch let error as RPCError where error.code == .notFound {
      return nil  // "requested lease not found": it expired, or was revoked
    }
  }

  /// Ends lease `id` now: the keys attached to it are deleted.
  public func revokeLease(_ id: Int64) async throws {
    var request = Etcdserverpb_LeaseRevokeRequest()
    request.id = id
    _ = try await once { [request] in try await Self.lease($0).leaseRevoke(request) }
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
    try await once { client in
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
    try await read { try await Etcdserverpb_Maintenance.Client(wrapping: $0).status(.init()) }
  }

  /// The cluster's members.
  public func members() async throws -> [Etcdserverpb_Member] {
    try await read { try await Etcdserverpb_Cluster.Client(wrapping: $0).memberList(.init()) }
      .members
  }
}

/// How one member's attempt at a read ended, or that the next member is to be asked too.
private enum ReadAttempt<Result: Sendable>: Sendable {
  case answered(Result)
  case failed(any Error)
  /// The hedging delay passed since the `after`-th member was asked.
  case hedge(after: Int)
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
