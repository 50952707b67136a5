import GRPCNIOTransportHTTP2

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

/// Host names as the mesh's clients dial them: a name may stand for several control plane
/// replicas (several A or AAAA records, as a headless Kubernetes service or `/etc/hosts` has
/// them), so it is resolved into every address it has, each dialled as one.
public enum HostNames {
  /// Whether `host` is an IP address already (IPv4 dotted quad, or IPv6).
  public static func isLiteral(_ host: String) -> Bool {
    var v4 = in_addr()
    var v6 = in6_addr()
    return inet_pton(AF_INET, host, &v4) == 1 || inet_pton(AF_INET6, host, &v6) == 1
  }

  /// Every address `host` resolves to (the system's resolver: `/etc/hosts`, then DNS), in the
  /// order it gives them, IPv4 first; `[host]` for an address; empty when it resolves to
  /// none.
  public static func resolve(_ host: String) -> [String] {
    if isLiteral(host) { return [host] }
    var hints = addrinfo()
    hints.ai_family = AF_UNSPEC
    #if canImport(Darwin)
      hints.ai_socktype = SOCK_STREAM
    #else
      hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
    #endif
    var list: UnsafeMutablePointer<addrinfo>?
    guard getaddrinfo(host, nil, &hints, &list) == 0, let first = list else { return [] }
    defer { freeaddrinfo(first) }
    var v4: [String] = []
    var v6: [String] = []
    var entry: UnsafeMutablePointer<addrinfo>? = first
    while let current = entry {
      var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
      switch current.pointee.ai_family {
      case AF_INET:
        current.pointee.ai_addr.withMemoryRebound(to: sockaddr_in.self, capacity: 1) {
          var address = $0.pointee.sin_addr
          if inet_ntop(AF_INET, &address, &text, socklen_t(text.count)) != nil {
            v4.append(String(cString: text))
          }
        }
      case AF_INET6:
        current.pointee.ai_addr.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) {
          var address = $0.pointee.sin6_addr
          if inet_ntop(AF_INET6, &address, &text, socklen_t(text.count)) != nil {
            v6.append(String(cString: text))
          }
        }
      default: break
      }
      entry = current.pointee.ai_next
    }
    var seen = Set<String>()
    return (v4 + v6).filter { seen.insert($0).inserted }
  }

  /// How gRPC dials `host`: an address as itself (no name to re-resolve), a name through DNS.
  public static func target(host: String, port: Int) -> any ResolvableTarget {
    var v4 = in_addr()
    if inet_pton(AF_INET, host, &v4) == 1 { return .ipv4(address: host, port: port) }
    if host.contains(":") { return .ipv6(address: host, port: port) }
    return .dns(host: host, port: port)
  }
}

extension HostPort {
  /// This address, or every address its name resolves to (itself when it resolves to none,
  /// so that dialling it names the failure).
  public var resolved: [HostPort] {
    let hosts = HostNames.resolve(host)
    return hosts.isEmpty ? [self] : hosts.map { HostPort(host: $0, port: port) }
  }

  /// How gRPC dials it.
  public var target: any ResolvableTarget { HostNames.target(host: host, port: port) }
}
