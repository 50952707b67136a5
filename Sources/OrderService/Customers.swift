import Foundation
import GRPCCore
import ShopProtos
import ShopSupport
import SwiftProtobuf

extension OrderService {
  /// Handles a `user.created` event: the customer record, once per event id — the record and
  /// the note that the event was handled commit together, so a redelivery changes nothing.
  /// Returns false for an event handled before.
  @discardableResult
  public func handleUserCreated(_ event: Shop_V1_Event) async throws -> Bool {
    let created = try Shop_V1_UserCreated(serializedBytes: event.payload)
    return try await repository.handleUserCreated(eventID: event.id, created)
  }

  public func getCustomer(
    request: Shop_V1_GetCustomerRequest, context: ServerContext
  )
    async throws -> Shop_V1_Customer
  {
    try Validate.required(request.userID, "user_id")
    let customer = try await repository.customer(userID: request.userID)
    guard let customer else {
      throw RPCError(
        code: .notFound,
        message: "no customer \(request.userID): its user.created event has not been handled")
    }
    return customer
  }
}
