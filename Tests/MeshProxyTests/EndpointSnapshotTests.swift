import MeshConfig
import NIOCore
import Testing

@testable import MeshProxy

/// What a sidecar reports of the endpoints it calls (for the dashboard): every called
/// service's endpoints with their labels, and an ejected one as ejected, for how long still.
@Suite struct EndpointSnapshotTests {
  @Test func snapshotsAreTheBalancersView() throws {
    var mesh = MeshConfig()
    mesh.services["payments"] = MeshConfig.Service(endpoints: [
      .init(address: try Address(parsing: "10.0.0.2:7002"), labels: ["version": "v1"]),
      .init(address: try Address(parsing: "10.0.0.3:7002")),
    ])
    let routing = MeshRouting(mesh, service: "orders")
    var snapshots = routing.endpointSnapshots()
    #expect(snapshots.map(\.address) == ["10.0.0.2:7002", "10.0.0.3:7002"])
    #expect(snapshots.allSatisfy { $0.service == "payments" && !$0.ejected && $0.inFlight == 0 })
    #expect(snapshots[0].labels == ["version": "v1"])
    let ejected = try #require(routing.endpointReports().first?.endpoints.last)
    ejected.eject(now: .now(), base: .seconds(30))
    snapshots = routing.endpointSnapshots()
    #expect(snapshots[1].ejected && snapshots[1].ejections == 1)
    #expect(snapshots[1].ejectedForSeconds > 25 && snapshots[1].ejectedForSeconds <= 30)
    #expect(!snapshots[0].ejected)
  }
}
