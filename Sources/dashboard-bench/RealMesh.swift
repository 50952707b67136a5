import Crypto
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import MeshControlClient
import MeshIdentity
import MeshProtos
import X509

/// `dashboard-bench --control-plane`: the same mesh, held by a real control plane. It makes a
/// CA, starts the `control-plane` binary beside it, and for every service a simulated sidecar
/// with that service's identity: a config subscription (so the control plane lists it) and a
/// telemetry stream reporting, every second, the calls it took and the calls it made to the
/// services behind it. It exports the traces over OTLP, 8 spans each across the services, and
/// then starts `meshctl dashboard` as the operator. What is measured is then the dashboard as
/// a user runs it: its server, each view's gRPC calls, and the control plane's answers.
struct RealMesh {
  let topology: Fixed
  let traces: Int
  let work: String

  /// The running control plane and dashboard, and the simulated sidecars' task.
  struct Running {
    var controlPlane: Process
    var dashboard: Process
    var dashboardAddress: String
    var sidecars: Task<Void, any Error>
  }

  func start() async throws -> Running {
    let certs = "\(work)/certs"
    try FileManager.default.createDirectory(atPath: certs, withIntermediateDirectories: true)
    let root = try SigningAuthority.makeRoot(trustDomain: SPIFFEID.defaultTrustDomain)
    let issuer = try root.makeIssuer(trustDomain: SPIFFEID.defaultTrustDomain)
    let files = CAFiles(dir: certs)
    try CertificateFiles.writePrivateKey(issuer.key, to: files.issuerKey)
    try CertificateFiles.writeCertificates([issuer.certificate], to: files.issuer)
    try CertificateFiles.writeCertificates([root.certificate], to: files.bundle)
    func identity(_ name: String, _ id: SPIFFEID) throws {
      let key = P256.Signing.PrivateKey()
      let certificate = try issuer.issueSVID(
        for: id, publicKey: Certificate.PublicKey(key.publicKey), lifetime: 86_400)
      try CertificateFiles.writePrivateKey(key, to: "\(certs)/\(name)-key.pem")
      try CertificateFiles.writeCertificates(
        [certificate, issuer.certificate], to: "\(certs)/\(name).pem")
    }
    try identity("operator", try SPIFFEID.operator("admin"))
    for service in topology.services { try identity(service, try SPIFFEID.workload(service)) }

    let binaries = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    let controlPlane = Process()
    controlPlane.executableURL = binaries.appendingPathComponent("control-plane")
    controlPlane.arguments = [
      "--listen", "127.0.0.1:0", "--join", "127.0.0.1:0", "--certs", certs, "--data",
      "\(work)/data",
    ]
    let address = try Self.launch(controlPlane, log: "\(work)/control-plane.log") { line in
      guard line.contains("\"listening\""),
        let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
      else { return nil }
      return object["address"] as? String
    }
    do {
      return try await serve(controlPlane, at: address, certs: certs)
    } catch {
      controlPlane.terminate()
      throw error
    }
  }

  /// The simulated sidecars and the traces at the control plane at `address`, and the
  /// dashboard reading from it.
  private func serve(
    _ controlPlane: Process, at address: String, certs: String
  ) async throws -> Running {
    let files = CAFiles(dir: certs)
    func client(_ name: String) -> Identity {
      Identity(
        address: address, certificate: "\(certs)/\(name).pem", key: "\(certs)/\(name)-key.pem",
        bundle: files.bundle)
    }
    try await exportTraces(as: client("gateway"))
    let topology = self.topology
    let sidecars = Task {
      try await withThrowingDiscardingTaskGroup { group in
        for (index, service) in topology.services.enumerated() {
          let identity = client(service)
          let node = "\(service)@10.0.\(index / 200).\(index % 200):7001"
          let callees = topology.edges.filter { $0.from == service }.map(\.to)
          group.addTask { try await identity.subscribe(node: node) }
          group.addTask {
            try await identity.report(
              service: service, instance: String(node.split(separator: "@")[1]),
              callees: callees, seed: index)
          }
        }
      }
    }

    let dashboard = Process()
    dashboard.executableURL = controlPlane.executableURL?.deletingLastPathComponent()
      .appendingPathComponent("meshctl")
    dashboard.arguments = [
      "dashboard", "--listen", "127.0.0.1:0", "--control-plane", address, "--certs", certs,
    ]
    dashboard.currentDirectoryURL = URL(fileURLWithPath: work)
    let served = try Self.launch(dashboard, log: "\(work)/dashboard.log") { line in
      guard let range = line.range(of: "http://") else { return nil }
      return line[range.upperBound...].split(separator: "/").first.map(String.init)
    }
    // Wait until every simulated sidecar is listed and has reported.
    let operatorClient = client("operator")
    let deadline = ContinuousClock.now + .seconds(60)
    while try await operatorClient.connectedSidecars() < topology.services.count {
      guard ContinuousClock.now < deadline else {
        throw BenchError("the simulated sidecars did not all connect to the control plane")
      }
      try await Task.sleep(for: .milliseconds(200))
    }
    try await Task.sleep(for: .seconds(2))
    return Running(
      controlPlane: controlPlane, dashboard: dashboard, dashboardAddress: served,
      sidecars: sidecars)
  }

  /// `traces` traces of 8 spans each (a call from the gateway down its chain of services,
  /// every fiftieth failed), exported as the gateway in batches of 100.
  func exportTraces(as identity: Identity) async throws {
    let now = UInt64(Date().timeIntervalSince1970 * 1e9)
    let chain = Array(topology.services.prefix(4))
    var batch = OTLPExportRequest()
    for index in 0..<traces {
      let trace = Data((0..<16).map { UInt8(truncatingIfNeeded: (index &+ 1) >> (($0 % 4) * 8)) })
      let start = now - UInt64(traces - index) * 5_000_000
      let duration = UInt64(5_000_000 + (index % 97) * 100_000)
      var parent = Data()
      for position in 0..<8 {
        var span = OTLPSpan()
        span.traceID = trace
        span.spanID = Data([UInt8(position + 1)] + (0..<7).map { _ in UInt8.random(in: 1...255) })
        span.parentSpanID = parent
        span.name = position == 0 ? "POST /v1/orders" : "/shop.v1.Service\(position)/Call"
        span.kind = position % 2 == 0 ? .server : .client
        span.startTimeUnixNano = start + UInt64(position) * 100_000
        span.endTimeUnixNano = start + duration - UInt64(position) * 100_000
        if index % 50 == 0 && position == 7 { span.status.code = .error }
        parent = span.spanID
        var resource = Opentelemetry_Proto_Trace_V1_ResourceSpans()
        var name = Opentelemetry_Proto_Common_V1_KeyValue()
        name.key = "service.name"
        name.value.stringValue = chain[min(position / 2, chain.count - 1)]
        resource.resource.attributes = [name]
        resource.scopeSpans = [Opentelemetry_Proto_Trace_V1_ScopeSpans()]
        resource.scopeSpans[0].spans = [span]
        batch.resourceSpans.append(resource)
      }
      if (index + 1) % 100 == 0 || index == traces - 1 {
        try await identity.export(batch)
        batch = OTLPExportRequest()
      }
    }
  }

  /// Starts `process` with its output to `log`, and waits (30 s at most) for the line from
  /// which `found` reads what is wanted.
  static func launch(
    _ process: Process, log: String, _ found: (String) -> String?
  ) throws -> String {
    _ = FileManager.default.createFile(atPath: log, contents: nil)
    let sink = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
    process.standardOutput = sink
    process.standardError = sink
    try process.run()
    let deadline = Date().addingTimeInterval(30)
    while Date() < deadline, process.isRunning {
      let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
      for line in text.split(separator: "\n") {
        if let value = found(String(line)) { return value }
      }
      Thread.sleep(forTimeInterval: 0.05)
    }
    let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
    throw BenchError("\(process.executableURL?.lastPathComponent ?? "") did not start: \(text)")
  }
}

struct BenchError: Error, CustomStringConvertible {
  var description: String
  init(_ description: String) { self.description = description }
}

/// A client of the control plane with one identity, as a simulated sidecar or the operator.
struct Identity: Sendable {
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

  func export(_ request: OTLPExportRequest) async throws {
    _ = try await withGRPCClient(transport: try transport()) { client in
      try await Opentelemetry_Proto_Collector_Trace_V1_TraceService.Client(wrapping: client)
        .export(request)
    }
  }

  func connectedSidecars() async throws -> Int {
    try await withGRPCClient(transport: try transport()) { client in
      try await Trellis_Mesh_V1_Admin.Client(wrapping: client).status(.init()).sidecars
        .filter(\.connected).count
    }
  }

  /// A config subscription that ACKs what it is sent, until cancelled.
  func subscribe(node: String) async throws {
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
            ack.trustGeneration = snapshot.trustGeneration
            outbox.yield(ack)
          }
        })
    }
  }

  /// Reports every second, until cancelled, the calls its service took (from whoever calls
  /// it) and those it made to `callees`, each about 10 a second.
  func report(service: String, instance: String, callees: [String], seed: Int) async throws {
    @Sendable func stats(
      _ direction: String, _ service: String, _ seed: Int
    ) -> Trellis_Mesh_V1_CallStats {
      var stats = Trellis_Mesh_V1_CallStats()
      stats.direction = direction
      stats.service = service
      stats.method = "/bench.v1.\(service)/Call"
      stats.requests = UInt64(8 + Int.random(in: 0...4))
      stats.failures = seed % 13 == 0 && Bool.random() ? 1 : 0
      stats.latencyBuckets =
        Array(repeating: 0, count: 40 + seed % 20) + [UInt32(stats.requests)]
      stats.intervalMs = 1000
      return stats
    }
    try await withGRPCClient(transport: try transport()) { client in
      try await Trellis_Mesh_V1_Telemetry.Client(wrapping: client).report(
        requestProducer: { writer in
          while !Task.isCancelled {
            var report = Trellis_Mesh_V1_TelemetryReport()
            report.instance = instance
            report.calls =
              [stats("inbound", service, seed)]
              + callees.enumerated().map { stats("outbound", $1, seed + $0) }
            try await writer.write(report)
            try await Task.sleep(for: .seconds(1))
          }
        },
        onResponse: { response in
          for try await _ in response.messages {}
        })
    }
  }
}
