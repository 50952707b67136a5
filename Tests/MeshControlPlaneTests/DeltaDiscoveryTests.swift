import Foundation
import MeshProtos
import Testing

@testable import MeshControlPlane

/// Registered endpoints go to a sidecar whole on its stream's first snapshot, then as deltas
/// from what the stream sent last: a change costs the same bytes at 10 endpoints or 2,000.
@Suite struct DeltaDiscoveryTests {
  func register(_ hub: ConfigHub, _ node: String, serving: Bool = true) {
    var registration = Trellis_Mesh_V1_Registration()
    registration.address = "10.0.\(node.count % 250).1:\(1000 + abs(node.hashValue % 60000))"
    registration.serving = serving
    registration.leaseSeconds = 30
    registration.labels = ["version": "v1"]
    _ = hub.register(node: node, service: "users", registration)
  }

  func subscribe(_ hub: ConfigHub, node: String = "client") -> UUID {
    let id = UUID()
    var hello = Trellis_Mesh_V1_SubscribeRequest()
    hello.node = node
    _ = hub.subscribe(
      id: id, node: node, identity: "spiffe://trellis.local/svc/client", hello: hello,
      issued: nil, certificateNotAfter: nil)
    return id
  }

  @Test func theFirstIsWholeThenDeltas() throws {
    let hub = ConfigHub()
    for index in 1...3 { register(hub, "users@n\(index)") }
    let id = subscribe(hub)
    let first = try #require(hub.snapshot(for: id))
    #expect(!first.discovery.delta)
    #expect(first.discovery.endpoints.map(\.node) == ["users@n1", "users@n2", "users@n3"])

    register(hub, "users@n2", serving: false)
    register(hub, "users@n4")
    let second = try #require(hub.snapshot(for: id))
    #expect(second.discovery.delta)
    #expect(second.discovery.baseGeneration == first.discovery.generation)
    #expect(second.discovery.generation == first.discovery.generation + 2)
    #expect(second.discovery.endpoints.map(\.node) == ["users@n4"])
    #expect(second.discovery.removed == ["users@n2"])

    // Nothing changed since: no discovery at all.
    #expect(try #require(hub.snapshot(for: id)).hasDiscovery == false)
    // A renewal that changes nothing is no change.
    register(hub, "users@n1")
    #expect(try #require(hub.snapshot(for: id)).hasDiscovery == false)

    // A sidecar that could not apply a delta gets them all next.
    register(hub, "users@n5")
    _ = hub.snapshot(for: id)
    var resync = Trellis_Mesh_V1_SubscribeRequest()
    resync.node = "client"
    resync.resyncDiscovery = true
    hub.answered(node: "client", resync, snapshotVersion: nil, issued: nil)
    let whole = try #require(hub.snapshot(for: id))
    #expect(!whole.discovery.delta)
    #expect(whole.discovery.endpoints.count == 4)
  }

  @Test func aChangeCostsTheSameAtAnySize() throws {
    func bytesPerChange(endpoints: Int) throws -> Int {
      let hub = ConfigHub()
      for index in 0..<endpoints { register(hub, "users@n\(index)") }
      let id = subscribe(hub)
      _ = hub.snapshot(for: id)
      register(hub, "users@new")
      let delta = try #require(hub.snapshot(for: id))
      #expect(delta.discovery.delta && delta.discovery.endpoints.count == 1)
      let bytes: [UInt8] = try delta.serializedBytes()
      return bytes.count
    }
    let small = try bytesPerChange(endpoints: 10)
    let large = try bytesPerChange(endpoints: 2_000)
    #expect(small == large, "\(small) bytes at 10 endpoints, \(large) at 2,000")
  }

  /// A node's streams are found without walking every stream: a resync reaches only the
  /// asking node's streams, and the node shows disconnected only once its last stream closes.
  @Test func aNodesStreamsAreItsOwn() throws {
    let hub = ConfigHub()
    register(hub, "users@n1")
    let (first, second) = (subscribe(hub), subscribe(hub))
    let other = subscribe(hub, node: "other")
    for id in [first, second, other] { _ = hub.snapshot(for: id) }

    var resync = Trellis_Mesh_V1_SubscribeRequest()
    resync.node = "client"
    resync.resyncDiscovery = true
    hub.answered(node: "client", resync, snapshotVersion: nil, issued: nil)
    for id in [first, second] {
      #expect(try #require(hub.snapshot(for: id)).discovery.endpoints.count == 1)
    }
    #expect(try #require(hub.snapshot(for: other)).hasDiscovery == false)

    func connected(_ node: String) -> Bool? {
      hub.statuses.first { $0.node == node }?.connected
    }
    hub.unsubscribe(id: first)
    #expect(connected("client") == true)
    hub.unsubscribe(id: second)
    #expect(connected("client") == false)
    #expect(connected("other") == true)
    #expect(hub.snapshot(for: second) == nil)
  }

  /// A stream that fell further behind than the hub's record of changes gets them all.
  @Test func aStreamTooFarBehindGetsThemAll() throws {
    let hub = ConfigHub()
    let id = subscribe(hub)
    _ = hub.snapshot(for: id)
    for index in 0...ConfigHub.discoveryChangesKept { register(hub, "users@n\(index)") }
    let snapshot = try #require(hub.snapshot(for: id))
    #expect(!snapshot.discovery.delta)
    #expect(snapshot.discovery.endpoints.count == ConfigHub.discoveryChangesKept + 1)
  }
}
