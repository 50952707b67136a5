import ArgumentParser
import Foundation
import GRPCCore
import Histogram
import MeshServiceKit
import MeshTranscoding
import NIOCore
import NIOHPACK
import NIOHTTP2
import NIOPosix
import NIOSSL

/// `rpc bench ADDRESS METHOD -d JSON`: load for a unary method, in the manner of ghz — a number
/// of calls (`-n`) or a duration (`-z`), at most `-c` in flight, optionally paced at `--rps`
/// (open loop: latency counts from when a call was due, so a stalled server cannot hide its
/// queue), over `--connections` HTTP/2 connections. Reports throughput, latency percentiles
/// (HdrHistogram) and the count of each status.
///
/// The request is encoded once; the load itself is HTTP/2 frames written by one event loop, so
/// the tool costs little of the machine it measures.
struct Bench: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Load a unary method and report throughput, latency percentiles and statuses.")

  @Argument(help: "The server, HOST:PORT.") var address: String
  @Argument(help: "The method: package.Service/Method.") var method: String
  @Option(name: .customShort("d"), help: "The request: JSON, @FILE, or @- for standard input.")
  var data: String?
  @Option(name: .customShort("c"), help: "Calls in flight at most.") var concurrency = 50
  @Option(name: .customShort("n"), help: "Calls in all (default 1000 unless -z is given).")
  var total: Int?
  @Option(name: .customShort("z"), help: "Run for this long instead: 10s, 1m, 500ms.")
  var duration: String?
  @Option(help: "Calls per second to start (open loop); unpaced when absent.") var rps: Double?
  @Option(help: "HTTP/2 connections to spread the calls over.") var connections = 1
  @Option(name: .customShort("o"), help: "Output: table or json.") var output = "table"
  @Flag(help: "Ignore request fields the message does not have.") var allowUnknownFields = false
  @OptionGroup var connection: ConnectionOptions

  func validate() throws {
    guard concurrency >= 1 else { throw ValidationError("-c must be at least 1") }
    guard connections >= 1 else { throw ValidationError("--connections must be at least 1") }
    if let total, total < 1 { throw ValidationError("-n must be at least 1") }
    if total != nil, duration != nil { throw ValidationError("give -n or -z, not both") }
    if let rps, rps <= 0 { throw ValidationError("--rps must be positive") }
    if let duration, (try? Self.parseDuration(duration)) == nil {
      throw ValidationError("-z: expected a duration such as 10s, 1m or 500ms, got '\(duration)'")
    }
    guard ["table", "json"].contains(output) else {
      throw ValidationError("-o: expected table or json, got '\(output)'")
    }
  }

  static func parseDuration(_ text: String) throws -> Duration {
    for (unit, milliseconds) in [("ms", 1.0), ("s", 1000.0), ("m", 60_000.0)]
    where text.hasSuffix(unit) {
      if let value = Double(text.dropLast(unit.count)), value > 0 {
        return .milliseconds(Int64(value * milliseconds))
      }
    }
    throw ValidationError("bad duration")
  }

  func run() async throws {
    let (serviceName, methodName) = try Call.split(method)
    let input = try Call.readInput(data)
    // The schema comes from reflection or --protoset, as for `rpc call`.
    let (path, message) = try await connection.withClient(address) { client in
      var schema = try Schema(options: connection, client: client)
      let (service, pool) = try await schema.service(named: serviceName)
      guard let method = service.method(named: methodName) else {
        throw CLIFailure.other("\(service.fullName) has no method \(methodName)")
      }
      guard !method.clientStreaming, !method.serverStreaming else {
        throw CLIFailure.other("rpc bench loads unary methods; \(method.fullPath) streams")
      }
      let messages = try Call.encodeRequests(
        input, method: method, pool: pool, dataGiven: data != nil,
        allowUnknownFields: allowUnknownFields)
      return ("/" + method.fullPath, messages[0])
    }
    let target = try HostPort(parsing: address)
    var headers: HPACKHeaders = [
      ":method": "POST", ":scheme": connection.plaintext ? "http" : "https", ":path": path,
      ":authority": connection.authority ?? connection.serverName ?? address,
      "content-type": "application/grpc", "te": "trailers",
    ]
    for (name, value) in try connection.metadata() {
      switch value {
      case .string(let text): headers.add(name: name, value: text)
      case .binary(let bytes): headers.add(name: name, value: Data(bytes).base64EncodedString())
      }
    }
    let plan = LoadPlan(
      total: total ?? (duration == nil ? 1000 : nil),
      duration: try duration.map(Self.parseDuration), rps: rps, concurrency: concurrency)
    let tls = try connection.plaintext ? nil : makeTLSContext()
    let report = try await LoadRun.run(
      host: target.host, port: target.port, connections: connections, tls: tls,
      serverName: connection.serverName, headers: headers, message: message, plan: plan)
    print(output == "json" ? report.json : report.table)
    fflush(nil)
  }

  private func makeTLSContext() throws -> NIOSSLContext {
    var configuration = TLSConfiguration.makeClientConfiguration()
    configuration.applicationProtocols = ["h2"]
    if let cacert = connection.cacert {
      configuration.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(cacert))
    }
    if let cert = connection.cert, let key = connection.key {
      configuration.certificateChain = try NIOSSLCertificate.fromPEMFile(cert).map {
        .certificate($0)
      }
      configuration.privateKey = .privateKey(try NIOSSLPrivateKey(file: key, format: .pem))
    }
    return try NIOSSLContext(configuration: configuration)
  }
}

/// How much load, and how it is paced.
struct LoadPlan: Sendable {
  var total: Int?
  var duration: Duration?
  var rps: Double?
  var concurrency: Int
}

/// What a run measured.
struct LoadReport: Sendable {
  var completed: Int
  var elapsed: Double
  var latency: Histogram<UInt64>
  var statuses: [String: Int]
  var connectFailures: [String]

  private func milliseconds(_ percentile: Double) -> Double {
    Double(latency.valueAtPercentile(percentile)) / 1000
  }

  var rps: Double { elapsed > 0 ? Double(completed) / elapsed : 0 }

  var table: String {
    var lines = [
      "Summary:",
      "  Calls:         \(completed)",
      "  Total:         \(String(format: "%.2f s", elapsed))",
      "  Requests/sec:  \(String(format: "%.1f", rps))",
      "",
      "Latency (ms):",
    ]
    for (name, percentile) in [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9)] {
      lines.append(
        "  \(name.padding(toLength: 6, withPad: " ", startingAt: 0)) \(String(format: "%.3f", milliseconds(percentile)))"
      )
    }
    lines.append("  max    \(String(format: "%.3f", Double(latency.max) / 1000))")
    lines.append("")
    lines.append("Status codes:")
    for (status, count) in statuses.sorted(by: { $0.value > $1.value }) {
      lines.append("  [\(status)] \(count)")
    }
    for failure in connectFailures { lines.append("connection failed: \(failure)") }
    return lines.joined(separator: "\n")
  }

  var json: String {
    let statusJSON = statuses.sorted { $0.key < $1.key }.map { "\"\($0.key)\":\($0.value)" }
      .joined(separator: ",")
    let latencyJSON = [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9)]
      .map { "\"\($0.0)\":\(milliseconds($0.1))" }.joined(separator: ",")
    return """
      {"calls":\(completed),"seconds":\(elapsed),"rps":\(rps),\
      "latency_ms":{\(latencyJSON),"max":\(Double(latency.max) / 1000)},\
      "statuses":{\(statusJSON)}}
      """
  }
}

/// One load run on one event loop: connections, the pacing, and the tally.
final class LoadRun: @unchecked Sendable {  // confined to its event loop
  private let loop: any EventLoop
  private let plan: LoadPlan
  private let headers: HPACKHeaders
  private let body: ByteBuffer
  private var connections: [LoadConnection] = []
  private var next = 0

  private var started = 0
  private var inFlight = 0
  /// Calls due (open loop) that wait for room under the concurrency limit, with their due time.
  private var backlog: [NIODeadline] = []
  private var startTime = NIODeadline.now()
  private var stopStarting = false
  private var latency = Histogram<UInt64>(highestTrackableValue: 60_000_000)
  private var statuses: [String: Int] = [:]
  private var completed = 0
  private let done: EventLoopPromise<LoadReport>
  private var failures: [String] = []
  private var finishedRun = false

  private init(loop: any EventLoop, plan: LoadPlan, headers: HPACKHeaders, message: [UInt8]) {
    self.loop = loop
    self.plan = plan
    self.headers = headers
    var body = ByteBuffer()
    body.writeInteger(UInt8(0))
    body.writeInteger(UInt32(message.count))
    body.writeBytes(message)
    self.body = body
    self.done = loop.makePromise()
  }

  static func run(
    host: String, port: Int, connections count: Int, tls: NIOSSLContext?, serverName: String?,
    headers: HPACKHeaders, message: [UInt8], plan: LoadPlan
  ) async throws -> LoadReport {
    let loop = MultiThreadedEventLoopGroup.singleton.next()
    let run = try await loop.submit {
      NIOLoopBound(
        LoadRun(loop: loop, plan: plan, headers: headers, message: message), eventLoop: loop)
    }.get()
    var channels: [any Channel] = []
    for _ in 0..<count {
      let channel = try await ClientBootstrap(group: loop)
        .channelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
        .connectTimeout(.seconds(10))
        .channelInitializer { channel in
          channel.eventLoop.makeCompletedFuture {
            if let tls {
              try channel.pipeline.syncOperations.addHandler(
                try NIOSSLClientHandler(
                  context: tls,
                  serverHostname: serverName ?? (host.first?.isLetter == true ? host : nil)))
            }
            try channel.pipeline.syncOperations.addHandler(
              NIOHTTP2Handler(mode: .client, connectionConfiguration: .bench))
            try channel.pipeline.syncOperations.addHandler(LoadConnection(run: run.value))
          }
        }
        .connect(host: host, port: port).get()
      channels.append(channel)
    }
    let report = try await loop.flatSubmit { run.value.start() }.get()
    for channel in channels { try? await channel.close() }
    return report
  }

  func register(_ connection: LoadConnection) { connections.append(connection) }

  private func start() -> EventLoopFuture<LoadReport> {
    startTime = .now()
    if let duration = plan.duration {
      loop.scheduleTask(
        in: .nanoseconds(
          Int64(duration.components.seconds) * 1_000_000_000 + duration.components.attoseconds
            / 1_000_000_000)
      ) {
        self.stopStarting = true
        self.backlog = []
        self.finishIfDone()
      }
    }
    if let rps = plan.rps {
      pace(interval: 1 / rps)
    } else {
      while inFlight < plan.concurrency, canStart { launch(due: .now()) }
      flushAll()
    }
    return done.futureResult
  }

  /// Closed loop: another call may start.
  private var canStart: Bool {
    !stopStarting && (plan.total.map { started < $0 } ?? true)
  }

  /// Open loop: another call may be scheduled (started or waiting in the backlog).
  private var canSchedule: Bool {
    !stopStarting && (plan.total.map { started + backlog.count < $0 } ?? true)
  }

  /// Open loop: start each call that has come due since the run began, then sleep until the
  /// next one is due; calls due while `-c` are in flight wait in the backlog, their clocks
  /// already running (so a slow server cannot hide its queue).
  private func pace(interval: Double) {
    let elapsed = Double((NIODeadline.now() - startTime).nanoseconds) / 1e9
    let due = Int(elapsed / interval) + 1
    while canSchedule, started + backlog.count < due {
      let offset = Double(started + backlog.count) * interval * 1e9
      let dueTime = startTime + .nanoseconds(Int64(offset))
      if inFlight < plan.concurrency {
        // Timed from when it leaves: the event loop's timer wakes up to a millisecond late,
        // which is this tool's lateness, not the server's.
        launch(due: .now())
      } else {
        backlog.append(dueTime)
      }
    }
    flushAll()
    if canSchedule {
      let offset = Double(started + backlog.count) * interval * 1e9
      loop.scheduleTask(deadline: startTime + .nanoseconds(Int64(offset))) {
        self.pace(interval: interval)
      }
    }
  }

  private func launch(due: NIODeadline) {
    guard !connections.isEmpty else { return }
    started += 1
    inFlight += 1
    let connection = connections[next % connections.count]
    next &+= 1
    connection.startCall(headers: headers, body: body, due: due)
  }

  private func flushAll() {
    for connection in connections { connection.flushIfNeeded() }
  }

  func finished(due: NIODeadline, status: String) {
    inFlight -= 1
    completed += 1
    let micros = max(1, (NIODeadline.now() - due).nanoseconds / 1000)
    _ = latency.record(UInt64(micros))
    statuses[status, default: 0] += 1
    if !backlog.isEmpty {
      launch(due: backlog.removeFirst())
    } else if plan.rps == nil, canStart {
      launch(due: .now())
    }
    finishIfDone()
  }

  func connectionFailed(_ reason: String) {
    failures.append(reason)
  }

  func flushAfterRead() { flushAll() }

  private func finishIfDone() {
    guard !canStart, backlog.isEmpty, inFlight == 0, !finishedRun else { return }
    finishedRun = true
    let elapsed = Double((NIODeadline.now() - startTime).nanoseconds) / 1e9
    done.succeed(
      LoadReport(
        completed: completed, elapsed: elapsed, latency: latency, statuses: statuses,
        connectFailures: failures))
  }
}

/// One HTTP/2 connection of a load run, in frame mode: each call is HEADERS and one DATA
/// frame; the answer is read until the stream ends.
final class LoadConnection: ChannelInboundHandler, @unchecked Sendable {  // confined to its loop
  typealias InboundIn = HTTP2Frame
  typealias OutboundOut = HTTP2Frame

  private let run: LoadRun
  private var context: ChannelHandlerContext?
  private var nextStream = HTTP2StreamID(1)
  private var calls: [HTTP2StreamID: (due: NIODeadline, status: String?)] = [:]
  private var unacknowledged = 0
  private var needsFlush = false

  init(run: LoadRun) {
    self.run = run
  }

  func handlerAdded(context: ChannelHandlerContext) {
    self.context = context
    run.register(self)
  }

  func channelActive(context: ChannelHandlerContext) {
    context.writeAndFlush(
      wrapOutboundOut(
        HTTP2Frame(streamID: .rootStream, payload: .windowUpdate(windowSizeIncrement: 1 << 24))),
      promise: nil)
    context.fireChannelActive()
  }

  func startCall(headers: HPACKHeaders, body: ByteBuffer, due: NIODeadline) {
    guard let context else { return }
    let stream = nextStream
    nextStream = stream.advanced(by: 2)
    calls[stream] = (due, nil)
    context.write(
      wrapOutboundOut(HTTP2Frame(streamID: stream, payload: .headers(.init(headers: headers)))),
      promise: nil)
    context.write(
      wrapOutboundOut(
        HTTP2Frame(
          streamID: stream, payload: .data(.init(data: .byteBuffer(body), endStream: true)))),
      promise: nil)
    needsFlush = true
  }

  func flushIfNeeded() {
    guard needsFlush else { return }
    needsFlush = false
    context?.flush()
  }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    let frame = unwrapInboundIn(data)
    switch frame.payload {
    case .headers(let headers):
      if let code = headers.headers.first(name: "grpc-status") {
        calls[frame.streamID]?.status = statusName(code)
      } else if let status = headers.headers.first(name: ":status"), status != "200" {
        calls[frame.streamID]?.status = "HTTP \(status)"
      }
      if headers.endStream { end(frame.streamID) }
    case .data(let data):
      unacknowledged += data.data.readableBytes
      if unacknowledged > 1 << 20 {
        context.write(
          wrapOutboundOut(
            HTTP2Frame(
              streamID: .rootStream, payload: .windowUpdate(windowSizeIncrement: unacknowledged))),
          promise: nil)
        needsFlush = true
        unacknowledged = 0
      }
      if data.endStream { end(frame.streamID) }
    case .rstStream(let code):
      calls[frame.streamID]?.status = "RST_STREAM \(code)"
      end(frame.streamID)
    default:
      break
    }
  }

  private func end(_ stream: HTTP2StreamID) {
    guard let call = calls.removeValue(forKey: stream) else { return }
    run.finished(due: call.due, status: call.status ?? "no status")
  }

  func channelReadComplete(context: ChannelHandlerContext) {
    run.flushAfterRead()
    context.fireChannelReadComplete()
  }

  func channelInactive(context: ChannelHandlerContext) {
    let open = calls
    calls = [:]
    for (_, call) in open { run.finished(due: call.due, status: "connection closed") }
    context.fireChannelInactive()
  }

  func errorCaught(context: ChannelHandlerContext, error: any Error) {
    run.connectionFailed("\(error)")
    context.close(promise: nil)
  }

  private func statusName(_ code: String) -> String {
    Int(code).flatMap { Status.Code(rawValue: $0)?.canonicalName } ?? "code \(code)"
  }
}

extension NIOHTTP2Handler.ConnectionConfiguration {
  /// The load generator's settings: large windows, many streams.
  static var bench: Self {
    var configuration = Self()
    configuration.initialSettings = [
      HTTP2Setting(parameter: .maxConcurrentStreams, value: 100_000),
      HTTP2Setting(parameter: .initialWindowSize, value: 1 << 24),
    ]
    configuration.headerBlockValidation = .disabled
    return configuration
  }
}
