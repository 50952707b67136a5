import EventService
import Foundation
import GRPCCore
import LocalPostgres
import Logging
import PostgresNIO
import ShopProtos
import ShopSupport
import TestSupport
import Testing
import UserService

/// The PostgreSQL backend's own rules: where a database is named and how its password is kept,
/// which role may reach which database, and what a call meets while the server is away.
@Suite struct PostgresTests {
  @Test func locationsKeepPasswordsOffTheCommandLine() throws {
    #expect(
      try ShopDatabaseLocation(".trellis/users/users.sqlite")
        == .sqlite(path: ".trellis/users/users.sqlite"))
    let folder = try makeTemporaryDirectory("postgres-location")
    let secret = folder.appendingPathComponent("users.password").path
    _ = FileManager.default.createFile(
      atPath: secret, contents: Data("s3cret\n".utf8), attributes: [.posixPermissions: 0o600])
    let location = try ShopDatabaseLocation(
      "postgres://users@127.0.0.1:6543/users?password_file=\(secret)")
    guard case .postgres(let postgres) = location else {
      Issue.record("\(location) is not PostgreSQL")
      return
    }
    #expect(postgres.host == "127.0.0.1" && postgres.port == 6543)
    #expect(postgres.user == "users" && postgres.database == "users")
    #expect(try postgres.password() == "s3cret")
    #expect(postgres.description == "postgres://users@127.0.0.1:6543/users")

    func refusal(_ text: String) -> String {
      do {
        _ = try ShopDatabaseLocation(text)
        return "accepted"
      } catch {
        return "\(error)"
      }
    }
    #expect(refusal("postgres://users:s3cret@127.0.0.1/users").contains("password_file"))
    #expect(refusal("postgres://127.0.0.1/users").contains("no user"))
    #expect(refusal("postgres://users@127.0.0.1/").contains("no database"))
    #expect(refusal("postgres://users@127.0.0.1/users?sslmode=off").contains("unknown parameter"))

    try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: secret)
    #expect(throws: ShopDatabaseError.self) { try postgres.password() }
  }

  @Test func aServicesRoleReachesOnlyItsOwnDatabase() async throws {
    let cluster = try await offThePool { try TestPostgres.cluster(for: #fileID) }
    let logger = Logger(label: "test")
    let users = try PostgresLocation(
      try await cluster.createServiceDatabase("users_own", logger: logger))
    let orders = try PostgresLocation(
      try await cluster.createServiceDatabase("orders_own", logger: logger))
    // Made once: asking again changes nothing, and the URL names the same password file.
    #expect(
      try PostgresLocation(try await cluster.createServiceDatabase("users_own", logger: logger))
        == users)
    let mode =
      try FileManager.default.attributesOfItem(atPath: users.passwordFile!)[
        .posixPermissions] as? Int
    #expect(mode == 0o600)

    func connect(_ role: PostgresLocation, to database: String) async throws {
      let connection = try await PostgresConnection.connect(
        configuration: .init(
          host: role.host, port: role.port, username: role.user,
          password: try role.password(), database: database, tls: .disable),
        id: 1, logger: logger)
      try await connection.close()
    }
    try await connect(users, to: users.database)
    do {
      try await connect(users, to: orders.database)
      Issue.record("the users role connected to the orders database")
    } catch let error as PSQLError {
      #expect(error.serverInfo?[.sqlState] == "42501", "\(String(reflecting: error))")
    }
  }

  @Test func whileTheServerIsAwayCallsFailFastThenRecover() async throws {
    // A cluster of this test's own: it stops and starts its server.
    let cluster = LocalPostgres(
      directory: "/tmp/trellis-pg-\(UUID().uuidString.prefix(8))",
      port: Int(try freeLoopbackPort())!)
    defer { try? FileManager.default.removeItem(atPath: cluster.directory) }
    var server = try await offThePool {
      try cluster.initialize()
      return try cluster.start()
    }
    defer { server.stop(.immediate) }
    let location = try ShopDatabaseLocation(
      try await cluster.createServiceDatabase("users", logger: Logger(label: "test")))
    let service = try await UserService.open(location, logger: Logger(label: "test"))
    func create(_ name: String) async throws -> Shop_V1_User {
      try await service.createUser(
        request: .with {
          $0.email = "\(name)@example.com"
          $0.name = name
        }, context: context())
    }
    let ada = try await create("ada")

    try await offThePool { [server] in server.stop(.fast) }
    let started = ContinuousClock.now
    let message = await expectStatus(.unavailable) { _ = try await create("grace") }
    #expect(message.contains("users database"), "\(message)")
    // The pool's bound (5 s), not a hang.
    #expect(ContinuousClock.now - started < .seconds(20))

    server = try await offThePool { try cluster.start() }
    let deadline = ContinuousClock.now + .seconds(60)
    var recovered: Shop_V1_User?
    while recovered == nil, ContinuousClock.now < deadline {
      recovered = try? await create("edsger")
      if recovered == nil { try await Task.sleep(for: .milliseconds(200)) }
    }
    #expect(recovered != nil)
    #expect(try await service.getUser(request: .with { $0.id = ada.id }, context: context()) == ada)
  }

  /// Instances of the bus on one PostgreSQL database share its log: a group's consumers on
  /// either instance get every event once between them, and a publication at one instance
  /// wakes a subscriber idling at the other at once (NOTIFY), far within its poll.
  /// Every session tells the server not to keep a lost instance's locks: one idle inside a
  /// transaction ends after 10 s, a silent client is probed after 10 s. (A payments instance
  /// lost with its host mid-charge held the key's lock for TCP's two hours otherwise.)
  @Test func aLostInstanceCannotHoldItsLocks() async throws {
    guard case .postgres(let location) = try await database("settings", on: .postgres) else {
      Issue.record("not PostgreSQL")
      return
    }
    let shop = try await PostgresShopDatabase(
      name: "settings", location: location, migrations: [], logger: TestPostgres.logger)
    let settings = try await shop.connection { connection in
      var values: [String] = []
      for setting in ["idle_in_transaction_session_timeout", "tcp_keepalives_idle"] {
        for try await value in try await connection.query(
          PostgresQuery(unsafeSQL: "SHOW \(setting)"), logger: TestPostgres.logger
        ).decode(String.self) {
          values.append(value)
        }
      }
      return values
    }
    #expect(settings == ["10s", "10"], "\(settings)")
  }

  @Test func busInstancesShareOneLogAndWakeEachOther() async throws {
    let location = try await database("events_shared", on: .postgres)
    let poll = Duration.seconds(60)
    let first = try await EventService.open(
      location, pollInterval: poll, logger: TestPostgres.logger)
    let second = try await EventService.open(
      location, pollInterval: poll, logger: TestPostgres.logger)
    let tests = EventServiceTests()
    var request = Shop_V1_SubscribeRequest()
    request.topic = "user.created"
    request.consumerGroup = "orders"
    let collectors = (0..<4).map { _ in EventServiceTests.Collector() }
    func subscribe(_ index: Int) -> Task<Void, any Error> {
      Task { [request] in
        try await (index % 2 == 0 ? first : second).subscribe(
          request: request, response: RPCWriter(wrapping: collectors[index]), context: context())
      }
    }
    // First only the second instance's subscribers: what wakes them is the first's NOTIFY.
    var subscriptions = [subscribe(1), subscribe(3)]
    defer { for subscription in subscriptions { subscription.cancel() } }
    func delivered() -> [String] { collectors.flatMap { $0.deliveries.map(\.event.id) } }
    // Each has made its first (empty) claim and idles on its minute-long poll.
    try await Task.sleep(for: .seconds(1))

    let published = ContinuousClock.now
    _ = try await first.publish(request: tests.event("e0"), context: context())
    while delivered().isEmpty, ContinuousClock.now - published < .seconds(30) {
      try await Task.sleep(for: .milliseconds(10))
    }
    #expect(delivered() == ["e0"])
    #expect(
      ContinuousClock.now - published < .seconds(30), "no wake-up: only the poll would find it")

    subscriptions += [subscribe(0), subscribe(2)]
    for index in 1..<40 {
      _ = try await (index % 2 == 0 ? first : second).publish(
        request: tests.event("e\(index)"), context: context())
    }
    let deadline = ContinuousClock.now + .seconds(60)
    while delivered().count < 40, ContinuousClock.now < deadline {
      try await Task.sleep(for: .milliseconds(20))
    }
    try await Task.sleep(for: .milliseconds(300))  // a duplicate would be here by now
    let ids = delivered()
    #expect(ids.count == 40 && Set(ids).count == 40, "\(ids.sorted())")
    #expect(collectors.filter { !$0.deliveries.isEmpty }.count >= 2, "one consumer took all")
  }
}
