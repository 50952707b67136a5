import Foundation
import GRPCCore
import Logging
import ShopProtos
import ShopSupport
import SwiftProtobuf

/// Where the orders service keeps its orders, customers and sagas: SQLite or PostgreSQL, one
/// behaviour. Every change of an order commits with its saga's, so a process killed at any
/// point resumes where it was; every change is conditional on the state it expects, so a step
/// done twice (by two instances, or again after a crash) is harmless.
public protocol OrderRepository: Sendable {
  // MARK: Orders

  /// Stores a new order, with its saga when there is one.
  func create(_ order: Shop_V1_Order, saga: NewSaga?) async throws
  func order(id: String) async throws -> Shop_V1_Order?
  /// Up to `limit` of a user's orders after `sequence`, in the order they were created.
  func orders(
    user: String, after sequence: Int64, limit: Int
  ) async throws
    -> [(sequence: Int64, order: Shop_V1_Order)]
  /// Cancels a pending order for `reason`, moving its saga (if `compensation` is given) to
  /// cancelling its charge; a cancelled or confirmed order is left as it is.
  func cancel(
    id: String, reason: String, compensation: SagaLease?, now: Int64
  ) async throws
    -> CancelOutcome

  // MARK: Customers

  /// The customer record of a `user.created` event and the note that the event was handled,
  /// committed together; false (and nothing changed) for an event handled before.
  func handleUserCreated(eventID: String, _ created: Shop_V1_UserCreated) async throws -> Bool
  func customer(userID: String) async throws -> Shop_V1_Customer?

  // MARK: Sagas

  /// The saga's step if `owner` still holds its lease, renewed until `lease`. A charge past its
  /// deadline that was tried at least once becomes compensation here (its order cancelled
  /// with a reason `timedOut` words from the last error).
  func nextStep(
    orderID: String, owner: String, lease: Int64, now: Int64,
    timedOut: @escaping @Sendable (_ lastError: String) -> String
  ) async throws -> SagaStep?
  /// What to charge for the order, and the trace its saga was begun in.
  func chargeRequest(
    orderID: String
  ) async throws
    -> (request: Shop_V1_ChargeRequest, traceHeaders: [String: String])
  /// The charge went through: the order is confirmed (if still pending), the saga done. True
  /// when this finished the saga (the order was pending, and is confirmed now); false when the
  /// saga had moved on (the order was cancelled meanwhile: its compensation refunds this).
  @discardableResult
  func charged(orderID: String, payment: Shop_V1_Payment, now: Int64) async throws -> Bool
  /// The charge was declined: the order is cancelled with the reason, the saga done.
  func declined(orderID: String, message: String, now: Int64) async throws
  /// A step that could not reach payments is due again after a backoff
  /// (`OrderSaga.backoff`, by the attempts made; a charge no later than its deadline); the
  /// lease is given up.
  func retryLater(
    orderID: String, step: SagaStep, error: String, owner: String, now: Int64)
    async throws
  /// Why the charge is being cancelled, and the saga's trace.
  func compensation(
    orderID: String
  ) async throws -> (reason: String, traceHeaders: [String: String])
  /// Payments answered the cancellation: the saga is done.
  func compensated(orderID: String, now: Int64) async throws
  /// Claims up to `limit` due sagas whose lease is free or has run out, for `owner`.
  func claimDue(limit: Int, owner: String, lease: Int64, now: Int64) async throws -> [String]
}

/// A saga written with its new order, claimed by the instance that took the order.
public struct NewSaga: Sendable {
  var deadline: Int64
  var owner: String
  var leaseUntil: Int64
  var traceHeaders: [String: String]
}

/// A lease on a saga for the instance that will work it next.
public struct SagaLease: Sendable {
  var owner: String
  var until: Int64
}

public enum SagaStep: String, Sendable {
  case charge
  case cancelCharge = "cancel_charge"
  case done
}

/// What cancelling an order found.
public enum CancelOutcome: Sendable {
  case cancelled(Shop_V1_Order)
  case alreadyCancelled(Shop_V1_Order)
  case confirmed(Shop_V1_Order)
  case notFound
}
