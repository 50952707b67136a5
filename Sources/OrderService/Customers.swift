import Foundation
import GRDB
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
    return try await database.write { db in
      if try Bool.fetchOne(
        db, sql: "SELECT 1 FROM handled_events WHERE event_id = ?", arguments: [event.id]) == true
      {
        return false
      }
      try db.execute(
        sql: """
          INSERT INTO customers (user_id, email, name, create_time_ns) VALUES (?, ?, ?, ?)
          ON CONFLICT (user_id) DO UPDATE SET email = excluded.email, name = excluded.name
          """,
        arguments: [
          created.userID, created.email, created.name,
          created.createTime.seconds * 1_000_000_000 + Int64(created.createTime.nanos),
        ])
      try db.execute(
        sql: "INSERT INTO handled_events (event_id, handled_time_ns) VALUES (?, ?)",
        arguments: [event.id, nowNanos()])
      return true
    }
  }

  public func getCustomer(
    request: Shop_V1_GetCustomerRequest, context: ServerContext
  )
    async throws -> Shop_V1_Customer
  {
    try Validate.required(request.userID, "user_id")
    let customer = try await database.read { db -> Shop_V1_Customer? in
      try Row.fetchOne(
        db, sql: "SELECT * FROM customers WHERE user_id = ?", arguments: [request.userID]
      ).map { row in
        .with {
          $0.userID = row["user_id"]
          $0.email = row["email"]
          $0.name = row["name"]
          $0.createTime = Google_Protobuf_Timestamp(nanosSinceEpoch: row["create_time_ns"])
        }
      }
    }
    guard let customer else {
      throw RPCError(
        code: .notFound,
        message: "no customer \(request.userID): its user.created event has not been handled")
    }
    return customer
  }

  static func registerCustomers(in migrator: inout DatabaseMigrator) {
    migrator.registerMigration("v2: customers from user.created") { db in
      try db.execute(
        sql: """
          CREATE TABLE customers (
            user_id TEXT PRIMARY KEY,
            email TEXT NOT NULL,
            name TEXT NOT NULL,
            create_time_ns INTEGER NOT NULL
          );
          CREATE TABLE handled_events (
            event_id TEXT PRIMARY KEY,
            handled_time_ns INTEGER NOT NULL
          );
          """)
    }
  }
}
