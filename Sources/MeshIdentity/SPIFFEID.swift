/// A SPIFFE ID, `spiffe://<trust-domain>/<path>`, validated by the SPIFFE ID specification:
/// lower-case scheme and trust domain of `[a-z0-9.-_]`, path segments of `[A-Za-z0-9.-_]` that
/// are neither empty nor `.` or `..`, no port, user info, query or fragment, at most 2,048 bytes.
public struct SPIFFEID: Hashable, Sendable, CustomStringConvertible {
  /// The trust domain, `trellis.local`.
  public let trustDomain: String
  /// The path with its leading slash (`/svc/users`), or empty for the trust domain's own ID.
  public let path: String

  /// The ID of a workload: `spiffe://<trust-domain>/svc/<service>`.
  public static func workload(
    _ service: String, trustDomain: String = defaultTrustDomain
  ) throws
    -> SPIFFEID
  {
    try checkName(service, kind: "service")
    return try SPIFFEID(parsing: "spiffe://\(trustDomain)/svc/\(service)")
  }

  /// A service or operator name is one path segment: letters, digits, '.', '-' and '_'.
  private static func checkName(_ name: String, kind: String) throws(SPIFFEIDError) {
    let allowed = name.utf8.allSatisfy { byte in
      switch byte {
      case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
        UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "."), UInt8(ascii: "-"),
        UInt8(ascii: "_"):
        true
      default: false
      }
    }
    guard !name.isEmpty, allowed, name != ".", name != ".." else {
      throw SPIFFEIDError(
        name, "is not a \(kind) name: one path segment of letters, digits, '.', '-' and '_'")
    }
  }

  /// The ID of an operator: `spiffe://<trust-domain>/operator/<name>`.
  public static func `operator`(
    _ name: String, trustDomain: String = defaultTrustDomain
  ) throws
    -> SPIFFEID
  {
    try checkName(name, kind: "operator")
    return try SPIFFEID(parsing: "spiffe://\(trustDomain)/operator/\(name)")
  }

  /// The trust domain Trellis uses unless told otherwise.
  public static let defaultTrustDomain = "trellis.local"

  /// Parses and validates an ID; the error says which rule it breaks.
  public init(parsing text: String) throws(SPIFFEIDError) {
    guard text.utf8.count <= 2048 else { throw .init(text, "is longer than 2048 bytes") }
    let scheme = "spiffe://"
    guard text.hasPrefix(scheme) else {
      throw .init(text, "must start with spiffe:// (lower case)")
    }
    let rest = text.dropFirst(scheme.count)
    let slash = rest.firstIndex(of: "/") ?? rest.endIndex
    let domain = rest[..<slash]
    let path = rest[slash...]
    guard !domain.isEmpty else { throw .init(text, "has no trust domain") }
    guard domain.utf8.count <= 255 else { throw .init(text, "has a trust domain over 255 bytes") }
    for byte in domain.utf8 {
      switch byte {
      case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
        UInt8(ascii: "."), UInt8(ascii: "-"), UInt8(ascii: "_"):
        continue
      case UInt8(ascii: "A")...UInt8(ascii: "Z"):
        throw .init(text, "has upper case in its trust domain")
      case UInt8(ascii: ":"):
        throw .init(text, "has a port in its trust domain")
      case UInt8(ascii: "@"):
        throw .init(text, "has user info in its trust domain")
      default:
        throw .init(text, "has a character other than a-z, 0-9, '.', '-', '_' in its trust domain")
      }
    }
    if !path.isEmpty {
      guard path != "/" else { throw .init(text, "has a trailing slash") }
      for segment in path.dropFirst().split(separator: "/", omittingEmptySubsequences: false) {
        guard !segment.isEmpty else {
          throw .init(text, "has an empty path segment or a trailing slash")
        }
        guard segment != ".", segment != ".." else {
          throw .init(text, "has a '.' or '..' path segment")
        }
        for byte in segment.utf8 {
          switch byte {
          case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "."), UInt8(ascii: "-"),
            UInt8(ascii: "_"):
            continue
          case UInt8(ascii: "?"), UInt8(ascii: "#"):
            throw .init(text, "has a query or fragment")
          default:
            throw .init(
              text, "has a character other than A-Z, a-z, 0-9, '.', '-', '_' in its path")
          }
        }
      }
    }
    self.trustDomain = String(domain)
    self.path = String(path)
  }

  /// For `spiffe://<td>/svc/<service>`, the service's name.
  public var serviceName: String? {
    let segments = path.split(separator: "/")
    return segments.count == 2 && segments[0] == "svc" ? String(segments[1]) : nil
  }

  public var description: String { "spiffe://\(trustDomain)\(path)" }
}

/// Text that is not a valid SPIFFE ID, and the rule it breaks.
public struct SPIFFEIDError: Error, CustomStringConvertible, Equatable {
  public let description: String
  init(_ text: String, _ problem: String) {
    description = "\"\(text)\" is not a SPIFFE ID: it \(problem)"
  }
}
