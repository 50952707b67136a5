import Foundation
import GRDB
import Logging
import PostgresNIO
import ShopProtos
import ShopSupport
import SwiftProtobuf

/// Where the payments service keeps its payments: SQLite or PostgreSQL, one behaviour. Each
/// operation on an idempotency key runs alone for that key (SQLite's one writer; on PostgreSQL
/// a transaction lock on the key), so a charge and a cancellation of one key never interleave.
public protocol PaymentRepository: Sendable {
  /// The payment made with `key` if there is one; else the cancellation's reason if `key` was
  /// cancelled; else the payment `make` returns (or the error it throws), stored.
  func charge(
    key: String, orInsert make: @escaping @Sendable () throws -> Shop_V1_Payment
  )
    async throws -> ChargeOutcome
  /// Refunds the payment `id` if it is charged; returns it as it is now (nil: none).
  func refund(id: String, reason: String) async throws -> Shop_V1_Payment?
  /// Records `key` as cancelled (the first reason stays) and refunds its payment if one was
  /// charged; returns that payment, if any.
  func cancel(key: String, reason: String) async throws -> Shop_V1_Payment?
  func payment(id: String) async throws -> Shop_V1_Payment?
}

/// What a charge found or did.
public enum ChargeOutcome: Sendable {
  case existing(Shop_V1_Payment)
  case cancelled(reason: String)
  case inserted(Shop_V1_Payment)
}

/// Payments in a SQLite file.
public struct SQLitePaymentRepository: PaymentRepository {
  let database: DatabasePool

  /// Opens (creating and migrating if needed) the database at `path`.
  public init(path: String) throws {
    database = try openShopDatabase(path: path, migrator: Self.migrator)
  }

  public func charge(
    key: String, orInsert make: @escaping @Sendable () throws -> Shop_V1_Payment
  ) async throws -> ChargeOutcome {
    try await database.transaction { db in
      if let row = try Row.fetchOne(
        db.cachedStatement(sql: "SELECT * FROM payments WHERE idempotency_key = ?"),
        arguments: [key])
      {
        return .existing(Self.payment(from: row))
      }
      if let reason = try String.fetchOne(
        db.cachedStatement(sql: "SELECT reason FROM cancelled_charges WHERE idempotency_key = ?"),
        arguments: [key])
      {
        return .cancelled(reason: reason)
      }
      let payment = try make()
      try db.cachedStatement(
        sql: """
          INSERT INTO payments (id, idempotency_key, order_id, currency_code, minor_units, status,
                                refund_reason, create_time_ns, update_time_ns)
          VALUES (?, ?, ?, ?, ?, ?, '', ?, ?)
          """
      ).execute(
        arguments: [
          payment.id, payment.idempotencyKey, payment.orderID, payment.amount.currencyCode,
          payment.amount.minorUnits, payment.status.rawValue, payment.createTime.nanosSinceEpoch,
          payment.updateTime.nanosSinceEpoch,
        ])
      return .inserted(payment)
    }
  }

  public func refund(id: String, reason: String) async throws -> Shop_V1_Payment? {
    try await database.write { db in
      try Row.fetchOne(
        db.cachedStatement(sql: "SELECT * FROM payments WHERE id = ?"), arguments: [id]
      )
      .map { try Self.refund(Self.payment(from: $0), reason: reason, db) }
    }
  }

  public func cancel(key: String, reason: String) async throws -> Shop_V1_Payment? {
    try await database.write { db in
      try db.cachedStatement(
        sql: """
          INSERT INTO cancelled_charges (idempotency_key, reason, create_time_ns) VALUES (?, ?, ?)
          ON CONFLICT (idempotency_key) DO NOTHING
          """
      ).execute(
        arguments: [key, reason, nowNanos()])
      return try Row.fetchOne(
        db.cachedStatement(sql: "SELECT * FROM payments WHERE idempotency_key = ?"),
        arguments: [key]
      ).map { try Self.refund(Self.payment(from: $0), reason: reason, db) }
    }
  }

  public func payment(id: String) async throws -> Shop_V1_Payment? {
    try await database.read { db in
      try Row.fetchOne(
        db.cachedStatement(sql: "SELECT * FROM payments WHERE id = ?"), arguments: [id]
      )
      .map(Self.payment(from:))
    }
  }

  /// Refunds a charged payment in `db`'s transaction; any other is returned as it is.
  private static func refund(
    _ payment: Shop_V1_Payment, reason: String, _ db: Database
  ) throws -> Shop_V1_Payment {
    guard payment.status == .charged else { return payment }
    let refunded = payment.refunded(reason: reason, at: nowNanos())
    try db.cachedStatement(
      sql: "UPDATE payments SET status = ?, refund_reason = ?, update_time_ns = ? WHERE id = ?"
    ).execute(
      arguments: [
        refunded.status.rawValue, reason, refunded.updateTime.nanosSinceEpoch, payment.id,
      ])
    return refunded
  }

  private static func payment(from row: Row) -> Shop_V1_Payment {
    .with {
      $0.id = row["id"]
      $0.orderID = row["order_id"]
      $0.amount = .with {
        $0.currencyCode = row["currency_code"]
        $0.minorUnits = row["minor_units"]
      }
      $0.status = Shop_V1_PaymentStatus(rawValue: row["status"]) ?? .unspecified
      $0.idempotencyKey = row["idempotency_key"]
      $0.refundReason = row["refund_reason"]
      $0.createTime = Google_Protobuf_Timestamp(nanosSinceEpoch: row["create_time_ns"])
      $0.updateTime = Google_Protobuf_Timestamp(nanosSinceEpoch: row["update_time_ns"])
    }
  }

  static var migrator: DatabaseMigrator {
    var migrator = DatabaseMigrator()
    migrator.registerMigration("v1: payments") { db in
      try db.execute(
        sql: """
          CREATE TABLE payments (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            idempotency_key TEXT NOT NULL UNIQUE,
            order_id TEXT NOT NULL,
            currency_code TEXT NOT NULL,
            minor_units INTEGER NOT NULL,
            status INTEGER NOT NULL,
            refund_reason TEXT NOT NULL,
            create_time_ns INTEGER NOT NULL,
            update_time_ns INTEGER NOT NULL
          )
          """)
    }
    migrator.registerMigration("v2: cancelled charges") { db in
      try db.execute(
        sql: """
          CREATE TABLE cancelled_charges (
            idempotency_key TEXT PRIMARY KEY,
            reason TEXT NOT NULL,
            create_time_ns INTEGER NOT NULL
          )
          """)
    }
    return migrator
  }
}

/// Payments in a PostgreSQL database.
public struct PostgresPaymentRepository: PaymentRepository {
  let database: PostgresShopDatabase

  /// Opens a pool to the database at `location` and applies the migrations not yet applied.
  public init(_ location: PostgresLocation, logger: Logger) async throws {
    database = try await PostgresShopDatabase(
      name: "payments", location: location, migrations: Self.migrations, logger: logger)
  }

  static let migrations = [
    PostgresShopDatabase.Migration(
      "v1: payments",
      [
        """
        CREATE TABLE payments (
          seq BIGSERIAL PRIMARY KEY,
          id TEXT NOT NULL UNIQUE,
          idempotency_key TEXT NOT NULL UNIQUE,
          order_id TEXT NOT NULL,
          currency_code TEXT NOT NULL,
          minor_units BIGINT NOT NULL,
          status INTEGER NOT NULL,
          refund_reason TEXT NOT NULL,
          create_time_ns BIGINT NOT NULL,
          update_time_ns BIGINT NOT NULL
        )
        """
      ]),
    PostgresShopDatabase.Migration(
      "v2: cancelled charges",
      [
        """
        CREATE TABLE cancelled_charges (
          idempotency_key TEXT PRIMARY KEY,
          reason TEXT NOT NULL,
          create_time_ns BIGINT NOT NULL
        )
        """
      ]),
  ]

  static let columns =
    "id, order_id, currency_code, minor_units, status, idempotency_key, refund_reason, "
    + "create_time_ns, update_time_ns"

  public func charge(
    key: String, orInsert make: @escaping @Sendable () throws -> Shop_V1_Payment
  ) async throws -> ChargeOutcome {
    let logger = database.logger
    return try await database.transaction { connection in
      // Operations on one key, on any instance, one at a time until this commits.
      try await connection.query("SELECT pg_advisory_xact_lock(hashtext(\(key)))", logger: logger)
      if let existing = try await Self.payments(
        "SELECT \(unescaped: Self.columns) FROM payments WHERE idempotency_key = \(key)",
        connection, logger
      ).first {
        return .existing(existing)
      }
      let rows = try await connection.query(
        "SELECT reason FROM cancelled_charges WHERE idempotency_key = \(key)", logger: logger)
      for try await reason in rows.decode(String.self) { return .cancelled(reason: reason) }
      let payment = try make()
      try await connection.query(
        """
        INSERT INTO payments (id, idempotency_key, order_id, currency_code, minor_units, status,
                              refund_reason, create_time_ns, update_time_ns)
        VALUES (\(payment.id), \(payment.idempotencyKey), \(payment.orderID), \
        \(payment.amount.currencyCode), \(payment.amount.minorUnits), \
        \(Int32(payment.status.rawValue)), '', \(payment.createTime.nanosSinceEpoch), \
        \(payment.updateTime.nanosSinceEpoch))
        """, logger: logger)
      return .inserted(payment)
    }
  }

  public func refund(id: String, reason: String) async throws -> Shop_V1_Payment? {
    let logger = database.logger
    return try await database.transaction { connection in
      guard
        let payment = try await Self.payments(
          "SELECT \(unescaped: Self.columns) FROM payments WHERE id = \(id) FOR UPDATE",
          connection, logger
        ).first
      else { return nil }
      return try await Self.refund(payment, reason: reason, connection, logger)
    }
  }

  public func cancel(key: String, reason: String) async throws -> Shop_V1_Payment? {
    let logger = database.logger
    return try await database.transaction { connection in
      try await connection.query("SELECT pg_advisory_xact_lock(hashtext(\(key)))", logger: logger)
      try await connection.query(
        """
        INSERT INTO cancelled_charges (idempotency_key, reason, create_time_ns) \
        VALUES (\(key), \(reason), \(nowNanos())) ON CONFLICT (idempotency_key) DO NOTHING
        """, logger: logger)
      guard
        let payment = try await Self.payments(
          "SELECT \(unescaped: Self.columns) FROM payments WHERE idempotency_key = \(key)",
          connection, logger
        ).first
      else { return nil }
      return try await Self.refund(payment, reason: reason, connection, logger)
    }
  }

  public func payment(id: String) async throws -> Shop_V1_Payment? {
    let logger = database.logger
    return try await database.connection { connection in
      try await Self.payments(
        "SELECT \(unescaped: Self.columns) FROM payments WHERE id = \(id)", connection, logger
      ).first
    }
  }

  private static func refund(
    _ payment: Shop_V1_Payment, reason: String, _ connection: PostgresConnection,
    _ logger: Logger
  ) async throws -> Shop_V1_Payment {
    guard payment.status == .charged else { return payment }
    let refunded = payment.refunded(reason: reason, at: nowNanos())
    try await connection.query(
      """
      UPDATE payments SET status = \(Int32(refunded.status.rawValue)), refund_reason = \(reason), \
      update_time_ns = \(refunded.updateTime.nanosSinceEpoch) WHERE id = \(payment.id)
      """, logger: logger)
    return refunded
  }

  private static func payments(
    _ query: PostgresQuery, _ connection: PostgresConnection, _ logger: Logger
  ) async throws -> [Shop_V1_Payment] {
    var payments: [Shop_V1_Payment] = []
    let rows = try await connection.query(query, logger: logger)
    for try await (id, order, currency, minor, status, key, reason, created, updated)
      in rows.decode(
        (String, String, String, Int64, Int32, String, String, Int64, Int64).self)
    {
      payments.append(
        .with {
          $0.id = id
          $0.orderID = order
          $0.amount = .with {
            $0.currencyCode = currency
            $0.minorUnits = minor
          }
          $0.status = Shop_V1_PaymentStatus(rawValue: Int(status)) ?? .unspecified
          $0.idempotencyKey = key
          $0.refundReason = reason
          $0.createTime = Google_Protobuf_Timestamp(nanosSinceEpoch: created)
          $0.updateTime = Google_Protobuf_Timestamp(nanosSinceEpoch: updated)
        })
    }
    return payments
  }
}

extension Shop_V1_Payment {
  /// This payment refunded for `reason` at `nanos`.
  func refunded(reason: String, at nanos: Int64) -> Shop_V1_Payment {
    var refunded = self
    refunded.status = .refunded
    refunded.refundReason = reason
    refunded.updateTime = Google_Protobuf_Timestamp(nanosSinceEpoch: nanos)
    return refunded
  }
}
