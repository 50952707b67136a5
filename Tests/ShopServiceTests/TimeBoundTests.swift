import Foundation
import ShopSupport
import Synchronization
import Testing

/// `PostgresShopDatabase.race`, the time bound of every database call: the first of the
/// operation and its deadline answers, and the answer never waits for an operation that does
/// not end.
@Suite struct TimeBoundTests {
  struct Late: Error {}
  struct Failed: Error {}

  @Test func anOperationInTimeAnswers() async throws {
    let value = try await PostgresShopDatabase.race({ 42 }, against: .seconds(30)) { Late() }
    #expect(value == 42)
    await #expect(throws: Failed.self) {
      try await PostgresShopDatabase.race(
        { () async throws -> Int in throw Failed() },
        against: .seconds(30)
      ) { Late() }
    }
  }

  /// An operation deaf to cancellation (a call on a connection that never answers): the
  /// deadline answers at its time, and the operation is left to end by itself.
  @Test func theDeadlineAnswersWithoutWaitingForTheOperation() async throws {
    let ended = Mutex(false)
    let started = ContinuousClock.now
    await #expect(throws: Late.self) {
      try await PostgresShopDatabase.race(
        {
          await withCheckedContinuation { continuation in
            DispatchQueue.global().asyncAfter(deadline: .now() + 60) {
              ended.withLock { $0 = true }
              continuation.resume()
            }
          }
          return 1
        }, against: .milliseconds(100)
      ) { Late() }
    }
    // (On a test process whose threads are busy, the deadline's timer itself may run late: the
    // point is that the answer comes long before the operation ends.)
    #expect(ContinuousClock.now - started < .seconds(30))
    #expect(!ended.withLock { $0 }, "the answer did not wait for the operation")
  }

  /// The caller cancelled: the answer is at once, whatever the operation does.
  @Test func aCancelledCallerIsAnsweredAtOnce() async throws {
    let call = Task {
      try await PostgresShopDatabase.race(
        {
          await withCheckedContinuation { continuation in
            DispatchQueue.global().asyncAfter(deadline: .now() + 60) { continuation.resume() }
          }
          return 1
        }, against: .seconds(60)
      ) { Late() }
    }
    try await Task.sleep(for: .milliseconds(50))
    let started = ContinuousClock.now
    call.cancel()
    await #expect(throws: CancellationError.self) { try await call.value }
    #expect(ContinuousClock.now - started < .seconds(30))
  }
}
