import MeshConfig
import NIOCore
import Testing

@testable import MeshProxy

/// When a call is tried again, as plain values: no network, no sleeps.
@Suite struct RetryTests {
  func state(idempotent: Bool, attempts: Int = 3, retryOn: [Int] = [14]) -> RetryState {
    var policy = RetryPolicy()
    policy.attempts = attempts
    policy.retryOn = retryOn
    return RetryState(policy: policy, idempotent: idempotent)
  }

  let always: () -> Bool = { true }

  @Test func aCallThatNeverReachedTheAppIsRetriedWhateverItsMethod() {
    var retry = state(idempotent: false)
    let decision = retry.attemptEnded(
      .refused("connection refused"), remaining: nil, budget: always, jitter: { $0 })
    #expect(decision == .retry(after: .milliseconds(25)))
    #expect(retry.attempts == 2)
  }

  @Test func aStatusIsRetriedOnlyForAnIdempotentMethodAndAConfiguredCode() {
    var creating = state(idempotent: false)
    #expect(
      creating.attemptEnded(.status(14, pushback: .none), remaining: nil, budget: always)
        == .giveUp(.notRetryable))
    var reading = state(idempotent: true)
    #expect(
      reading.attemptEnded(.status(13, pushback: .none), remaining: nil, budget: always)
        == .giveUp(.notRetryable))
    #expect(
      reading.attemptEnded(
        .status(14, pushback: .none), remaining: nil, budget: always, jitter: { _ in 0 })
        == .retry(after: .nanoseconds(0)))
  }

  @Test func aLostOrTimedOutAttemptMayHaveReachedTheApp() {
    var creating = state(idempotent: false)
    #expect(
      creating.attemptEnded(.lost("reset"), remaining: nil, budget: always)
        == .giveUp(.notRetryable))
    #expect(
      creating.attemptEnded(.perTryTimeout, remaining: nil, budget: always)
        == .giveUp(.notRetryable))
    var reading = state(idempotent: true)
    #expect(
      reading.attemptEnded(.perTryTimeout, remaining: nil, budget: always) != .giveUp(.notRetryable)
    )
  }

  @Test func attemptsStopAtThePolicysCount() {
    var retry = state(idempotent: true, attempts: 3)
    let end = AttemptEnd.status(14, pushback: .none)
    #expect(retry.attemptEnded(end, remaining: nil, budget: always) != .giveUp(.noAttemptsLeft))
    #expect(retry.attemptEnded(end, remaining: nil, budget: always) != .giveUp(.noAttemptsLeft))
    #expect(retry.attemptEnded(end, remaining: nil, budget: always) == .giveUp(.noAttemptsLeft))
    #expect(retry.attempts == 3)
  }

  @Test func aCommittedCallIsNeverRetried() {
    var retry = state(idempotent: true)
    retry.commit()
    #expect(
      retry.attemptEnded(.refused("x"), remaining: nil, budget: always) == .giveUp(.committed))
  }

  @Test func aRequestOverTheBufferIsNotRetried() {
    var retry = state(idempotent: true)
    let fits = retry.buffer(RetryState.bufferLimit)
    let oneMore = retry.buffer(1)
    #expect(fits && !oneMore)
    #expect(retry.attemptEnded(.refused("x"), remaining: nil, budget: always) == .giveUp(.tooLarge))
  }

  @Test func backoffDoublesWithFullJitterUpToTheMaximum() {
    var retry = state(idempotent: true, attempts: 5)
    var bounds: [Int64] = []
    for _ in 0..<4 {
      bounds.append(retry.backoffBound.nanoseconds / 1_000_000)
      _ = retry.attemptEnded(.refused("x"), remaining: nil, budget: always)
    }
    #expect(bounds == [25, 50, 100, 200])
    var last = state(idempotent: true, attempts: 5)
    for _ in 0..<4 { _ = last.attemptEnded(.refused("x"), remaining: nil, budget: always) }
    #expect(last.backoffBound == .milliseconds(250))
    // Full jitter: the wait is drawn from zero up to the bound.
    var drawn = state(idempotent: true)
    #expect(
      drawn.attemptEnded(.refused("x"), remaining: nil, budget: always, jitter: { $0 / 5 })
        == .retry(after: .milliseconds(5)))
  }

  @Test func theServersPushbackIsObeyed() {
    var waiting = state(idempotent: true)
    #expect(
      waiting.attemptEnded(
        .status(14, pushback: Pushback(header: "300")), remaining: nil, budget: always)
        == .retry(after: .milliseconds(300)))
    var stopped = state(idempotent: true)
    #expect(
      stopped.attemptEnded(
        .status(14, pushback: Pushback(header: "-1")), remaining: nil, budget: always)
        == .giveUp(.pushback))
    #expect(Pushback(header: "soon") == .stop)
  }

  @Test func noRetryWaitsPastTheDeadlineOrBeyondTheBudget() {
    var late = state(idempotent: true)
    #expect(
      late.attemptEnded(
        .status(14, pushback: Pushback(header: "500")), remaining: .milliseconds(100),
        budget: always)
        == .giveUp(.deadline))
    var poor = state(idempotent: true)
    #expect(poor.attemptEnded(.refused("x"), remaining: nil, budget: { false }) == .giveUp(.budget))
    // The budget is asked last: a call not retried for another reason spends nothing.
    var asked = false
    var creating = state(idempotent: false)
    _ = creating.attemptEnded(
      .lost("x"), remaining: nil,
      budget: {
        asked = true; return true
      })
    #expect(!asked)
  }

  @Test func theBudgetAllowsAShareOfCallsPlusAFloorPerSecond() {
    var settings = RetryBudget()
    settings.percent = 20
    settings.minPerSecond = 1
    settings.window = .seconds(10)
    let budget = RetryBudgetWindow(settings)
    let start = NIODeadline.uptimeNanoseconds(1_000_000_000_000)
    for _ in 0..<100 { budget.recordCall(now: start) }
    // 20 % of 100 calls, plus 1 per second of a 10 s window.
    var granted = 0
    while budget.withdraw(now: start) { granted += 1 }
    #expect(granted == 30)
    // Eleven seconds later the window holds none of it.
    let later = start + .seconds(11)
    var again = 0
    while budget.withdraw(now: later) { again += 1 }
    #expect(again == 10)
  }

  @Test func grpcTimeoutIsParsedAndWrittenAsTheProtocolSpells() {
    #expect(GRPCTimeout.parse("100m") == .milliseconds(100))
    #expect(GRPCTimeout.parse("2S") == .seconds(2))
    #expect(GRPCTimeout.parse("1H") == .hours(1))
    #expect(GRPCTimeout.parse("5u") == .microseconds(5))
    #expect(GRPCTimeout.parse("123456789m") == nil)  // more than 8 digits
    #expect(GRPCTimeout.parse("10x") == nil)
    #expect(GRPCTimeout.parse("m") == nil)
    #expect(GRPCTimeout.parse("-1S") == nil)
    #expect(GRPCTimeout.format(.milliseconds(250)) == "250000u")
    #expect(GRPCTimeout.format(.nanoseconds(1_500)) == "1500n")
    #expect(GRPCTimeout.format(.seconds(200)) == "200000m")
    // Rounded up: the next hop never expires first.
    #expect(GRPCTimeout.format(.nanoseconds(100_000_001)) == "100001u")
    #expect(GRPCTimeout.format(.hours(3000)) == "10800000S")
    #expect(GRPCTimeout.format(.hours(30000)) == "1800000M")
  }

  /// An upstream DEADLINE_EXCEEDED is the sidecar's own timeout once the deadline it forwarded
  /// has passed: the per-try timeout's, or the route's; never the caller's, never earlier,
  /// never another status.
  @Test func anUpstreamDeadlineExceededIsTheSidecarsOwnOnlyOnceItsDeadlinePassed() {
    let start = NIODeadline.uptimeNanoseconds(1_000_000_000)
    let forwarded = start + .milliseconds(800)
    func own(
      code: Int = 4, perTry: Bool = false, route: Bool = true, at now: NIODeadline
    ) -> OwnTimeout? {
      OwnTimeout(
        upstreamCode: code, boundByPerTry: perTry, deadlineIsOwn: route, forwarded: forwarded,
        now: now)
    }
    #expect(own(at: forwarded) == .route)
    #expect(own(at: forwarded + .milliseconds(30)) == .route)
    #expect(own(at: forwarded - .microseconds(500)) == .route)  // the app's clock's leeway
    #expect(own(perTry: true, at: forwarded) == .perTry)
    #expect(own(at: forwarded - .milliseconds(5)) == nil)  // the app's own, before the deadline
    #expect(own(route: false, at: forwarded) == nil)  // the caller's deadline: passed unchanged
    #expect(own(code: 14, at: forwarded) == nil)
    #expect(
      OwnTimeout(
        upstreamCode: 4, boundByPerTry: false, deadlineIsOwn: true, forwarded: nil, now: forwarded)
        == nil)
  }
}
