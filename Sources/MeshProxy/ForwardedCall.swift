import MeshConfig
import MeshTracing
import NIOCore
import NIOHPACK

/// One call crossing the proxy: the caller's stream joined to a stream towards its
/// destination — one attempt after another when an outbound call is retried. Everything here
/// runs on the event loop both connections share.
///
/// The request runs top to bottom: the caller's frames are forwarded to the attempt's stream
/// (held while it is being opened, kept for replay while a retry is possible); the response
/// unwinds in reverse, and its first frame forwarded commits the call to its attempt.
final class ForwardedCall {
  let downstream: ForwardingConnection
  let downstreamStream: UInt32
  let start = NIODeadline.now()
  var metrics: SidecarMetrics?
  /// The place the call holds in its service's circuit breaker, given back when it ends.
  var limit: ConcurrencyLimit?
  var direction = ""
  var service = ""
  var method = ""
  /// The call's gRPC status, once seen, and its message.
  private var code: Substring?
  private var statusMessage: String?
  /// The call's span and what happened on the way, and where it is recorded.
  var trace: CallTrace?
  var tracing: CallTracing?
  var telemetry: LiveTelemetry?
  /// Inbound: the caller's verified identity; outbound: the identity the attempt's endpoint
  /// must prove.
  var peer: String?
  private var routeName: String?
  /// Where the last attempt went, and how many there were.
  private var lastEndpoint: Endpoint?
  private var attemptsMade = 0
  /// The attempt's connection and stream; nil between attempts.
  var upstream: ForwardingConnection?
  var upstreamStream: UInt32?

  private var requestMessages = MessageFramer()
  private var responseMessages = MessageFramer()

  /// Request frames not yet sent on the attempt's stream, in order.
  enum Held {
    case headers(HPACKHeaders, endStream: Bool)
    case data(ByteBuffer, endStream: Bool, flow: Int)
  }
  private var held: [Held] = []

  var requestEnded = false
  /// Response headers have been forwarded to the caller: the call can no longer be answered
  /// by the proxy with a Trailers-Only status, only ended.
  private var responseStarted = false
  private var responseEnded = false
  private var downstreamClosed = false
  private var upstreamClosed = false

  // Deadlines and attempts.
  /// When the call must be over: the caller's `grpc-timeout`, the route's timeout.
  private(set) var deadline: NIODeadline?
  private var deadlineTimer: Scheduled<Void>?
  /// What set the deadline, and whether it is the sidecar's own (the route's timeout) rather
  /// than the caller's.
  private var deadlineCause = ""
  private var deadlineIsOwn = false
  /// The route's policies and the attempts so far (outbound calls).
  var plan: OutboundPlan?
  private var pool: UpstreamPool?
  /// The request headers every attempt starts from.
  private var requestHeaders: HPACKHeaders = [:]
  private var requestHeadersEndStream = false
  /// Request frames already sent on earlier attempts, replayed on the next one; nil once no
  /// retry is possible.
  private var replay: [Held]?
  /// The per-try timeout of the attempt in flight, or the backoff before the next.
  private var attemptTimer: Scheduled<Void>?
  private var attemptStart = NIODeadline.now()
  private var attemptLatency: TimeAmount?
  private var attemptOpen = false
  /// The attempt's `grpc-timeout` is its per-try timeout (sooner than the call's deadline): a
  /// DEADLINE_EXCEEDED from upstream then means the try ran out, not the call.
  private var attemptBoundByPerTry = false
  /// The deadline the attempt forwarded as `grpc-timeout`.
  private var attemptDeadline: NIODeadline?
  /// The attempt waits for its connection, holding a place under `maxPendingRequests`.
  private var pending: ConcurrencyLimit?

  init(downstream: ForwardingConnection, stream: UInt32) {
    self.downstream = downstream
    self.downstreamStream = stream
  }

  // MARK: Starting

  /// Forwards the call to `endpoint` (the inbound hop to the app, or an outbound call
  /// without policies), under the caller's `grpc-timeout`.
  func forward(to endpoint: Endpoint, pool: UpstreamPool, headers: HPACKHeaders, endStream: Bool) {
    var headers = headers
    if let timeout = headers.checkedValue("grpc-timeout") {
      armDeadline(
        GRPCTimeout.parse(timeout).map { start + $0 }, cause: "grpc-timeout \(timeout)",
        grace: Self.callerDeadlineGrace)
      if let deadline { setTimeout(&headers, until: deadline) }
    }
    attemptOpen = true
    lastEndpoint = endpoint
    attemptsMade = 1
    pool.connection(to: endpoint).open(self, headers: headers, endStream: endStream)
  }

  /// Starts an outbound call under its route's policies: the deadline (the caller's and the
  /// route's, whichever is sooner), an injected delay, then the first attempt.
  func forward(_ plan: OutboundPlan, pool: UpstreamPool, headers: HPACKHeaders, endStream: Bool) {
    self.plan = plan
    self.pool = pool
    routeName = plan.route.name ?? "default"
    requestHeaders = headers
    requestHeadersEndStream = endStream
    if plan.retry.policy.attempts > 1 { replay = [] }
    let callerTimeout = headers.checkedValue("grpc-timeout")
    var deadline = callerTimeout.flatMap(GRPCTimeout.parse).map { start + $0 }
    var cause = callerTimeout.map { "grpc-timeout \($0)" } ?? ""
    var grace = Self.callerDeadlineGrace
    if let timeout = plan.route.timeout.map(TimeAmount.init),
      !plan.target.isStreaming(path: headers.checkedValue(":path") ?? "")
    {
      if deadline == nil || start + timeout < deadline! {
        deadline = start + timeout
        cause = "the route's timeout of \(milliseconds(timeout)) ms"
        grace = .zero
      }
    }
    armDeadline(deadline, cause: cause, grace: grace)
    if let delay = plan.delay {
      metrics?.recordFault(service: service, kind: "delay")
      trace?.event(
        "fault_injected",
        [.string("kind", "delay"), .int("delay_ms", Int(milliseconds(delay)))])
      attemptTimer = schedule(at: .now() + delay) { $0.startAttempt() }
    } else {
      startAttempt()
    }
  }

  /// The caller's own deadline is the caller's to enforce first: the sidecar's timer for it
  /// fires this much later, so a client that keeps its deadline sees what it would see without
  /// the mesh, and one that does not is still answered and its call cancelled upstream. The
  /// route's timeouts are the sidecar's own and fire on time.
  static let callerDeadlineGrace = TimeAmount.milliseconds(20)

  /// The call's deadline: forwarded as `grpc-timeout` (what is left of it) on every attempt,
  /// and answered DEADLINE_EXCEEDED `grace` after it passes.
  private func armDeadline(_ deadline: NIODeadline?, cause: String, grace: TimeAmount) {
    guard let deadline else { return }
    self.deadline = deadline
    deadlineCause = cause
    deadlineIsOwn = grace == .zero
    deadlineTimer = schedule(at: deadline + grace) { call in
      call.deadlineExpired(cause)
    }
  }

  private func schedule(
    at deadline: NIODeadline, _ body: @escaping (ForwardedCall) -> Void
  )
    -> Scheduled<Void>
  {
    downstream.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) { [self] in
      body(self)
      // Not inside a read: what the timer wrote goes out now.
      downstream.flushWrites()
    }
  }

  /// The header a hop forwards: the time left, so the next hop's deadline is never later.
  private func setTimeout(_ headers: inout HPACKHeaders, until deadline: NIODeadline) {
    headers.replaceOrAdd(
      name: "grpc-timeout", value: GRPCTimeout.format(deadline - .now()), indexing: .nonIndexable)
  }

  private func startAttempt() {
    attemptTimer = nil
    guard var plan, let pool, !downstreamClosed, !responseEnded else { return }
    let now = NIODeadline.now()
    guard let endpoint = plan.target.balancer.pick(plan.candidates, avoiding: plan.tried, now: now)
    else {
      answer(.unavailable, "no endpoint of '\(service)'")
      return
    }
    // The circuit breaker's second limit: calls waiting for a connection.
    let connection = pool.connection(to: endpoint.endpoint)
    if !connection.isEstablished {
      guard plan.target.pending.acquire() else {
        metrics?.recordOverflow(service: service, limit: "maxPendingRequests")
        answer(
          .unavailable,
          """
          circuit breaker: \(plan.target.pending.maximum) calls to '\(service)' are waiting for a \
          connection (maxPendingRequests)
          """
        )
        return
      }
      pending = plan.target.pending
    }
    plan.tried.append(endpoint)
    plan.current = endpoint
    lastEndpoint = endpoint.endpoint
    peer = endpoint.endpoint.expectedIdentity
    attemptsMade += 1
    endpoint.callStarted()
    attemptStart = now
    attemptLatency = nil
    attemptOpen = true
    upstreamClosed = false
    var headers = requestHeaders
    if plan.retry.attempts > 1 {
      headers.replaceOrAdd(name: "grpc-previous-rpc-attempts", value: "\(plan.retry.attempts - 1)")
    }
    var attemptDeadline = deadline
    attemptBoundByPerTry = false
    if let perTry = plan.perTryTimeout {
      let end = now + perTry
      if attemptDeadline == nil || end < attemptDeadline! {
        attemptDeadline = end
        attemptBoundByPerTry = true
      }
      attemptTimer = schedule(at: end) { $0.perTryTimeoutExpired() }
    }
    if let attemptDeadline { setTimeout(&headers, until: attemptDeadline) }
    self.attemptDeadline = attemptDeadline
    self.plan = plan
    // What earlier attempts sent goes first, then what arrived since.
    if let sent = replay, !sent.isEmpty {
      held = sent + held
      replay = []
    }
    connection.open(self, headers: headers, endStream: requestHeadersEndStream)
  }

  /// The attempt no longer waits for a connection: its place under `maxPendingRequests` is
  /// given back.
  private func stopWaiting() {
    pending?.release()
    pending = nil
  }

  /// Whether an upstream event belongs to the attempt in flight (not to one abandoned).
  private func isCurrent(_ side: ForwardingConnection, _ stream: UInt32?) -> Bool {
    side === upstream && (stream == nil || stream == upstreamStream)
  }

  // MARK: Frames

  /// HEADERS from one side go to the other: response headers, trailers, or request trailers.
  func forwardHeaders(
    _ headers: HPACKHeaders, endStream: Bool, from side: ForwardingConnection, stream: UInt32
  ) {
    if side === downstream {
      if endStream { requestEnded = true }
      guard !upstreamClosed else { return }
      guard let upstream, let upstreamStream else {
        held.append(.headers(headers, endStream: endStream))
        return
      }
      keepForReplay(.headers(headers, endStream: endStream), bytes: 0)
      upstream.sendHeaders(headers, endStream: endStream, on: upstreamStream)
      return
    }
    guard isCurrent(side, stream), !downstreamClosed else { return }
    answered()
    if endStream {
      let status = headers.checkedValue("grpc-status")
      if !responseStarted, let status, let code = Int(status), plan != nil {
        let ranOut = code == ProxyStatus.deadlineExceeded.rawValue
        let pushback = Pushback(header: headers.checkedValue("grpc-retry-pushback-ms"))
        let end: AttemptEnd =
          ranOut && attemptBoundByPerTry ? .perTryTimeout : .status(code, pushback: pushback)
        if retry(end) { return }
        if let own = OwnTimeout(
          upstreamCode: code, boundByPerTry: attemptBoundByPerTry, deadlineIsOwn: deadlineIsOwn,
          forwarded: attemptDeadline, now: .now())
        {
          // The sidecar's own timeout, forwarded as `grpc-timeout`, ran out upstream just
          // before the sidecar's timer fired (a busy event loop): answered as the timer would.
          upstreamClosed = true
          stopTimers()
          switch own {
          case .perTry:
            let perTry = plan?.perTryTimeout.map(milliseconds) ?? 0
            attemptEnded(failed: true)
            answerPerTryTimeout(perTry)
          case .route:
            attemptEnded(failed: false)
            answerDeadline(deadlineCause)
          }
          return
        }
      }
      responseEnded = true
      code = status.map { Substring($0) }
      statusMessage = headers.checkedValue("grpc-message")
      attemptEnded(failed: code.flatMap { Int($0) }.map(isEndpointFailure) ?? false)
    }
    commit()
    responseStarted = true
    downstream.sendHeaders(headers, endStream: endStream, on: downstreamStream)
  }

  /// DATA from one side goes to the other; its window returns to the sender once handed on.
  func forwardData(
    _ data: ByteBuffer, endStream: Bool, flow: Int, from side: ForwardingConnection,
    stream: UInt32
  ) {
    if side === downstream {
      if endStream { requestEnded = true }
      guard !upstreamClosed else {
        side.returnCredit(flow)
        return
      }
      if let size = requestMessages.scan(data, limit: MessageFramer.defaultLimit) {
        side.returnCredit(flow)
        refuseOversized(size, direction: "request")
        return
      }
      guard let upstream, let upstreamStream else {
        held.append(.data(data, endStream: endStream, flow: flow))
        return
      }
      keepForReplay(.data(data, endStream: endStream, flow: 0), bytes: data.readableBytes)
      upstream.sendData(
        data, endStream: endStream, on: upstreamStream, flow: flow, source: side, call: self)
      return
    }
    guard isCurrent(side, stream), !responseEnded, !downstreamClosed else {
      side.returnCredit(flow)
      return
    }
    if let size = responseMessages.scan(data, limit: MessageFramer.defaultLimit) {
      side.returnCredit(flow)
      refuseOversized(size, direction: "response")
      return
    }
    answered()
    commit()
    responseStarted = true
    if endStream { responseEnded = true }
    downstream.sendData(
      data, endStream: endStream, on: downstreamStream, flow: flow, source: side, call: self)
  }

  /// Keeps a request frame sent on this attempt for the next one, while retries are possible
  /// and the request fits the replay buffer.
  private func keepForReplay(_ frame: Held, bytes: Int) {
    guard replay != nil else { return }
    if plan?.retry.buffer(bytes) == true {
      replay!.append(frame)
    } else {
      replay = nil
    }
  }

  /// A forwarded DATA frame has left (or was dropped): its bytes go back to the side it came
  /// from — to the stream too while that stream may still send. `connectionCredited`: the
  /// connection's share went back when the frame was queued (`queued`).
  func handedOn(_ flow: Int, from source: ForwardingConnection, connectionCredited: Bool = false) {
    guard flow > 0 else { return }
    if !connectionCredited { source.returnCredit(flow) }
    if source === downstream {
      source.returnStreamCredit(flow, stream: downstreamStream)
    } else if let upstreamStream, source === upstream {
      source.returnStreamCredit(flow, stream: upstreamStream)
    }
  }

  /// A forwarded DATA frame waits on the other side for its stream's window or a socket that
  /// takes it: the source connection's window goes back now (the stream's window, not yet
  /// returned, bounds what waits), so other streams of that connection are not held back.
  func queued(_ flow: Int, from source: ForwardingConnection) {
    if flow > 0 { source.returnCredit(flow) }
  }

  /// The upstream stream now exists: frames held meanwhile follow the HEADERS.
  func releaseHeld() {
    stopWaiting()
    let frames = held
    held = []
    for entry in frames {
      switch entry {
      case .headers(let headers, let endStream):
        guard let upstream, let upstreamStream, !upstreamClosed else { continue }
        keepForReplay(entry, bytes: 0)
        upstream.sendHeaders(headers, endStream: endStream, on: upstreamStream)
      case .data(let data, let endStream, let flow):
        guard !upstreamClosed, let upstream, let upstreamStream else {
          if flow > 0 { downstream.returnCredit(flow) }
          continue
        }
        keepForReplay(.data(data, endStream: endStream, flow: 0), bytes: data.readableBytes)
        upstream.sendData(
          data, endStream: endStream, on: upstreamStream, flow: flow, source: downstream,
          call: self)
      }
    }
  }

  private func dropHeld() {
    stopWaiting()
    for entry in held {
      if case .data(_, _, let flow) = entry, flow > 0 { downstream.returnCredit(flow) }
    }
    held = []
    replay = nil
  }

  // MARK: Ending

  /// A message over the limit ends the call: RESOURCE_EXHAUSTED to the caller, a reset
  /// upstream, and none of the message forwarded.
  private func refuseOversized(_ size: Int, direction: String) {
    cancelUpstream(.cancel)
    answer(
      .resourceExhausted,
      """
      \(direction) message of \(size) bytes exceeds the limit of \(MessageFramer.defaultLimit) \
      bytes
      """
    )
  }

  private func cancelUpstream(_ code: H2Error) {
    let wasClosed = upstreamClosed
    upstreamClosed = true
    dropHeld()
    attemptEnded(failed: false, cancelled: true)
    plan = nil
    if !wasClosed, let upstream {
      if let upstreamStream {
        upstream.resetStream(upstreamStream, code)
      } else {
        upstream.cancelWaiting(self)
      }
    }
  }

  /// Answers the caller with a gRPC status of the proxy's own (Trailers-Only), and asks it to
  /// stop sending if it has not finished.
  func answer(_ status: ProxyStatus, _ message: String, httpStatus: Int = 200) {
    guard !downstreamClosed, !responseEnded else { return }
    code = Substring(String(status.rawValue))
    statusMessage = message
    let headers =
      responseStarted
      ? trailers(status, message) : trailersOnly(status, message, httpStatus: httpStatus)
    responseStarted = true
    responseEnded = true
    stopTimers()
    downstream.sendHeaders(headers, endStream: true, on: downstreamStream)
    if !requestEnded { downstream.resetStream(downstreamStream, .noError) }
  }

  /// A reset from one side resets the other with the same code — unless the reset upstream
  /// can be retried (REFUSED_STREAM never reached the app).
  func reset(_ code: H2Error, from side: ForwardingConnection, stream: UInt32) {
    if side === downstream {
      downstreamClosed = true
      cancelUpstream(code)
      return
    }
    guard isCurrent(side, stream) else { return }
    let reason = "\(side.endpointName) reset the stream (\(code))"
    if retry(code == .refusedStream ? .refused(reason) : .lost(reason)) { return }
    upstreamClosed = true
    attemptEnded(failed: true)
    if !downstreamClosed { downstream.resetStream(downstreamStream, code) }
  }

  /// A stream of this call has closed on `side`. A stream that ended in error (a reset either
  /// way, or a stream error found here) ends the other half too.
  func closed(on side: ForwardingConnection, reason: H2Error?, stream: UInt32) {
    if side === downstream {
      let wasClosed = downstreamClosed
      downstreamClosed = true
      stopTimers()
      record(reset: reason != nil)
      if reason != nil, !wasClosed { cancelUpstream(.cancel) }
      if reason == nil { attemptEnded(failed: false, cancelled: true) }
      return
    }
    guard isCurrent(side, stream) else { return }
    let wasClosed = upstreamClosed
    upstreamClosed = true
    if let reason, !wasClosed, !responseEnded {
      attemptEnded(failed: true)
      answer(.unavailable, "stream to \(side.endpointName) closed (\(reason))")
    }
  }

  /// Counts the call once, when the caller's stream ends.
  private func record(reset: Bool) {
    limit?.release()
    limit = nil
    stopWaiting()
    guard let metrics else { return }
    self.metrics = nil
    let name = code.map(grpcCodeName) ?? (reset ? "CANCELLED" : "UNKNOWN")
    let seconds = Double((NIODeadline.now() - start).nanoseconds) / 1e9
    metrics.recordCall(
      direction: direction, service: service, method: method, code: name, seconds: seconds)
    if let telemetry {
      telemetry.record(
        direction: direction, service: service, method: method, code: name, seconds: seconds,
        peer: peer, traceID: telemetry.isTapping ? trace?.context.traceID.description : nil,
        attempts: max(attemptsMade, 1))
    }
    guard let tracing else { return }
    let sampled = trace?.context.sampled == true && tracing.sink != nil
    guard sampled || tracing.logsAccess else { return }
    let record = CallRecord(
      direction: direction, service: service, path: method,
      code: code.flatMap { Int($0) } ?? (reset ? 1 : nil), codeName: name,
      message: statusMessage, peer: peer,
      endpoint: lastEndpoint, attempts: direction == "outbound" ? max(attemptsMade, 1) : nil,
      route: routeName, seconds: seconds)
    let end = WallClock.now()
    if sampled, let trace { tracing.sink?.record(record.span(trace, end: end)) }
    if tracing.logsAccess { AccessLog.write(record.accessLogLine(trace, end: end)) }
  }

  /// The upstream connection could not carry this call: it was never sent to the app.
  func upstreamFailed(_ message: String) {
    if plan != nil, retry(.refused(message)) { return }
    upstreamClosed = true
    attemptEnded(failed: true)
    dropHeld()
    answer(.unavailable, message)
  }

  func connectionLost(_ side: ForwardingConnection, reason: String, stream: UInt32) {
    if side === downstream {
      if !downstreamClosed { record(reset: true) }
      downstreamClosed = true
      stopTimers()
      cancelUpstream(.cancel)
      return
    }
    guard isCurrent(side, stream), !upstreamClosed else { return }
    if !responseStarted, retry(.lost(reason)) { return }
    upstreamClosed = true
    attemptEnded(failed: true)
    if responseEnded {
      if !downstreamClosed { downstream.resetStream(downstreamStream, .cancel) }
    } else {
      answer(.unavailable, reason)
    }
  }

  // MARK: Deadlines and retries

  private func deadlineExpired(_ cause: String) {
    deadlineTimer = nil
    guard !downstreamClosed, !responseEnded else { return }
    cancelUpstream(.cancel)
    answerDeadline(cause)
  }

  private func answerDeadline(_ cause: String) {
    metrics?.recordDeadlineExceeded(direction: direction, service: service)
    let elapsed = milliseconds(.now() - start)
    trace?.event("deadline_exceeded", [.string("cause", cause), .int("elapsed_ms", Int(elapsed))])
    answer(.deadlineExceeded, "deadline exceeded after \(elapsed) ms (\(cause))")
  }

  private func perTryTimeoutExpired() {
    attemptTimer = nil
    guard attemptOpen, !downstreamClosed, !responseEnded else { return }
    let perTry = plan?.perTryTimeout.map(milliseconds) ?? 0
    trace?.event(
      "per_try_timeout",
      [.int("attempt", attemptsMade), .int("timeout_ms", Int(perTry))]
        + (lastEndpoint.map { [.string("endpoint", $0.description)] } ?? []))
    if !responseStarted, retry(.perTryTimeout) { return }
    attemptEnded(failed: true)
    cancelUpstream(.cancel)
    answerPerTryTimeout(perTry)
  }

  private func answerPerTryTimeout(_ perTry: Int64) {
    metrics?.recordDeadlineExceeded(direction: direction, service: service)
    answer(.deadlineExceeded, "no answer within the route's per-try timeout of \(perTry) ms")
  }

  /// The attempt in flight ended with `end` before the call committed: true if another
  /// attempt follows (after its backoff), false if the call ends with this one.
  private func retry(_ end: AttemptEnd) -> Bool {
    guard var plan, replay != nil, !downstreamClosed else { return false }
    let remaining = deadline.map { $0 - .now() }
    let budget = plan.target.budget
    let decision = plan.retry.attemptEnded(end, remaining: remaining) { budget.withdraw() }
    self.plan = plan
    switch decision {
    case .giveUp(let reason):
      if reason == .budget { metrics?.recordRetryBudgetExhausted(service: service) }
      return false
    case .retry(let delay):
      metrics?.recordRetry(service: service, reason: end.reason)
      trace?.event(
        "retry",
        [
          .int("attempt", attemptsMade + 1), .string("reason", end.reason),
          .int("backoff_ms", Int(milliseconds(delay))),
        ] + (lastEndpoint.map { [.string("previous_endpoint", $0.description)] } ?? []))
      attemptEnded(failed: end.countsAsFailure)
      abandonAttempt()
      attemptTimer = schedule(at: .now() + delay) { $0.startAttempt() }
      return true
    }
  }

  /// Leaves the attempt in flight: its stream is reset (or its wait for a connection given
  /// up) and nothing more of it is forwarded.
  private func abandonAttempt() {
    stopWaiting()
    attemptTimer?.cancel()
    attemptTimer = nil
    let connection = upstream
    let stream = upstreamStream
    upstream = nil
    upstreamStream = nil
    upstreamClosed = false
    guard let connection else { return }
    if let stream {
      connection.abandon(stream)
    } else {
      connection.cancelWaiting(self)
    }
  }

  /// The attempt's first response frame: the balancer's latency sample.
  private func answered() {
    if attemptLatency == nil { attemptLatency = .now() - attemptStart }
  }

  /// Something of the response is about to reach the caller: no attempt follows.
  private func commit() {
    guard plan?.retry.committed == false else { return }
    plan?.retry.commit()
    replay = nil
    attemptTimer?.cancel()
    attemptTimer = nil
  }

  /// The attempt in flight is over: its endpoint's latency and outcome are recorded, once.
  private func attemptEnded(failed: Bool, cancelled: Bool = false) {
    guard attemptOpen else { return }
    attemptOpen = false
    guard let endpoint = plan?.current, let target = plan?.target else { return }
    plan?.current = nil
    if cancelled, attemptLatency == nil {
      endpoint.callCancelled()
      return
    }
    let ejected = target.attemptEnded(
      endpoint, latency: attemptLatency ?? (.now() - attemptStart), failed: failed,
      metrics: metrics)
    if ejected {
      trace?.event("outlier_ejection", [.string("endpoint", endpoint.endpoint.description)])
    }
  }

  private func stopTimers() {
    deadlineTimer?.cancel()
    deadlineTimer = nil
    attemptTimer?.cancel()
    attemptTimer = nil
  }
}

extension AttemptEnd {
  /// The reason a retry is counted under.
  var reason: String {
    switch self {
    case .status(let code, _): grpcCodeName(Substring(String(code)))
    case .refused: "refused"
    case .lost: "lost"
    case .perTryTimeout: "per_try_timeout"
    }
  }

  var countsAsFailure: Bool {
    switch self {
    case .status(let code, _): isEndpointFailure(code)
    case .refused, .lost, .perTryTimeout: true
    }
  }
}

/// `amount` in whole milliseconds, for messages.
func milliseconds(_ amount: TimeAmount) -> Int64 {
  amount.nanoseconds / 1_000_000
}

/// Trailers (after response headers) carrying a status of the proxy's own.
func trailers(_ status: ProxyStatus, _ message: String) -> HPACKHeaders {
  [
    "grpc-status": "\(status.rawValue)", "grpc-message": percentEncodeGRPCMessage(message),
  ]
}

/// Which of the sidecar's own timeouts an upstream's DEADLINE_EXCEEDED is, if any: the app
/// was given what was left of it as `grpc-timeout`, so an answer that comes once it has passed
/// (a millisecond's leeway for the app's clock) is the sidecar's timeout, however its timer
/// was late. A DEADLINE_EXCEEDED before then, or under the caller's own deadline, is the app's
/// and passes unchanged.
enum OwnTimeout: Equatable {
  case perTry
  case route

  init?(
    upstreamCode: Int, boundByPerTry: Bool, deadlineIsOwn: Bool, forwarded: NIODeadline?,
    now: NIODeadline
  ) {
    guard upstreamCode == ProxyStatus.deadlineExceeded.rawValue, let forwarded,
      now + .milliseconds(1) >= forwarded
    else { return nil }
    if boundByPerTry {
      self = .perTry
    } else if deadlineIsOwn {
      self = .route
    } else {
      return nil
    }
  }
}
