import MeshConfig
import Synchronization

/// The control plane's replicas as a sidecar reaches them: it talks to one at a time (the
/// config stream, renewals, telemetry and spans all go to the same one) and moves to the next
/// when that one fails. Each sidecar starts at a replica of its own choosing, so a mesh's
/// sidecars spread over the replicas.
public final class ControlPlaneReplicas: Sendable, CustomStringConvertible {
  public let addresses: [Address]
  public let joins: [Address]
  private let chosen: Mutex<Int>

  public init(addresses: [Address], joins: [Address], start: Int? = nil) {
    precondition(!addresses.isEmpty && !joins.isEmpty, "a control plane has an address")
    self.addresses = addresses
    self.joins = joins
    chosen = Mutex((start ?? Int.random(in: 0..<addresses.count)) % addresses.count)
  }

  public convenience init(_ link: SidecarBootstrap.ControlPlaneLink) {
    self.init(addresses: link.addresses, joins: link.joins)
  }

  /// The replica in use.
  public var current: Address { addresses[chosen.withLock { $0 }] }

  /// The replica at `address` failed: the next one is used from now on (unless another part
  /// of the sidecar moved on already). Returns the one in use.
  @discardableResult
  public func failed(_ address: Address) -> Address {
    chosen.withLock { index in
      if addresses[index] == address { index = (index + 1) % addresses.count }
      return addresses[index]
    }
  }

  /// Moves to a replica chosen at random other than the one in use (when the one in use asked
  /// its sidecars to go, to spread them again); returns it.
  @discardableResult
  public func spread() -> Address {
    chosen.withLock { index in
      if addresses.count > 1 {
        index = (index + Int.random(in: 1..<addresses.count)) % addresses.count
      }
      return addresses[index]
    }
  }

  /// Every replica, the one in use first, then the others in their order.
  public var ordered: [Address] { Self.rotated(addresses, chosen.withLock { $0 }) }

  /// Every join listener, from the one of the replica in use on (the lists go together when
  /// they are as long).
  public var orderedJoins: [Address] { Self.rotated(joins, chosen.withLock { $0 }) }

  private static func rotated(_ list: [Address], _ start: Int) -> [Address] {
    let start = start % list.count
    return Array(list[start...] + list[..<start])
  }

  public var description: String { addresses.map(\.description).joined(separator: ",") }
}
