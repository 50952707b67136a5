import Logging
import NIOCore

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

extension HostPort {
  /// Whether nothing listens here: a TCP socket (with `SO_REUSEADDR`, as servers bind) can be
  /// bound to the address. Connections lingering in TIME_WAIT do not make it busy.
  public var isFree: Bool {
    guard port != 0, let address = try? SocketAddress(ipAddress: host, port: port) else {
      return true
    }
    let fd = socket(isIPv6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return true }
    defer { close(fd) }
    var one: Int32 = 1
    _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
    return address.withSockAddr { bind(fd, $0, socklen_t($1)) } == 0 || errno != EADDRINUSE
  }

  /// Waits, checking every millisecond, until nothing listens here, for up to `limit`: how a new
  /// process takes over a port from the one it replaces, the moment that one closes its
  /// listener (calls on the old one's connections finish there). Throws if the port is still
  /// held when `limit` has passed.
  public func waitUntilFree(for limit: Duration, logger: Logger) async throws {
    guard !isFree else { return }
    logger.info("waiting for the listen address to be free", metadata: ["address": "\(self)"])
    let deadline = ContinuousClock.now + limit
    while !isFree {
      guard ContinuousClock.now < deadline else {
        throw PortBusyError(address: self, waited: limit)
      }
      try await Task.sleep(for: .milliseconds(1))
    }
  }
}

/// A listen address still in use when a process had waited its time for it.
public struct PortBusyError: Error, CustomStringConvertible {
  public let address: HostPort
  public let waited: Duration

  public var description: String {
    "cannot listen on \(address): the address is still in use after waiting \(waited)"
  }
}
