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
/// It makes a CA, starts the `control-plane` binary beside it, opens `--sidecars` config
/// subscriptions over mutual TLS (one connection each, as real sidecars do), then applies
/// `--changes` new versions and times, for each, how long until every subscriber has ACKed
/// it. Then it signs CSRs as fast as `--concurrency` renewals at once allow. It prints the
/// propagation p50/p99, certificates per second, and the control plane's memory.
@main
struct ControlPlaneBench: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "control-plane-bench",
    abstract: "Measure config propagation to many sidecars and CSR signing throughput.",
    usage: "control-plane-bench [<options>]")

  @Option(help: "Simulated sidecar subscriptions.") var sidecars = 1000
  @Option(help: "Config versions to apply and time.") var changes = 5
  @Option(help: "Certificates to sign.") var certificates = 2000
  @Option(help: "Renewals in flight at once.") var concurrency = 32

  func run() async throws {
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

    // The control plane, as its own process.
    let binary = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
      .appendingPathComponent("control-plane").path
    let process = Process()
    process.executableURL = URL(fileURLWithPath: binary)
    process.arguments = [
      "--listen", "127.0.0.1:0", "--join", "127.0.0.1:0", "--certs", certs, "--data",
      "\(work)/data",
    ]
    let log = Pipe()
    process.standardError = log
    process.standardOutput = log
    try process.run()
    defer {
      process.terminate()
      process.waitUntilExit()
    }
    let address = try Self.listeningAddress(log.fileHandleForReading)
    print("control plane at \(address) (pid \(process.processIdentifier))")

    let admin = Client(
      address: address, certificate: files.operatorCertificate, key: files.operatorKey,
      bundle: files.bundle)
    let sim = Client(
      address: address, certificate: "\(certs)/sim.pem", key: "\(certs)/sim-key.pem",
      bundle: files.bundle)

    // Version 1 first, so every subscriber starts from it.
    _ = try await admin.apply(yaml: Self.config(1))
    let board = Board()
    let ready = Counter()
    try await withThrowingTaskGroup(of: Void.self) { group in
      for index in 0..<sidecars {
        group.addTask {
          try await sim.subscribe(node: "sim-\(index)@10.0.\(index / 250).\(index % 250):15101") {
            version in
            if version == 1 {
              ready.add()
            } else {
              board.acked(version)
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
      print("\(sidecars) subscriptions open")

      var rounds: [Duration] = []
      var all: [Duration] = []
      for change in 0..<changes {
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
      let status = try await admin.status()
      print(
        """
        meshctl status: \(status.sidecars.filter { $0.version == Int64(changes + 1) }.count) of \
        \(status.sidecars.count) sidecars at version \(changes + 1)
        """
      )
      print(
        "  control plane memory with \(sidecars) streams: \(Self.memory(process.processIdentifier))"
      )
      group.cancelAll()
    }

    // CSR signing: renewals over the shared workload identity.
    let signed = Counter()
    let start = ContinuousClock.now
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
    let elapsed = ContinuousClock.now - start
    let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    print(
      "CSR signing: \(certificates) certificates in \(String(format: "%.2f", seconds)) s = \(String(format: "%.0f", Double(certificates) / seconds)) per second (\(concurrency) in flight)"
    )
    print("control plane memory at the end: \(Self.memory(process.processIdentifier))")
    print(
      "goals: propagation p99 under 1 s for 1,000 sidecars; at least 500 certificates per second")
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

  func status() async throws -> Trellis_Mesh_V1_StatusResponse {
    try await withGRPCClient(transport: try transport()) { client in
      try await Trellis_Mesh_V1_Admin.Client(wrapping: client).status(
        Trellis_Mesh_V1_StatusRequest())
    }
  }

  /// One subscription on its own connection: ACKs every snapshot, reporting its version.
  func subscribe(node: String, received: @escaping @Sendable (Int64) -> Void) async throws {
    let (requests, outbox) = AsyncStream.makeStream(of: Trellis_Mesh_V1_SubscribeRequest.self)
    var hello = Trellis_Mesh_V1_SubscribeRequest()
    hello.node = node
    outbox.yield(hello)
    try await withGRPCClient(transport: try transport()) { client in
      try await Trellis_Mesh_V1_Config.Client(wrapping: client).subscribe(
        requestProducer: { writer in
          for await request in requests { try await writer.write(request) }
        },
        onResponse: { response in
          for try await snapshot in response.messages {
            var ack = Trellis_Mesh_V1_SubscribeRequest()
            ack.node = node
            ack.version = snapshot.version
            ack.responseNonce = snapshot.nonce
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
  func add() { count.withLock { $0 += 1 } }
  /// Counts one more if the count is under `limit`; false once it is not.
  func take(below limit: Int) -> Bool {
    count.withLock {
      guard $0 < limit else { return false }
      $0 += 1
      return true
    }
  }
}
