import MeshConfig
import MeshServiceKit
import Synchronization
import Testing

@testable import MeshControlClient

/// A sidecar's control plane replicas, from its bootstrap file to the one it talks to: it
/// moves to the next when one fails, and to another at random when one sends it away.
@Suite struct ControlPlaneReplicasTests {
  func bootstrap(_ controlPlane: String) throws -> SidecarBootstrap {
    try SidecarBootstrap(
      yaml: """
        service: users
        app: 127.0.0.1:8080
        listen: {inbound: 127.0.0.1:0, outbound: 127.0.0.1:0}
        controlPlane:
        \(controlPlane)
          tokenFile: users.token
          bundle: bundle.pem
        """, file: "users-sidecar.yaml", directory: "/etc/trellis")
  }

  @Test func addressesAreAListOrCommaSeparated() throws {
    let listed = try bootstrap(
      """
        address: [10.0.0.1:15000, 10.0.0.2:15000]
        join: 10.0.0.1:15001, 10.0.0.2:15001
      """)
    let link = try #require(listed.controlPlane)
    #expect(link.addresses.map(\.description) == ["10.0.0.1:15000", "10.0.0.2:15000"])
    #expect(link.joins.map(\.description) == ["10.0.0.1:15001", "10.0.0.2:15001"])
    let one = try bootstrap("  address: 127.0.0.1:15000\n  join: 127.0.0.1:15001")
    #expect(one.controlPlane?.addresses.count == 1)

    #expect {
      try bootstrap("  address: 127.0.0.1:15000,127.0.0.1:15000\n  join: 127.0.0.1:15001")
    } throws: { "\($0)".contains("127.0.0.1:15000 is listed twice") }
    #expect {
      try bootstrap("  address: 127.0.0.1:15000,nowhere\n  join: 127.0.0.1:15001")
    } throws: { "\($0)".contains("controlPlane.address") }
  }

  @Test func theNextReplicaIsUsedWhenOneFails() throws {
    let addresses = try ["a:1", "b:1", "c:1"].map { try Address(parsing: $0) }
    let joins = try ["a:2", "b:2", "c:2"].map { try Address(parsing: $0) }
    let replicas = ControlPlaneReplicas(
      addresses: addresses, joins: joins, start: 1, resolve: { _ in [] })
    #expect(replicas.current.description == "b:1")
    #expect(replicas.ordered.map(\.description) == ["b:1", "c:1", "a:1"])
    #expect(replicas.orderedJoins.map(\.description) == ["b:2", "c:2", "a:2"])
    #expect(replicas.failed(addresses[1]).description == "c:1")
    // A second report of the same failure (another part of the sidecar) moves no further.
    #expect(replicas.failed(addresses[1]).description == "c:1")
    #expect(replicas.failed(addresses[2]).description == "a:1")
    // Sent away, it goes to one of the others.
    for _ in 0..<20 {
      let before = replicas.current
      #expect(replicas.spread() != before)
    }
    let one = ControlPlaneReplicas(
      addresses: [addresses[0]], joins: [joins[0]], resolve: { _ in [] })
    #expect(one.failed(addresses[0]) == addresses[0] && one.spread() == addresses[0])
  }

  @Test func sidecarsStartAtReplicasOfTheirOwnChoosing() throws {
    let addresses = try ["a:1", "b:1", "c:1"].map { try Address(parsing: $0) }
    let chosen = Set(
      (0..<60).map { _ in
        ControlPlaneReplicas(addresses: addresses, joins: addresses, resolve: { _ in [] }).current
      })
    #expect(chosen.count == 3)
  }

  /// A name stands for every address it resolves to; once each has failed in turn, the name
  /// is resolved again and replicas that came since are used.
  @Test func aNameStandsForEveryReplicaItResolvesTo() throws {
    let records = Mutex(["replicas.mesh": ["10.0.0.1", "10.0.0.2"]])
    let replicas = ControlPlaneReplicas(
      addresses: [try Address(parsing: "replicas.mesh:15000")],
      joins: [try Address(parsing: "replicas.mesh:15001")], start: 0,
      resolve: { name in records.withLock { $0[name] ?? [] } })
    #expect(replicas.addresses.map(\.description) == ["10.0.0.1:15000", "10.0.0.2:15000"])
    #expect(replicas.orderedJoins.map(\.description) == ["10.0.0.1:15001", "10.0.0.2:15001"])
    #expect(replicas.description == "replicas.mesh:15000")
    records.withLock { $0["replicas.mesh"] = ["10.0.0.2", "10.0.0.3", "10.0.0.4"] }
    #expect(replicas.failed(replicas.current).description == "10.0.0.2:15000")
    // Both failed: the name is resolved again.
    #expect(replicas.failed(replicas.current).description == "10.0.0.2:15000")
    #expect(
      replicas.addresses.map(\.description)
        == ["10.0.0.2:15000", "10.0.0.3:15000", "10.0.0.4:15000"])
    #expect(replicas.orderedJoins.map(\.description).last == "10.0.0.4:15001")

    // Addresses are kept as they are; a name that resolves to nothing stays a name.
    let mixed = ControlPlaneReplicas(
      addresses: try ["10.0.0.9:1", "gone.mesh:1"].map { try Address(parsing: $0) },
      joins: [try Address(parsing: "10.0.0.9:2")], resolve: { _ in [] })
    #expect(mixed.addresses.map(\.description) == ["10.0.0.9:1", "gone.mesh:1"])
  }

  /// The system's resolver, as the sidecar, `meshctl` and `rpc --mesh` use it.
  @Test func theSystemResolverGivesEveryAddress() {
    #expect(HostNames.resolve("10.1.2.3") == ["10.1.2.3"])
    #expect(HostNames.resolve("::1") == ["::1"])
    #expect(HostNames.resolve("localhost").contains("127.0.0.1"))
    #expect(HostNames.isLiteral("127.0.0.1") && HostNames.isLiteral("fe80::1"))
    #expect(!HostNames.isLiteral("replicas.mesh") && !HostNames.isLiteral("10.1.2"))
  }
}
