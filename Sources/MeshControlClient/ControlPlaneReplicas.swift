import GRPCNIOTransportHTTP2
import MeshConfig
import MeshServiceKit
import Synchronization

/// The control plane's replicas as a sidecar reaches them: it talks to one at a time (the
/// config stream, renewals, telemetry and spans all go to the same one) and moves to the next
/// when that one fails. Each sidecar starts at a replica of its own choosing, so a mesh's
/// sidecars spread over the replicas.
///
/// A name in the lists stands for every address it resolves to (a DNS name with a record per
/// replica): the names are resolved at start, and again each time every replica has failed in
/// turn, so replicas that came or went since are found.
public final class ControlPlaneReplicas: Sendable, CustomStringConvertible {
  /// The lists as configured: addresses, or names.
  public let configured: (addresses: [Address], joins: [Address])
  private let resolve: @Sendable (String) -> [String]

  private struct State {
    var addresses: [Address]
    var joins: [Address]
    var chosen: Int
  }
  private let state: Mutex<State>

  /// `resolve` gives the addresses of a name (the system's resolver by default).
  public init(
    addresses: [Address], joins: [Address], start: Int? = nil,
    resolve: @escaping @Sendable (String) -> [String] = HostNames.resolve
  ) {
    precondition(!addresses.isEmpty && !joins.isEmpty, "a control plane has an address")
    configured = (addresses, joins)
    self.resolve = resolve
    let expanded = Self.expand(addresses, resolve)
    state = Mutex(
      State(
        addresses: expanded, joins: Self.expand(joins, resolve),
        chosen: (start ?? Int.random(in: 0..<expanded.count)) % expanded.count))
  }

  public convenience init(_ link: SidecarBootstrap.ControlPlaneLink) {
    self.init(addresses: link.addresses, joins: link.joins)
  }

  /// Every address a list stands for; a name that resolves to nothing stays, so that dialling
  /// it names the failure.
  private static func expand(
    _ list: [Address], _ resolve: @Sendable (String) -> [String]
  ) -> [Address] {
    var seen = Set<Address>()
    return list.flatMap { address -> [Address] in
      if HostNames.isLiteral(address.host) { return [address] }
      let hosts = resolve(address.host)
      return hosts.isEmpty ? [address] : hosts.map { Address(host: $0, port: address.port) }
    }.filter { seen.insert($0).inserted }
  }

  /// Every replica's API address, names resolved.
  public var addresses: [Address] { state.withLock { $0.addresses } }

  /// The replica in use.
  public var current: Address { state.withLock { $0.addresses[$0.chosen] } }

  /// The replica at `address` failed: the next one is used from now on (unless another part
  /// of the sidecar moved on already). Once every one has failed in turn, names are resolved
  /// again. Returns the one in use.
  @discardableResult
  public func failed(_ address: Address) -> Address {
    let wrapped = state.withLock { state -> Bool in
      guard state.addresses[state.chosen] == address else { return false }
      state.chosen = (state.chosen + 1) % state.addresses.count
      return state.chosen == 0
    }
    let names = (configured.addresses + configured.joins).contains {
      !HostNames.isLiteral($0.host)
    }
    if wrapped, names {
      // Outside the lock: a resolver may take its time.
      let addresses = Self.expand(configured.addresses, resolve)
      let joins = Self.expand(configured.joins, resolve)
      state.withLock {
        $0.addresses = addresses
        $0.joins = joins
        $0.chosen = 0
      }
    }
    return current
  }

  /// Moves to a replica chosen at random other than the one in use (when the one in use asked
  /// its sidecars to go, to spread them again); returns it.
  @discardableResult
  public func spread() -> Address {
    state.withLock { state in
      if state.addresses.count > 1 {
        state.chosen =
          (state.chosen + Int.random(in: 1..<state.addresses.count)) % state.addresses.count
      }
      return state.addresses[state.chosen]
    }
  }

  /// Every replica, the one in use first, then the others in their order.
  public var ordered: [Address] { state.withLock { Self.rotated($0.addresses, $0.chosen) } }

  /// Every join listener, from the one of the replica in use on (the lists go together when
  /// they are as long).
  public var orderedJoins: [Address] { state.withLock { Self.rotated($0.joins, $0.chosen) } }

  private static func rotated(_ list: [Address], _ start: Int) -> [Address] {
    let start = start % list.count
    return Array(list[start...] + list[..<start])
  }

  public var description: String {
    configured.addresses.map(\.description).joined(separator: ",")
  }
}

extension Address {
  /// How gRPC dials it: an address as itself, a name through DNS.
  var target: any ResolvableTarget { HostNames.target(host: host, port: port) }
}
