import GRPCCore
import ShopProtos
import ShopSupport
import Testing
import UserService

/// `UserService` against a real SQLite file and a real PostgreSQL server.
@Suite struct UserServiceTests {
  func users(on backend: Backend) async throws -> UserService {
    try await UserService.open(
      try await database("users", on: backend), logger: TestPostgres.logger)
  }

  @Test(arguments: Backend.allCases) func createsAndGetsAUser(_ backend: Backend) async throws {
    let service = try await users(on: backend)
    let created = try await service.createUser(
      request: .with {
        $0.email = " ada@example.com "
        $0.name = "Ada"
      }, context: context())
    #expect(created.id.hasPrefix("usr_"))
    #expect(created.email == "ada@example.com")
    #expect(created.createTime.seconds > 1_700_000_000)
    let fetched = try await service.getUser(
      request: .with { $0.id = created.id }, context: context())
    #expect(fetched == created)
  }

  @Test(arguments: Backend.allCases) func validatesEmailAndName(_ backend: Backend) async throws {
    let service = try await users(on: backend)
    for email in [
      "", "ada", "ada@", "@example.com", "ada@example", "a da@example.com", "a@b@c.com",
    ] {
      let message = await expectStatus(.invalidArgument) {
        _ = try await service.createUser(
          request: .with {
            $0.email = email
            $0.name = "Ada"
          }, context: context())
      }
      #expect(message.hasPrefix("email: "), "\(email): \(message)")
    }
    let message = await expectStatus(.invalidArgument) {
      _ = try await service.createUser(
        request: .with {
          $0.email = "ada@example.com"
          $0.name = "   "
        }, context: context())
    }
    #expect(message == "name: is required")
  }

  @Test(arguments: Backend.allCases) func duplicateEmailIsAlreadyExistsWhateverTheCase(
    _ backend: Backend
  ) async throws {
    let service = try await users(on: backend)
    _ = try await service.createUser(
      request: .with {
        $0.email = "ada@example.com"
        $0.name = "Ada"
      }, context: context())
    await expectStatus(.alreadyExists) {
      _ = try await service.createUser(
        request: .with {
          $0.email = "ADA@Example.com"
          $0.name = "Other Ada"
        }, context: context())
    }
  }

  @Test(arguments: Backend.allCases) func unknownIDIsNotFound(_ backend: Backend) async throws {
    let service = try await users(on: backend)
    let message = await expectStatus(.notFound) {
      _ = try await service.getUser(request: .with { $0.id = "usr_missing" }, context: context())
    }
    #expect(message == "user usr_missing not found")
    await expectStatus(.invalidArgument) {
      _ = try await service.getUser(request: .with { $0.id = "" }, context: context())
    }
  }

  @Test(arguments: Backend.allCases) func pagesThroughEveryUserOnce(_ backend: Backend) async throws
  {
    let service = try await users(on: backend)
    var created: [String] = []
    for i in 0..<7 {
      created.append(
        try await service.createUser(
          request: .with {
            $0.email = "user\(i)@example.com"
            $0.name = "User \(i)"
          }, context: context()
        ).id)
    }
    var seen: [String] = []
    var token = ""
    var pages = 0
    repeat {
      let page = try await service.listUsers(
        request: .with {
          $0.pageSize = 3
          $0.pageToken = token
        }, context: context())
      #expect(page.users.count <= 3)
      seen += page.users.map(\.id)
      token = page.nextPageToken
      pages += 1
    } while !token.isEmpty
    #expect(seen == created)
    #expect(pages == 3)

    await expectStatus(.invalidArgument) {
      _ = try await service.listUsers(
        request: .with { $0.pageToken = "garbage!" }, context: context())
    }
    await expectStatus(.invalidArgument) {
      _ = try await service.listUsers(request: .with { $0.pageSize = -1 }, context: context())
    }
  }

  @Test(arguments: Backend.allCases) func twoInstancesShareOneDatabase(
    _ backend: Backend
  ) async throws {
    let location = try await database("users", on: backend)
    // Both at once: the migrations run once whichever instance wins.
    async let opening = UserService.open(location, logger: TestPostgres.logger)
    let second = try await UserService.open(location, logger: TestPostgres.logger)
    let first = try await opening
    let user = try await first.createUser(
      request: .with {
        $0.email = "shared@example.com"
        $0.name = "Shared"
      }, context: context())
    #expect(
      try await second.getUser(request: .with { $0.id = user.id }, context: context()) == user)
    await expectStatus(.alreadyExists) {
      _ = try await second.createUser(
        request: .with {
          $0.email = "shared@example.com"
          $0.name = "Again"
        }, context: context())
    }
  }
}
