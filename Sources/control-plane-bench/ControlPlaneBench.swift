import ArgumentParser
import Crypto
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import MeshControlClient
import MeshIdentity
import MeshProtos
import SwiftASN1
import Synchronization
import X509

/// `control-plane-bench`: the control plane under a mesh's load, measured from outside.
///
/// It makes a CA, starts the `control-plane` binary beside it (with `--store etcd`, an etcd
/// cluster and `--replicas` control planes on it, the sidecars spread over them), opens
/// `--sidecars` config subscriptions over mutual TLS (one connection each, as real sidecars
/// do), `--endpoints` of which register an endpoint, then applies `--warmup` versions untimed
/// and `--changes` more, timing for each how long until every subscriber has ACKed it. It
/// counts the bytes every subscriber receives for one more endpoint registered. Then it signs
/// CSRs as fast as `--concurrency` renewals at once allow. It prints the propagation p50/p99,
/// bytes per change, certificates per second, and each control plane's memory.
@main
struct ControlPlaneBench: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "control-plane-bench",
    abstract: "Measure config propagation to many sidecars and CSR signing throughput.",
    usage: "control-plane-bench [<options>]")

  @Option(help: "Simulated sidecar subscriptions.") var sidecars = 1000
  @Option(help: "Config versions to apply and time.") var changes = 5
  @Option(
    help: """
      Config versions to apply first, untimed: the first push after thousands of subscriptions \
      opened also pays for memory the simulated sidecars touch for the first time.
      """)
  var warmup = 1
  @Option(help: "Certificates to sign.") var certificates = 2000
  @Option(help: "Renewals in flight at once.") var concurrency = 32
  @Option(help: "Where the control planes keep their state: sqlite or etcd.") var store = "sqlite"
  @Option(help: "Control plane replicas (etcd only), on an etcd cluster of as many members.")
  var replicas = 1
  @Option(help: "Simulated sidecars that register an endpoint (at most --sidecars).")
  var endpoints = 0
  @Option(help: "Seconds to keep the subscriptions open after the figures (to inspect them).")
  var hold = 0
  @Option(
    help: """
      Instead of the rest: export this many spans over OTLP (512 spans a request, 2 of each \
      trace's 8, 4 exporters at once, as sidecars batch them) and print the control plane's CPU \
      per span.
      """)
  var spans = 0
  @Option(
    help: """
      With --spans: a second control plane from this folder's build (its control-plane \
      executable), the exports in rounds that alternate between the two, and each round's \
      ratio printed.
      """)
  var baseline: String?
  @Option(
    help: """
      Instead of the rest: what an idle mutual-TLS connection costs a server on swift-nio-ssl \
      and on the control plane's own TLS (OpenSSL), over this many connections each.
      """)
  var tlsMemory = 0
  @Option(help: "With --tls-memory: the bytes each connection sends and reads back first.")
  var tlsMessage = 25
  @Option(help: .hidden) var tlsServer: String?
  @Option(help: .hidden) var tlsCerts: String?

  func validate() throws {
    if let baseline {
      guard spans > 0 else { throw ValidationError("--baseline: only with --spans") }
      guard FileManager.default.isExecutableFile(atPath: "\(baseline)/control-plane") else {
        throw ValidationError("--baseline \(baseline): no control-plane executable there")
      }
    }
    guard ["sqlite", "etcd"].contains(store) else {
      throw ValidationError("--store \(store): sqlite or etcd")
    }
    guard replicas >= 1, store == "etcd" || replicas == 1 else {
      throw ValidationError("--replicas \(replicas): several need --store etcd")
    }
    guard changes >= 1, warmup >= 0 else {
      throw ValidationError("--changes \(changes), --warmup \(warmup): at least 1 and 0")
    }
    guard (0...sidecars).contains(endpoints) else {
      throw ValidationError("--endpoints \(endpoints): from 0 to --sidecars")
    }
  }

  func run() async throws {
    if let tlsServer, let tlsCerts { try await TLSMemory.serve(tlsServer, certs: tlsCerts) }
    if tlsMemory > 0 {
      try await TLSMemory.run(connections: tlsMemory, message: tlsMessage)
      return
    }
    let work = FileManager.default.temporaryDirectory
      .appendingPathComponent("control-plane-bench-\(UUID().uuidString.prefix(8))").path
    let certs = "\(work)/certs"
    try FileManager.default.createDirectory(atPath: certs, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: work) }

    // The CA, the operator, and one workload identity the simulated sidecars share.
    let root = try SigningAuthority.makeRoot(trustDomain: SPIFFEID.defaultTrustDomain)
    let issuer = try root.makeIssuer(trustDomain: SPIFFEID.defaultTrustDomain)
    let files = CAFiles(dir: certs)
    try CertificateFiles.writePrivateKey(issuer.key, to: files.issuerKey)
    try CertificateFiles.writeCertificates([issuer.certificate], to: files.issuer)
    try CertificateFiles.writeCertificates([root.certificate], to: files.bundle)
    for (name, id) in [
      ("operator", try SPIFFEID.operator("admin")), ("sim", try SPIFFEID.workload("sim")),
    ] {
      let key = P256.Signing.PrivateKey()
      let certificate = try issuer.issueSVID(
        for: id, publicKey: Certificate.PublicKey(key.publicKey), lifetime: 86_400)
      try CertificateFiles.writePrivateKey(key, to: "\(certs)/\(name)-key.pem")
      try CertificateFiles.writeCertificates(
        [certificate, issuer.certificate], to: "\(certs)/\(name).pem")
    }

    // The etcd cluster, and the control planes, each as its own process.
    let etcd = store == "etcd" ? try EtcdCluster(members: replicas, work: work) : nil
    defer { etcd?.stop() }
    let binary = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
      .appendingPathComponent("control-plane").path
    var planes: [Process] = []
    defer {
      for process in planes {
        process.terminate()
        process.waitUntilExit()
      }
    }
    var addresses: [String] = []
    /// Starts a control plane; its address. A replica after the first on etcd gets an issuer
    /// of its own (`signIssuer`).
    func start(
      _ binary: String, data: String, name: String, store: [String], signIssuer: Bool = false
    ) throws -> String {
      let process = Process()
      process.executableURL = URL(fileURLWithPath: binary)
      process.arguments =
        ["--listen", "127.0.0.1:0", "--join", "127.0.0.1:0", "--certs", certs, "--data", data]
        + store
      let log = Pipe()
      process.standardError = log
      process.standardOutput = log
      try process.run()
      planes.append(process)
      if signIssuer {
        // Its own issuer, its CSR signed with the root as an operator would.
        try Self.signIssuer(data: data, root: root)
      }
      let address = try Self.listeningAddress(log.fileHandleForReading)
      // The rest of its log goes to a file: a pipe nobody reads would stop it once full.
      let logFile = "\(work)/\(name).log"
      _ = FileManager.default.createFile(atPath: logFile, contents: nil)
      let sink = try FileHandle(forWritingTo: URL(fileURLWithPath: logFile))
      Thread.detachNewThread {
        while case let data = log.fileHandleForReading.availableData, !data.isEmpty {
          sink.write(data)
        }
      }
      print("\(name) at \(address) (pid \(process.processIdentifier), log \(logFile))")
      return address
    }
    for index in 0..<replicas {
      addresses.append(
        try start(
          binary, data: "\(work)/data-\(index)", name: "control-plane-\(index + 1)",
          store: etcd.map { ["--store", $0.url, "--replica", "cp-\(index + 1)"] } ?? [],
          signIssuer: index > 0))
    }
    let address = addresses[0]
    let admin = Client(
      address: address, certificate: files.operatorCertificate, key: files.operatorKey,
      bundle: files.bundle)
    // Each simulated sidecar at one replica, in turn.
    let sims = addresses.map {
      Client(
        address: $0, certificate: "\(certs)/sim.pem", key: "\(certs)/sim-key.pem",
        bundle: files.bundle)
    }
    let sim = sims[0]
    if spans > 0 {
      var targets = [(name: "this build", sim: sim, pid: planes[0].processIdentifier)]
      if let baseline {
        let address = try start(
          "\(baseline)/control-plane", data: "\(work)/data-baseline", name: "baseline", store: [])
        let client = Client(
          address: address, certificate: "\(certs)/sim.pem", key: "\(certs)/sim-key.pem",
          bundle: files.bundle)
        targets.insert(("baseline", client, planes[planes.count - 1].processIdentifier), at: 0)
      }
      try await Self.ingest(spans, into: targets)
      return
    }

    // Version 1 first, so every subscriber starts from it.
    _ = try await admin.apply(yaml: Self.config(1))
    let board = Board()
    let ready = Counter()
    let received = Counter()
    let endpointCount = endpoints
    let idle = planes.map { Self.residentBytes($0.processIdentifier) }
    let failures = Counter()
    try await withThrowingTaskGroup(of: Void.self) { group in
      let opening = ContinuousClock.now + .seconds(300)
      for index in 0..<sidecars {
        // At most 64 subscriptions connecting at once: thousands of TLS handshakes in the same
        // moment time out on a small machine (and real sidecars do not all start at once).
        while index - ready.value >= 64 {
          guard ContinuousClock.now < opening else {
            throw ValidationError("only \(ready.value) of \(sidecars) subscriptions came up")
          }
          try await Task.sleep(for: .milliseconds(5))
        }
        group.addTask {
          let node = "sim-\(index)@10.0.\(index / 250).\(index % 250):15101"
          // As a sidecar does, a subscription that failed (a handshake that timed out on a
          // busy machine) is made again; the failures are counted.
          let holding = Counter()
          while !Task.isCancelled {
            do {
              try await sims[index % sims.count].subscribe(
                node: node, registering: index < endpointCount,
                bytes: endpointCount > 0 ? received : nil
              ) { version in
                if version == 1 {
                  if holding.take(below: 1) { ready.add() }
                } else {
                  board.acked(version)
                }
              }
              return
            } catch {
              failures.add()
              try await Task.sleep(for: .seconds(1))
            }
          }
        }
      }
      // Wait for every subscription to hold version 1.
      let deadline = ContinuousClock.now + .seconds(120)
      while ready.value < sidecars {
        guard ContinuousClock.now < deadline else {
          throw ValidationError("only \(ready.value) of \(sidecars) subscriptions came up")
        }
        try await Task.sleep(for: .milliseconds(50))
      }
      print(
        "\(sidecars) subscriptions open (\(failures.value) attempts failed and were made again)")
      if endpointCount > 0 {
        // Every registration pushed (the discovery settles), then one more endpoint: what each
        // subscriber receives for it.
        try await Self.settle(received)
        let whole = try await admin.status().discovery
        let wholeBytes: [UInt8] = try whole.serializedBytes()
        let before = received.value
        let extra = Task {
          try await sim.subscribe(
            node: "sim-extra@10.1.0.1:15101", registering: true, bytes: Counter()
          ) { _ in }
        }
        try await Self.settle(received)
        let perSidecar = Double(received.value - before) / Double(sidecars)
        print(
          """
          one endpoint registered, at \(whole.endpoints.count) endpoints: \
          \(String(format: "%.0f", perSidecar)) bytes to each sidecar \
          (\(received.value - before) in all); a whole discovery is \(wholeBytes.count) bytes
          """
        )
        extra.cancel()
      }

      var rounds: [Duration] = []
      var all: [Duration] = []
      var warming: [Duration] = []
      for change in 0..<(warmup + changes) {
        let version = Int64(change + 2)
        board.start(version)
        _ = try await admin.apply(yaml: Self.config(Int(version)))
        let deadline = ContinuousClock.now + .seconds(60)
        while board.count(version) < sidecars {
          guard ContinuousClock.now < deadline else {
            throw ValidationError(
              "version \(version): \(board.count(version)) of \(sidecars) ACKed")
          }
          try await Task.sleep(for: .milliseconds(2))
        }
        let times = board.times(version)
        guard change >= warmup else {
          warming.append(times.max()!)
          continue
        }
        rounds.append(times.max()!)
        all += times
      }
      all.sort()
      func ms(_ duration: Duration) -> String {
        String(
          format: "%.1f ms",
          Double(duration.components.attoseconds) / 1e15 + Double(duration.components.seconds)
            * 1000)
      }
      print("config propagation to \(sidecars) sidecars over \(changes) changes:")
      print(
        """
        per sidecar   p50 \(ms(all[all.count / 2]))  p99 \(ms(all[all.count * 99 / 100]))  max \
        \(ms(all.last!))
        """
      )
      print("  until all     " + rounds.map(ms).joined(separator: ", "))
      if !warming.isEmpty {
        print("  (untimed warm-up, until all: " + warming.map(ms).joined(separator: ", ") + ")")
      }
      let last = Int64(warmup + changes + 1)
      let status = try await admin.status()
      print(
        """
        meshctl status: \(status.sidecars.filter { $0.version == last }.count) of \
        \(status.sidecars.count) sidecars at version \(last)
        """
      )
      for (index, process) in planes.enumerated() {
        let streams = sidecars / planes.count
        let grown = Self.residentBytes(process.processIdentifier) - idle[index]
        print(
          """
            control plane \(index + 1) memory with \(streams) streams: \
          \(Self.memory(process.processIdentifier)); \(grown / 1_048_576) MB more than before the \
          streams, \(grown / max(streams, 1) / 1024) KB per stream
          """
        )
      }
      if hold > 0 {
        print("holding the subscriptions open for \(hold) s")
        try await Task.sleep(for: .seconds(hold))
      }
      group.cancelAll()
    }

    // CSR signing: renewals over the shared workload identity.
    let signed = Counter()
    let start = ContinuousClock.now
    do {
      try await signCertificates(sim, signed)
    } catch {
      for index in planes.indices {
        let log =
          (try? String(contentsOfFile: "\(work)/control-plane-\(index + 1).log", encoding: .utf8))
          ?? ""
        print(
          "control plane \(index + 1)'s last log lines:\n\(log.split(separator: "\n").suffix(5).joined(separator: "\n"))"
        )
      }
      throw error
    }
    let elapsed = ContinuousClock.now - start
    let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    print(
      "CSR signing: \(certificates) certificates in \(String(format: "%.2f", seconds)) s = \(String(format: "%.0f", Double(certificates) / seconds)) per second (\(concurrency) in flight)"
    )
    print("control plane 1 memory at the end: \(Self.memory(planes[0].processIdentifier))")
    print(
      "goals: propagation p99 under 1 s for 1,000 sidecars; at least 500 certificates per second")
  }

  /// Signs `--certificates` CSRs, `--concurrency` at a time over four connections.
  private func signCertificates(_ sim: Client, _ signed: Counter) async throws {
    let certificates = self.certificates
    let concurrency = self.concurrency
    try await sim.withClients(connections: 4) { clients in
      try await withThrowingTaskGroup(of: Void.self) { group in
        for worker in 0..<concurrency {
          group.addTask {
            let client = clients[worker % clients.count]
            while signed.take(below: certificates) {
              let key = P256.Signing.PrivateKey()
              var request = Trellis_Mesh_V1_CertifyRequest()
              request.csr = try CertificateSigningRequest.workloadPEM(key)
              _ = try await client.certify(request)
            }
          }
        }
        try await group.waitForAll()
      }
    }
  }

  /// Waits until no snapshot bytes arrived for half a second.
  static func settle(_ received: Counter) async throws {
    var last = -1
    while received.value != last {
      last = received.value
      try await Task.sleep(for: .milliseconds(500))
    }
  }

  /// Waits for a joining replica's CSR (data/issuer.csr) and signs it into data/issuer.pem.
  static func signIssuer(data: String, root: SigningAuthority) throws {
    let deadline = Date().addingTimeInterval(60)
    while !FileManager.default.fileExists(atPath: "\(data)/issuer.csr") {
      guard Date() < deadline else { throw ValidationError("no issuer CSR in \(data)") }
      Thread.sleep(forTimeInterval: 0.05)
    }
    let request = try CertificateSigningRequest(
      pemEncoded: try String(contentsOfFile: "\(data)/issuer.csr", encoding: .utf8))
    let issuer = try root.signIssuer(request: request, trustDomain: SPIFFEID.defaultTrustDomain)
    try CertificateFiles.writeCertificates([issuer], to: "\(data)/issuer.pem")
  }

  static func config(_ version: Int) -> String {
    "services:\n  users:\n    endpoints:\n      - address: 127.0.0.1:\(15100 + version)\n"
  }

  /// The API address from the control plane's `listening` log line.
  static func listeningAddress(_ handle: FileHandle) throws -> String {
    var text = ""
    let deadline = Date().addingTimeInterval(30)
    while Date() < deadline {
      let data = handle.availableData
      if data.isEmpty { break }
      text += String(decoding: data, as: UTF8.self)
      for line in text.split(separator: "\n") where line.contains("\"listening\"") {
        if let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
          let address = object["address"] as? String
        {
          return address
        }
      }
    }
    throw ValidationError("the control plane did not start: \(text)")
  }

  /// Exports `count` spans to each target, 4 exporters at once, and prints each one's CPU per
  /// span (utime + stime from /proc, over the exports only) and rate. With two targets (a
  /// baseline first), the spans go in 5 rounds that alternate between them, which one goes
  /// first alternating too (ABBA), so that both meet the same moments of a shared machine; each
  /// round's ratio is printed with the median.
  static func ingest(
    _ count: Int, into targets: [(name: String, sim: Client, pid: Int32)]
  ) async throws {
    let perRequest = 512
    let rounds = targets.count > 1 ? 5 : 1
    let requests = max((count + perRequest - 1) / perRequest / rounds, 1)
    var figures = [[(cpu: Double, seconds: Double)]](repeating: [], count: targets.count)
    var numbers = [Int](repeating: 4, count: targets.count)
    // A first round untimed: the store's first pages, the connections.
    for target in targets {
      try await target.sim.export((0..<4).map { Self.spans(perRequest, number: $0) })
    }
    for round in 0..<rounds {
      let order = round % 2 == 0 ? Array(targets.indices) : targets.indices.reversed()
      for index in order {
        let target = targets[index]
        let next = Counter()
        let first = numbers[index]
        let before = Self.cpuSeconds(target.pid)
        let started = ContinuousClock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
          for _ in 0..<4 {
            group.addTask {
              while next.take(below: requests) {
                try await target.sim.export([Self.spans(perRequest, number: first + next.value)])
              }
            }
          }
          try await group.waitForAll()
        }
        let elapsed = ContinuousClock.now - started
        figures[index].append(
          (
            Self.cpuSeconds(target.pid) - before,
            Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
          ))
        numbers[index] += requests
      }
    }
    let stored = Double(requests * perRequest)
    func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }
    for (index, target) in targets.enumerated() {
      let perSpan = figures[index].map { $0.cpu / stored * 1e6 }
      let rate = median(figures[index].map { stored / $0.seconds })
      let each = perSpan.map { String(format: "%.1f", $0) }.joined(separator: ", ")
      print(
        """
        span ingestion, \(target.name): \(Int(stored) * rounds) spans, \
        \(String(format: "%.0f", rate)) spans/s, \
        \(String(format: "%.1f", median(perSpan))) µs of control-plane CPU per span \
        \(rounds > 1 ? "(median of \(rounds) rounds: \(each)) " : "")(goal: under 25 µs)
        """)
    }
    if targets.count > 1 {
      let ratios = zip(figures[0], figures[1]).map { $1.cpu / $0.cpu }
      print(
        """
        this build against the baseline: \(String(format: "%.2f", median(ratios)))× CPU per span \
        (each round: \(ratios.map { String(format: "%.2f", $0) }.joined(separator: ", ")))
        """)
    }
  }

  /// An export of `count` spans as a sidecar sends them: its part of each trace (2 spans of
  /// 8: a trace's spans come from 4 processes, in 4 exports, here 4 consecutive ones), each span
  /// with the attributes a sidecar sets, grouped by the service that made them.
  static let tracesBegan = UInt64(Date().timeIntervalSince1970 * 1e9)

  static func spans(_ count: Int, number: Int) -> OTLPExportRequest {
    let services = ["gateway", "orders", "payments", "users", "events"]
    let now = UInt64(Date().timeIntervalSince1970 * 1e9)
    var request = OTLPExportRequest()
    func random(_ count: Int) -> Data { Data((0..<count).map { _ in UInt8.random(in: 1...255) }) }
    func mix(_ value: UInt64) -> UInt64 {  // SplitMix64's finalizer
      var z = value &+ 0x9E37_79B9_7F4A_7C15
      z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
      z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
      return z ^ (z >> 31)
    }
    for index in 0..<count {
      var span = OTLPSpan()
      // The same 256 traces for 4 exports in a row, with ids as the mesh's tracer makes them:
      // when the trace began (seconds, then 1/65536ths), then 10 random bytes (here a hash of
      // the trace's number, so that its 4 parts agree).
      let began = tracesBegan + UInt64((number / 4) * 256 + index / 2) * 250_000  // 4,000/s
      let seconds = began / 1_000_000_000
      let fraction = (began % 1_000_000_000) * 65536 / 1_000_000_000
      let tail = mix(UInt64(number / 4) << 32 | UInt64(index / 2))
      span.traceID =
        withUnsafeBytes(of: (seconds << 32 | fraction << 16 | tail >> 48).bigEndian) { Data($0) }
        + withUnsafeBytes(of: mix(tail).bigEndian) { Data($0) }
      span.spanID = random(8)
      if index % 2 != 0 || number % 4 != 0 { span.parentSpanID = random(8) }
      span.name = "shop.v1.Service\(index % 8)/Call"
      span.kind = index % 2 == 0 ? .server : .client
      span.startTimeUnixNano = now + UInt64(index) * 1000
      span.endTimeUnixNano = span.startTimeUnixNano + 2_000_000
      for (key, value) in [
        ("rpc.system", "grpc"), ("rpc.service", "shop.v1.Service\(index % 8)"),
        ("rpc.method", "Call"), ("trellis.direction", "inbound"),
        ("trellis.peer.identity", "spiffe://trellis.local/svc/gateway"),
        ("trellis.endpoint", "127.0.0.1:7001"),
      ] {
        var attribute = Opentelemetry_Proto_Common_V1_KeyValue()
        attribute.key = key
        attribute.value.stringValue = value
        span.attributes.append(attribute)
      }
      var status = Opentelemetry_Proto_Common_V1_KeyValue()
      status.key = "rpc.grpc.status_code"
      status.value.intValue = 0
      span.attributes.append(status)
      if index == 0 {
        var resource = Opentelemetry_Proto_Trace_V1_ResourceSpans()
        var name = Opentelemetry_Proto_Common_V1_KeyValue()
        name.key = "service.name"
        name.value.stringValue = services[number % services.count]
        resource.resource.attributes = [name]
        resource.scopeSpans = [Opentelemetry_Proto_Trace_V1_ScopeSpans()]
        request.resourceSpans.append(resource)
      }
      request.resourceSpans[request.resourceSpans.count - 1].scopeSpans[0].spans.append(span)
    }
    return request
  }

  /// A process's CPU time so far (utime + stime), in seconds.
  static func cpuSeconds(_ pid: Int32) -> Double {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
      let end = stat.lastIndex(of: ")")
    else { return 0 }
    let fields = stat[stat.index(after: end)...].split(separator: " ")
    guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else {
      return 0
    }
    return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
  }

  /// VmRSS and VmHWM of a process.
  static func memory(_ pid: Int32) -> String {
    guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else {
      return "?"
    }
    func field(_ name: String) -> String {
      status.split(separator: "\n").first { $0.hasPrefix(name) }?.split(separator: " ").dropFirst()
        .joined(separator: " ") ?? "?"
    }
    return "RSS \(field("VmRSS:")), peak \(field("VmHWM:"))"
  }

  /// A process's resident set, in bytes (0 when it cannot be read).
  static func residentBytes(_ pid: Int32) -> Int {
    guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
      let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
      let kilobytes = Int(line.split(separator: " ").dropFirst().first ?? "")
    else { return 0 }
    return kilobytes * 1024
  }
}

/// When each subscriber ACKed each version, relative to when it was applied.
final class Board: Sendable {
  private let state = Mutex<(starts: [Int64: ContinuousClock.Instant], acks: [Int64: [Duration]])>(
    ([:], [:]))

  func start(_ version: Int64) { state.withLock { $0.starts[version] = .now } }

  func acked(_ version: Int64) {
    let now = ContinuousClock.now
    state.withLock {
      guard let start = $0.starts[version] else { return }
      $0.acks[version, default: []].append(now - start)
    }
  }

  func count(_ version: Int64) -> Int { state.withLock { $0.acks[version]?.count ?? 0 } }
  func times(_ version: Int64) -> [Duration] { state.withLock { $0.acks[version] ?? [] } }
}

/// A client of the control plane with one identity.
struct Client: Sendable {
  let address: String
  let certificate: String
  let key: String
  let bundle: String

  private func transport() throws -> HTTP2ClientTransport.Posix {
    let parts = address.split(separator: ":")
    return try HTTP2ClientTransport.Posix(
      target: .ipv4(address: String(parts[0]), port: Int(parts[1])!),
      transportSecurity: .meshIdentity(certificate: certificate, key: key, bundle: bundle))
  }

  func apply(yaml: String) async throws -> Trellis_Mesh_V1_ApplyConfigResponse {
    var request = Trellis_Mesh_V1_ApplyConfigRequest()
    request.yaml = yaml
    return try await withGRPCClient(transport: try transport()) { [request] client in
      try await Trellis_Mesh_V1_Admin.Client(wrapping: client).applyConfig(request)
    }
  }

  /// Sends each request over OTLP's `TraceService/Export`, on one connection.
  func export(_ requests: [OTLPExportRequest]) async throws {
    try await withGRPCClient(transport: try transport()) { client in
      let collector = Opentelemetry_Proto_Collector_Trace_V1_TraceService.Client(wrapping: client)
      for request in requests { _ = try await collector.export(request) }
    }
  }

  func status() async throws -> Trellis_Mesh_V1_StatusResponse {
    try await withGRPCClient(transport: try transport()) { client in
      try await Trellis_Mesh_V1_Admin.Client(wrapping: client).status(
        Trellis_Mesh_V1_StatusRequest())
    }
  }

  /// One subscription on its own connection: ACKs every snapshot, reporting its version and
  /// counting its bytes; with `registering`, it registers an endpoint (at its node's address).
  func subscribe(
    node: String, registering: Bool = false, bytes: Counter? = nil,
    received: @escaping @Sendable (Int64) -> Void
  ) async throws {
    let (requests, outbox) = AsyncStream.makeStream(of: Trellis_Mesh_V1_SubscribeRequest.self)
    var hello = Trellis_Mesh_V1_SubscribeRequest()
    hello.node = node
    if registering {
      hello.registration.address = String(node.split(separator: "@").last ?? "")
      hello.registration.serving = true
      hello.registration.leaseSeconds = 300
      hello.registration.labels = ["version": "v1"]
    }
    outbox.yield(hello)
    try await withGRPCClient(transport: try transport()) { client in
      try await Trellis_Mesh_V1_Config.Client(wrapping: client).subscribe(
        requestProducer: { writer in
          for await request in requests { try await writer.write(request) }
        },
        onResponse: { response in
          for try await snapshot in response.messages {
            if let bytes {
              let encoded: [UInt8] = try snapshot.serializedBytes()
              bytes.add(encoded.count)
            }
            var ack = Trellis_Mesh_V1_SubscribeRequest()
            ack.node = node
            ack.version = snapshot.version
            ack.responseNonce = snapshot.nonce
            // As a sidecar reports what it runs: the trust it took in.
            ack.trustGeneration = snapshot.trustGeneration
            outbox.yield(ack)
            received(snapshot.version)
          }
        })
    }
  }

  /// Runs `body` with `connections` identity clients open.
  func withClients(
    connections: Int,
    _ body:
      @Sendable ([Trellis_Mesh_V1_Identity.Client<HTTP2ClientTransport.Posix>]) async throws
      -> Void
  ) async throws {
    try await withThrowingTaskGroup(of: Void.self) { group in
      var clients: [GRPCClient<HTTP2ClientTransport.Posix>] = []
      for _ in 0..<connections {
        let client = GRPCClient(transport: try transport())
        clients.append(client)
        group.addTask { try await client.runConnections() }
      }
      try await body(clients.map { Trellis_Mesh_V1_Identity.Client(wrapping: $0) })
      for client in clients { client.beginGracefulShutdown() }
      try await group.waitForAll()
    }
  }
}

/// A shared count.
final class Counter: Sendable {
  private let count = Mutex(0)
  var value: Int { count.withLock { $0 } }
  func add(_ amount: Int = 1) { count.withLock { $0 += amount } }
  /// Counts one more if the count is under `limit`; false once it is not.
  func take(below limit: Int) -> Bool {
    count.withLock {
      guard $0 < limit else { return false }
      $0 += 1
      return true
    }
  }
}

/// An etcd cluster for the benchmark: Debian's `etcd-server`, on loopback ports the system
/// gave a moment before, its data in the work folder.
struct EtcdCluster {
  let url: String
  let processes: [Process]

  init(members: Int, work: String) throws {
    func port() throws -> Int {
      let socket = try ServerSocket()
      return socket.port
    }
    let ports = try (0..<members).map { _ in (client: try port(), peer: try port()) }
    url = "etcd://" + ports.map { "127.0.0.1:\($0.client)" }.joined(separator: ",")
    let cluster = ports.enumerated().map { "m\($0.offset)=http://127.0.0.1:\($0.element.peer)" }
      .joined(separator: ",")
    var started: [Process] = []
    for (index, port) in ports.enumerated() {
      let process = Process()
      process.executableURL = URL(fileURLWithPath: "/usr/bin/etcd")
      process.arguments = [
        "--name", "m\(index)", "--data-dir", "\(work)/etcd-\(index)",
        "--listen-client-urls", "http://127.0.0.1:\(port.client)",
        "--advertise-client-urls", "http://127.0.0.1:\(port.client)",
        "--listen-peer-urls", "http://127.0.0.1:\(port.peer)",
        "--initial-advertise-peer-urls", "http://127.0.0.1:\(port.peer)",
        "--initial-cluster", cluster, "--initial-cluster-state", "new",
        "--log-outputs", "\(work)/etcd-\(index).log", "--logger", "zap",
        // A quota for many writes: the bench's registrations.
        "--quota-backend-bytes", "\(4 * 1024 * 1024 * 1024)",
      ]
      process.standardOutput = FileHandle.nullDevice
      process.standardError = FileHandle.nullDevice
      try process.run()
      started.append(process)
    }
    processes = started
    print("etcd: \(members) member\(members == 1 ? "" : "s") at \(url)")
  }

  func stop() {
    for process in processes {
      process.terminate()
      process.waitUntilExit()
    }
  }
}

/// A TCP port the system hands out now (bound, then released).
struct ServerSocket {
  let port: Int

  init() throws {
    let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard descriptor >= 0 else { throw ValidationError("socket: \(errno)") }
    defer { close(descriptor) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) { pointer in
      pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        bind(descriptor, $0, length) == 0 && getsockname(descriptor, $0, &length) == 0
      }
    }
    guard bound else { throw ValidationError("bind: \(errno)") }
    port = Int(UInt16(bigEndian: address.sin_port))
  }
}
