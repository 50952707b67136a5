import MeshConfig
import MeshProtos
import Testing

@testable import MeshControlClient

/// What a sidecar runs when the control plane pushes registered endpoints: the config's own
/// endpoints and policies, the registrations added, and each method's idempotency as the
/// service's descriptors declare it unless the config says otherwise.
@Suite struct DiscoveryMergeTests {
  func registration(
    _ address: String, methods: [(String, Int32)]
  ) -> Trellis_Mesh_V1_RegisteredEndpoint {
    .with {
      $0.service = "users"
      $0.address = address
      $0.labels = ["version": "v1"]
      $0.methods = methods.map { method in
        .with {
          $0.name = method.0
          $0.idempotencyLevel = method.1
        }
      }
    }
  }

  @Test func registeredMethodsBringTheirIdempotency() throws {
    let config = try MeshConfig(
      yaml: """
        services:
          users:
            methods:
              shop.v1.UserService/DeleteUser: {idempotent: false}
        """)
    let methods: [(String, Int32)] = [
      ("shop.v1.UserService/GetUser", 1), ("shop.v1.UserService/PutUser", 2),
      ("shop.v1.UserService/CreateUser", 0), ("shop.v1.UserService/DeleteUser", 2),
    ]
    let discovery = Trellis_Mesh_V1_Discovery.with {
      $0.generation = 1
      $0.endpoints = [
        registration("127.0.0.1:7001", methods: methods),
        registration("127.0.0.1:7002", methods: methods),
      ]
    }
    let merged = ConfigSubscriber.merge(config, discovery, own: "gateway", logger: nil)
    let users = try #require(merged.services["users"])
    #expect(users.endpoints.map(\.address.description) == ["127.0.0.1:7001", "127.0.0.1:7002"])
    #expect(users.endpoints.allSatisfy { $0.labels == ["version": "v1"] })
    #expect(users.idempotency["shop.v1.UserService/GetUser"] == true)  // NO_SIDE_EFFECTS
    #expect(users.idempotency["shop.v1.UserService/PutUser"] == true)  // IDEMPOTENT
    #expect(users.idempotency["shop.v1.UserService/CreateUser"] == false)  // unknown
    // The config's word wins over the descriptors'.
    #expect(users.idempotency["shop.v1.UserService/DeleteUser"] == false)
  }

  @Test func aServiceKnownOnlyByRegistrationGetsTheDefaults() throws {
    let discovery = Trellis_Mesh_V1_Discovery.with {
      $0.endpoints = [registration("127.0.0.1:7001", methods: [("shop.v1.UserService/GetUser", 1)])]
    }
    let merged = ConfigSubscriber.merge(MeshConfig(), discovery, own: "gateway", logger: nil)
    let users = try #require(merged.services["users"])
    #expect(users.loadBalancing == .p2cEWMA)
    #expect(users.idempotency["shop.v1.UserService/GetUser"] == true)
  }
}

/// A delta applies on the generation it was made from, and on no other.
@Suite struct DiscoveryDeltaTests {
  func endpoint(_ node: String, _ address: String) -> Trellis_Mesh_V1_RegisteredEndpoint {
    .with {
      $0.node = node
      $0.service = "users"
      $0.address = address
    }
  }

  @Test func aDeltaAppliesOnItsBase() throws {
    let running = Trellis_Mesh_V1_Discovery.with {
      $0.generation = 7
      $0.endpoints = [endpoint("a", "10.0.0.1:1"), endpoint("b", "10.0.0.2:1")]
    }
    let delta = Trellis_Mesh_V1_Discovery.with {
      $0.generation = 9
      $0.delta = true
      $0.baseGeneration = 7
      $0.endpoints = [endpoint("a", "10.0.0.9:1"), endpoint("c", "10.0.0.3:1")]
      $0.removed = ["b"]
    }
    let applied = try #require(ConfigSubscriber.discovery(delta, on: running))
    #expect(applied.generation == 9 && !applied.delta)
    #expect(applied.endpoints.map(\.address) == ["10.0.0.9:1", "10.0.0.3:1"])
    var elsewhere = running
    elsewhere.generation = 8
    #expect(ConfigSubscriber.discovery(delta, on: elsewhere) == nil)
    #expect(ConfigSubscriber.discovery(delta, on: nil) == nil)
    // A whole one replaces whatever runs.
    var whole = delta
    whole.delta = false
    #expect(ConfigSubscriber.discovery(whole, on: nil) == whole)
  }
}
