import Foundation
import GRPCCore
import Logging
import ServiceLifecycle
import ShopProtos
import ShopSupport
import SwiftProtobuf
import Synchronization

/// What the order saga asks of payments.
public struct PaymentsClient: Sendable {
  public var charge: @Sendable (Shop_V1_ChargeRequest) async throws -> Shop_V1_Payment
  public var cancelCharge:
    @Sendable (Shop_V1_CancelChargeRequest) async throws -> Shop_V1_CancelChargeResponse

  public init(
    charge: @escaping @Sendable (Shop_V1_ChargeRequest) async throws -> Shop_V1_Payment,
    cancelCharge:
      @escaping @Sendable (Shop_V1_CancelChargeRequest) async throws ->
      Shop_V1_CancelChargeResponse
  ) {
    self.charge = charge
    self.cancelCharge = cancelCharge
  }

  /// Calls a `shop.v1.PaymentService` client, each call with `timeout`.
  public init(_ client: Shop_V1_PaymentService.Client<some ClientTransport>, timeout: Duration) {
    var options = CallOptions.defaults
    options.timeout = timeout
    let callOptions = options
    self.charge = { try await client.charge($0, options: callOptions) }
    self.cancelCharge = { try await client.cancelCharge($0, options: callOptions) }
  }
}

/// How a saga step that runs later, in the background, rejoins the trace of the call that
/// started the saga: `capture` gives the current trace context as headers (stored with the
/// saga), `resume` runs a step under a span in the trace those headers name.
public struct SagaTracing: Sendable {
  public var capture: @Sendable () -> [String: String]
  public var resume:
    @Sendable (
      _ name: String, _ headers: [String: String], _ step: @Sendable () async throws -> Void
    ) async throws -> Void

  public init(
    capture: @escaping @Sendable () -> [String: String],
    resume:
      @escaping @Sendable (String, [String: String], @Sendable () async throws -> Void)
      async throws -> Void
  ) {
    self.capture = capture
    self.resume = resume
  }
}

/// The order saga: PENDING → payments.Charge (the order id is the idempotency key) →
/// CONFIRMED; a declined charge → CANCELLED with the reason; no answer within `timeout` (and at
/// least one attempt made) → CANCELLED, then payments.CancelCharge until payments answers
/// (compensation: a charge that landed is refunded, one still on its way is declined).
///
/// The saga's state is a row in `sagas`, written in the same transaction as each change of the
/// order (`OrderRepository`), so a process killed at any point resumes where it was. A step is worked under a
/// lease (`lease_owner`, `lease_until_ns`): instances sharing the database each claim due sagas
/// and work only those. A lease that runs out — its holder died or hung — lets another claim
/// the saga; a step done twice is harmless, because the charge is idempotent by key and every
/// change of an order is conditional on the state it expects.
public final class OrderSaga: Sendable {
  public struct Settings: Sendable {
    /// A pending order whose charge did not complete in this long is cancelled.
    public var timeout: Duration = .seconds(30)
    /// How long a claim lasts; more than a step takes.
    public var lease: Duration = .seconds(10)
    /// The limit on one call to payments.
    public var callTimeout: Duration = .seconds(3)
    /// How often the worker looks for due sagas when nothing nudges it.
    public var pollInterval: Duration = .milliseconds(250)
    public init() {}
  }

  let repository: any OrderRepository
  let payments: PaymentsClient
  let settings: Settings
  let tracing: SagaTracing?
  /// This instance's name in leases.
  let owner = ResourceID.make(prefix: "saga-worker")
  let logger: Logger

  init(
    repository: any OrderRepository, payments: PaymentsClient, settings: Settings,
    tracing: SagaTracing?, logger: Logger
  ) {
    self.repository = repository
    self.payments = payments
    self.settings = settings
    self.tracing = tracing
    self.logger = logger
  }

  /// The saga of a new order, claimed by this instance, carrying the current trace.
  func begin(orderID: String, now: Int64) -> NewSaga {
    NewSaga(
      deadline: now + settings.timeout.nanoseconds, owner: owner,
      leaseUntil: now + settings.lease.nanoseconds, traceHeaders: tracing?.capture() ?? [:])
  }

  /// A lease for this instance from `now`: a cancelled order's compensation is worked here
  /// next, at once.
  func lease(now: Int64) -> SagaLease {
    SagaLease(owner: owner, until: now + settings.lease.nanoseconds)
  }

  /// The first step of a new order's saga, in the call that took the order. The saga was
  /// written with the order a moment ago, claimed by this instance with a fresh lease and due
  /// now, so its step (the charge), what to charge and its trace are known without asking the
  /// database again. Returns the order as the database holds it when the charge confirmed it
  /// and finished the saga; nil when it must be read (declined, or payments could not be
  /// reached and the worker tries again, or the saga moved on and was worked on here).
  func workNew(_ order: Shop_V1_Order, _ saga: NewSaga) async -> Shop_V1_Order? {
    let request = Shop_V1_ChargeRequest.with {
      $0.idempotencyKey = order.id
      $0.orderID = order.id
      $0.amount = order.total
    }
    do {
      switch try await charge(orderID: order.id, request: request, headers: saga.traceHeaders) {
      case .confirmed(let payment, let now):
        var confirmed = order
        confirmed.status = .confirmed
        confirmed.paymentID = payment.id
        confirmed.updateTime = Google_Protobuf_Timestamp(nanosSinceEpoch: now)
        return confirmed
      case .movedOn:
        await work(orderID: order.id)
      case .waiting:
        break
      }
    } catch {
      logger.error(
        "saga step failed", metadata: ["order_id": "\(order.id)", "error": "\(error)"])
    }
    return nil
  }

  /// Works the saga of `orderID`, which this instance has claimed, until it is done or must
  /// wait (payments unreachable: it is due again after a backoff).
  func work(orderID: String) async {
    do {
      while let step = try await nextStep(orderID: orderID) {
        switch step {
        case .charge:
          let (request, headers) = try await repository.chargeRequest(orderID: orderID)
          let outcome = try await charge(orderID: orderID, request: request, headers: headers)
          if case .waiting = outcome { return }
        case .cancelCharge:
          guard try await cancelCharge(orderID: orderID) else { return }
        case .done:
          return
        }
      }
    } catch {
      logger.error(
        "saga step failed", metadata: ["order_id": "\(orderID)", "error": "\(error)"])
    }
  }

  /// The saga's step, if this instance still holds its lease. Past the deadline, a charge
  /// that has been tried — and failed — at least once gives up. (The first attempt is always
  /// made, however late it comes: the charge is idempotent, and a saga never times out without
  /// having asked payments.)
  private func nextStep(orderID: String) async throws -> SagaStep? {
    let timeout = settings.timeout
    return try await repository.nextStep(
      orderID: orderID, owner: owner, lease: settings.lease.nanoseconds, now: nowNanos()
    ) { lastError in
      "payment did not complete within \(timeout)"
        + (lastError.isEmpty ? "" : " (last error: \(lastError))")
    }
  }

  /// What one charge attempt came to.
  enum ChargeOutcome {
    /// The order is confirmed with this payment (at this time), and its saga done.
    case confirmed(Shop_V1_Payment, at: Int64)
    /// The saga is past the charge some other way: declined (the order cancelled), or the
    /// order was cancelled meanwhile (its compensation is next).
    case movedOn
    /// Payments could not be reached: the saga is due again after a backoff.
    case waiting
  }

  /// One charge attempt.
  private func charge(
    orderID: String, request: Shop_V1_ChargeRequest, headers: [String: String]
  ) async throws -> ChargeOutcome {
    let outcome: Result<Shop_V1_Payment, any Error>
    do {
      outcome = .success(
        try await traced("saga charge", headers) { try await self.payments.charge(request) })
    } catch {
      outcome = .failure(error)
    }
    switch outcome {
    case .success(let payment):
      // Confirmed only if still pending: an order cancelled meanwhile keeps its saga in
      // compensation, which refunds this payment.
      let now = nowNanos()
      let finished = try await repository.charged(orderID: orderID, payment: payment, now: now)
      return finished ? .confirmed(payment, at: now) : .movedOn
    case .failure(let error as RPCError) where Self.isDecline(error.code):
      try await repository.declined(orderID: orderID, message: error.message, now: nowNanos())
      return .movedOn
    case .failure(let error):
      try await retryLater(orderID: orderID, step: .charge, error: error)
      return .waiting
    }
  }

  /// One compensation attempt. True when payments answered.
  private func cancelCharge(orderID: String) async throws -> Bool {
    let (reason, headers) = try await repository.compensation(orderID: orderID)
    let request = Shop_V1_CancelChargeRequest.with {
      $0.idempotencyKey = orderID
      $0.reason = String(("order cancelled: " + reason).prefix(500))
    }
    do {
      _ = try await traced("saga cancel charge", headers) {
        try await self.payments.cancelCharge(request)
      }
    } catch {
      try await retryLater(orderID: orderID, step: .cancelCharge, error: error)
      return false
    }
    try await repository.compensated(orderID: orderID, now: nowNanos())
    return true
  }

  private func retryLater(orderID: String, step: SagaStep, error: any Error) async throws {
    let message = (error as? RPCError).map { "\($0.code): \($0.message)" } ?? "\(error)"
    try await repository.retryLater(
      orderID: orderID, step: step, error: String(message.prefix(400)), owner: owner,
      now: nowNanos())
  }

  private func traced<T: Sendable>(
    _ name: String, _ headers: [String: String], _ body: @escaping @Sendable () async throws -> T
  ) async throws -> T {
    guard let tracing, !headers.isEmpty else { return try await body() }
    let result = Mutex<T?>(nil)
    try await tracing.resume(name, headers) {
      let value = try await body()
      result.withLock { $0 = value }
    }
    return result.withLock { $0! }
  }

  /// How long a step that could not reach payments waits after `attempts` failed ones: 0.2 s
  /// doubling to 5 s.
  static func backoff(attempts: Int) -> Int64 {
    Int64(min(200_000_000 << min(attempts, 5), 5_000_000_000))
  }

  /// Payments' answers that retrying will not change: the charge is declined.
  private static func isDecline(_ code: RPCError.Code) -> Bool {
    code == .failedPrecondition || code == .invalidArgument || code == .outOfRange
  }

  /// Claims up to `limit` due sagas whose lease is free or has run out.
  func claimDue(limit: Int) async throws -> [String] {
    try await repository.claimDue(
      limit: limit, owner: owner, lease: settings.lease.nanoseconds, now: nowNanos())
  }

  /// The trace headers as a JSON object, keys sorted, written by hand: it runs with every new
  /// order, where Foundation's serializer cost more than the rest of the saga's bookkeeping.
  static func encode(_ headers: [String: String]) -> String {
    guard !headers.isEmpty else { return "" }
    var text = "{"
    for (index, key) in headers.keys.sorted().enumerated() {
      if index > 0 { text += "," }
      appendQuoted(key, to: &text)
      text += ":"
      appendQuoted(headers[key]!, to: &text)
    }
    return text + "}"
  }

  /// `value` as a JSON string: quotes, backslashes and control characters escaped.
  private static func appendQuoted(_ value: String, to text: inout String) {
    text += "\""
    for scalar in value.unicodeScalars {
      switch scalar {
      case "\"": text += "\\\""
      case "\\": text += "\\\\"
      case "\n": text += "\\n"
      case "\r": text += "\\r"
      case "\t": text += "\\t"
      case _ where scalar.value < 0x20:
        text +=
          "\\u" + String(repeating: "0", count: 4 - String(scalar.value, radix: 16).count)
          + String(scalar.value, radix: 16)
      default: text.unicodeScalars.append(scalar)
      }
    }
    text += "\""
  }

  static func decode(_ text: String) -> [String: String] {
    guard !text.isEmpty,
      let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)),
      let headers = object as? [String: String]
    else { return [:] }
    return headers
  }

}

/// Works the sagas of every instance that shares the database, as long as the service runs:
/// due sagas are claimed by lease (up to 16 at a time, worked concurrently).
public struct SagaWorker: Service {
  let saga: OrderSaga

  public func run() async throws {
    await cancelWhenGracefulShutdown {
      while !Task.isCancelled {
        do {
          let due = try await saga.claimDue(limit: 16)
          if !due.isEmpty {
            await withTaskGroup(of: Void.self) { group in
              for id in due { group.addTask { await saga.work(orderID: id) } }
            }
            continue
          }
        } catch {
          saga.logger.error("claiming due sagas failed", metadata: ["error": "\(error)"])
        }
        try? await Task.sleep(for: saga.settings.pollInterval)
      }
    }
  }
}

extension Duration {
  var nanoseconds: Int64 {
    let (seconds, attoseconds) = components
    return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
  }
}
