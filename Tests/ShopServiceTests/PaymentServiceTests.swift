import GRPCCore
import PaymentService
import ShopProtos
import Testing

/// `PaymentService` against a real SQLite file and a real PostgreSQL server.
@Suite struct PaymentServiceTests {
  func charge(
    _ key: String, order: String = "ord_1", minor: Int64 = 2500
  )
    -> Shop_V1_ChargeRequest
  {
    .with {
      $0.idempotencyKey = key
      $0.orderID = order
      $0.amount = .with {
        $0.currencyCode = "USD"
        $0.minorUnits = minor
      }
    }
  }

  @Test(arguments: Backend.allCases) func aRepeatedChargeReturnsTheFirstAndChargesOnce(
    _ backend: Backend
  ) async throws {
    let location = try await database("payments", on: backend)
    let service = try await PaymentService.open(location, logger: TestPostgres.logger)
    let first = try await service.charge(request: charge("key-1"), context: context())
    #expect(first.status == .charged)
    // Repeats, including concurrent ones from another instance on the same file.
    let other = try await PaymentService.open(location, logger: TestPostgres.logger)
    let repeats = try await withThrowingTaskGroup(of: Shop_V1_Payment.self) { group in
      for i in 0..<10 {
        group.addTask {
          try await (i % 2 == 0 ? service : other).charge(
            request: charge("key-1"), context: context())
        }
      }
      return try await group.reduce(into: []) { $0.append($1) }
    }
    #expect(repeats.allSatisfy { $0 == first })

    // Concurrent first attempts with a fresh key also charge once.
    let racing = try await withThrowingTaskGroup(of: String.self) { group in
      for i in 0..<8 {
        group.addTask {
          try await (i % 2 == 0 ? service : other).charge(
            request: charge("key-2"), context: context()
          ).id
        }
      }
      return try await group.reduce(into: Set<String>()) { $0.insert($1) }
    }
    #expect(racing.count == 1)

    let message = await expectStatus(.failedPrecondition) {
      _ = try await service.charge(request: charge("key-1", minor: 9999), context: context())
    }
    #expect(message.contains("already used"))
  }

  @Test(arguments: Backend.allCases) func aChargeOverTheLimitIsDeclinedWithTheReason(
    _ backend: Backend
  ) async throws {
    let service = try await PaymentService.open(
      try await database("payments", on: backend), chargeLimitMinorUnits: 10_000,
      logger: TestPostgres.logger)
    let message = await expectStatus(.failedPrecondition) {
      _ = try await service.charge(request: charge("big", minor: 10_001), context: context())
    }
    #expect(message == "charge declined: 10001 USD minor units exceeds the limit of 10000")
    let atLimit = try await service.charge(request: charge("ok", minor: 10_000), context: context())
    #expect(atLimit.status == .charged)
  }

  @Test(arguments: Backend.allCases) func validatesTheCharge(_ backend: Backend) async throws {
    let service = try await PaymentService.open(
      try await database("payments", on: backend), logger: TestPostgres.logger)
    #expect(
      await expectStatus(.invalidArgument) {
        _ = try await service.charge(request: charge(""), context: context())
      } == "idempotency_key: is required")
    #expect(
      await expectStatus(.invalidArgument) {
        _ = try await service.charge(request: charge("k", minor: 0), context: context())
      } == "amount.minor_units: must be greater than 0")
    var noAmount = charge("k")
    noAmount.clearAmount()
    #expect(
      await expectStatus(.invalidArgument) {
        _ = try await service.charge(request: noAmount, context: context())
      } == "amount: is required")
  }

  @Test(arguments: Backend.allCases) func refundIsIdempotent(_ backend: Backend) async throws {
    let service = try await PaymentService.open(
      try await database("payments", on: backend), logger: TestPostgres.logger)
    let payment = try await service.charge(request: charge("r"), context: context())
    let refunded = try await service.refund(
      request: .with {
        $0.id = payment.id
        $0.reason = "customer asked"
      }, context: context())
    #expect(refunded.status == .refunded)
    #expect(refunded.refundReason == "customer asked")
    let again = try await service.refund(request: .with { $0.id = payment.id }, context: context())
    #expect(again == refunded)
    #expect(
      try await service.getPayment(request: .with { $0.id = payment.id }, context: context())
        == refunded)
    await expectStatus(.notFound) {
      _ = try await service.refund(request: .with { $0.id = "pay_missing" }, context: context())
    }
  }
}

/// CancelCharge, the saga's compensation, before and after the charge it cancels.
@Suite struct CancelChargeTests {
  func charge(_ key: String) -> Shop_V1_ChargeRequest {
    .with {
      $0.idempotencyKey = key
      $0.orderID = "ord_\(key)"
      $0.amount = .with {
        $0.currencyCode = "EUR"
        $0.minorUnits = 700
      }
    }
  }

  @Test(arguments: Backend.allCases)
  func aCancelledChargeIsRefundedAndACancelledKeyChargesNothingLater(
    _ backend: Backend
  ) async throws {
    let service = try await PaymentService.open(
      try await database("payments", on: backend), logger: TestPostgres.logger)
    let paid = try await service.charge(request: charge("k1"), context: context())
    let cancelled = try await service.cancelCharge(
      request: .with {
        $0.idempotencyKey = "k1"
        $0.reason = "order timed out"
      }, context: context())
    #expect(cancelled.payment.id == paid.id)
    #expect(cancelled.payment.status == .refunded)
    #expect(cancelled.payment.refundReason == "order timed out")
    let again = try await service.cancelCharge(
      request: .with { $0.idempotencyKey = "k1" }, context: context())
    #expect(again == cancelled)
    // The first payment is still what a repeat of its charge returns.
    #expect(try await service.charge(request: charge("k1"), context: context()).status == .refunded)

    let before = try await service.cancelCharge(
      request: .with {
        $0.idempotencyKey = "k2"
        $0.reason = "gave up"
      }, context: context())
    #expect(!before.hasPayment)
    let message = await expectStatus(.failedPrecondition) {
      _ = try await service.charge(request: charge("k2"), context: context())
    }
    #expect(message == "charge declined: idempotency_key k2 was cancelled (gave up)")
    let missing = await expectStatus(.invalidArgument) {
      _ = try await service.cancelCharge(request: .init(), context: context())
    }
    #expect(missing == "idempotency_key: is required")
  }
}
