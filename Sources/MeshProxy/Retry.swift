import MeshConfig
import NIOCore

/// How one attempt of a call ended, as far as trying it again goes.
enum AttemptEnd: Equatable {
  /// The upstream answered with this gRPC status before anything was forwarded to the caller
  /// (a Trailers-Only response), with its `grpc-retry-pushback-ms`.
  case status(Int, pushback: Pushback)
  /// The request never reached the app: the connection could not be made, the stream was
  /// refused, or a GOAWAY left it unprocessed. Safe to retry whatever the method.
  case refused(String)
  /// The stream or its connection failed after the request went out: it may have reached the
  /// app, so only an idempotent method is tried again.
  case lost(String)
  /// The attempt ran past the route's `perTryTimeout`; like `lost`, it may have reached the app.
  case perTryTimeout
}

/// A server's `grpc-retry-pushback-ms`: absent, a delay to wait before the next attempt, or a
/// request not to retry (a negative or malformed value, as gRPC's retry design says).
enum Pushback: Equatable {
  case none
  case after(TimeAmount)
  case stop

  init(header: String?) {
    guard let header else {
      self = .none
      return
    }
    guard let milliseconds = Int64(header), milliseconds >= 0 else {
      self = .stop
      return
    }
    self = .after(.milliseconds(milliseconds))
  }
}

/// The retry side of one call, as gRPC's retry design defines it: a call is tried again only
/// until it is committed (response headers other than Trailers-Only, or a message, forwarded to
/// the caller), only while its request fits the replay buffer, only within the route's attempts
/// and the service's budget — and, once the request may have reached the app, only when the
/// method is idempotent.
///
/// A value: each event returns what the call does next, so it is tested without a network.
struct RetryState {
  /// What the call has buffered for replay, at most; a larger request is never retried.
  static let bufferLimit = 64 * 1024

  let policy: RetryPolicy
  let idempotent: Bool
  /// Attempts made so far, the first included.
  private(set) var attempts = 1
  private(set) var buffered = 0
  /// False once the request outgrew the buffer.
  private(set) var replayable = true
  private(set) var committed = false

  init(policy: RetryPolicy, idempotent: Bool) {
    self.policy = policy
    self.idempotent = idempotent
  }

  enum Decision: Equatable {
    case retry(after: TimeAmount)
    case giveUp(Reason)
  }

  /// Why a call is not tried again.
  enum Reason: Equatable {
    case committed, notRetryable, tooLarge, noAttemptsLeft, pushback, deadline, budget
  }

  /// `bytes` more of the request were sent; false once they no longer fit the buffer.
  mutating func buffer(_ bytes: Int) -> Bool {
    guard replayable else { return false }
    buffered += bytes
    if buffered > Self.bufferLimit { replayable = false }
    return replayable
  }

  /// Something of the response reached the caller: no more attempts.
  mutating func commit() {
    committed = true
  }

  /// What to do after an attempt ended with `end`. `remaining` is the time left before the
  /// call's deadline (nil: none); `budget` withdraws a retry from the service's budget, asked
  /// last so that a call not retried for another reason spends nothing; `jitter` draws the
  /// backoff from 0...bound nanoseconds (full jitter).
  mutating func attemptEnded(
    _ end: AttemptEnd, remaining: TimeAmount?, budget: () -> Bool,
    jitter: (Int64) -> Int64 = { Int64.random(in: 0...$0) }
  ) -> Decision {
    guard !committed else { return .giveUp(.committed) }
    var pushback = Pushback.none
    switch end {
    case .refused:
      break
    case .status(let code, let serverPushback):
      guard idempotent, policy.retryOn.contains(code) else { return .giveUp(.notRetryable) }
      pushback = serverPushback
    case .lost, .perTryTimeout:
      guard idempotent else { return .giveUp(.notRetryable) }
    }
    guard replayable else { return .giveUp(.tooLarge) }
    guard attempts < policy.attempts else { return .giveUp(.noAttemptsLeft) }
    let delay: TimeAmount
    switch pushback {
    case .stop: return .giveUp(.pushback)
    case .after(let wait): delay = wait
    case .none: delay = .nanoseconds(jitter(backoffBound.nanoseconds))
    }
    if let remaining, delay >= remaining { return .giveUp(.deadline) }
    guard budget() else { return .giveUp(.budget) }
    attempts += 1
    return .retry(after: delay)
  }

  /// The backoff before the next attempt is drawn from 0 up to this: the base doubled for each
  /// retry made, at most the maximum.
  var backoffBound: TimeAmount {
    let base = TimeAmount(policy.backoffBase).nanoseconds
    let maximum = TimeAmount(policy.backoffMax).nanoseconds
    let shift = min(attempts - 1, 30)
    let (doubled, overflow) = base.multipliedReportingOverflow(by: Int64(1) << shift)
    return .nanoseconds(overflow ? maximum : min(doubled, maximum))
  }
}

extension RetryState.Reason {
  /// The reason as metrics and traces name it.
  var name: String {
    switch self {
    case .committed: "committed"
    case .notRetryable: "not_retryable"
    case .tooLarge: "too_large"
    case .noAttemptsLeft: "no_attempts_left"
    case .pushback: "pushback"
    case .deadline: "deadline"
    case .budget: "budget_exhausted"
    }
  }
}
