import ArgumentParser
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import MeshControlClient
import MeshServiceKit
import NIOCore
import NIOPosix

/// How to reach the server: the flags every subcommand shares, named as grpcurl names them.
struct ConnectionOptions: ParsableArguments {
  @Flag(help: "Use plaintext HTTP/2 (h2c) instead of TLS.")
  var plaintext = false

  @Option(help: "PEM file of the CA certificates that verify the server (system roots if absent).")
  var cacert: String?

  @Option(help: "PEM file of the client certificate chain, for mutual TLS.")
  var cert: String?

  @Option(help: "PEM file of the client's private key, for mutual TLS.")
  var key: String?

  @Option(help: "The name the server's certificate must carry (and the TLS SNI).")
  var serverName: String?

  @Option(help: "The :authority pseudo-header to send.")
  var authority: String?

  @Flag(
    help:
      """
      Call a service of the mesh by name (the address argument): its endpoints from the control \
      plane, mutual TLS as the operator.
      """
  )
  var mesh = false

  @Option(
    name: .customLong("control-plane"),
    help:
      """
      With --mesh: the control plane's API, or its replicas' as HOST:PORT,HOST:PORT or a name \
      with an address per replica (the first that answers is used).
      """
  )
  var controlPlane = "127.0.0.1:15000"

  @Option(help: "With --mesh: the folder holding the operator identity and the trust bundle.")
  var certs = "certs"

  @Option(help: "Seconds to wait for the TCP connection.")
  var connectTimeout: Double = 10

  @Option(
    name: [.customShort("H"), .customLong("header")],
    help: "A request header 'name: value'; a '-bin' name takes base64. Repeatable.")
  var headers: [String] = []

  @Option(
    help:
      """
      A FileDescriptorSet (protoc --descriptor_set_out --include_imports) to use instead of server \
      reflection. Repeatable.
      """
  )
  var protoset: [String] = []

  func validate() throws {
    if plaintext, cacert != nil || cert != nil || key != nil {
      throw ValidationError("--plaintext cannot be combined with --cacert, --cert or --key")
    }
    if mesh, plaintext || cacert != nil || cert != nil || key != nil {
      throw ValidationError(
        """
        --mesh uses the operator identity in --certs; it cannot be combined with --plaintext, \
        --cacert, --cert or --key
        """
      )
    }
    if (cert == nil) != (key == nil) {
      throw ValidationError("--cert and --key must be given together")
    }
    if let serverName, let authority, serverName != authority {
      throw ValidationError(
        "--server-name and --authority differ; the TLS name and :authority are one value here")
    }
    guard connectTimeout > 0 else { throw ValidationError("--connect-timeout must be positive") }
  }

  /// The request metadata from the -H flags.
  func metadata() throws -> Metadata {
    var metadata = Metadata()
    for header in headers {
      guard let colon = header.firstIndex(of: ":") else {
        throw CLIFailure.usage("-H \"\(header)\": expected 'name: value'")
      }
      let name = header[..<colon].trimmingCharacters(in: .whitespaces).lowercased()
      let value = header[header.index(after: colon)...].trimmingCharacters(in: .whitespaces)
      guard !name.isEmpty,
        name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) })
      else { throw CLIFailure.usage("-H \"\(header)\": \"\(name)\" is not a valid header name") }
      if name.hasSuffix("-bin") {
        guard let bytes = Data(base64Encoded: value) ?? Data(base64Encoded: Self.padded(value))
        else {
          throw CLIFailure.usage("-H \"\(header)\": a -bin header takes base64")
        }
        metadata.addBinary(Array(bytes), forKey: name)
      } else {
        metadata.addString(value, forKey: name)
      }
    }
    return metadata
  }

  private static func padded(_ text: String) -> String {
    text + String(repeating: "=", count: (4 - text.count % 4) % 4)
  }

  /// Runs `body` with a client connected to `address`. The TCP connection is tried first with
  /// the connect timeout, so an unreachable address is one clear error, not a gRPC status.
  func withClient<Result: Sendable>(
    _ address: String,
    _ body: (GRPCClient<HTTP2ClientTransport.Posix>) async throws -> Result
  ) async throws -> Result {
    let target: HostPort
    var meshAuthority: String?
    var security: HTTP2ClientTransport.Posix.TransportSecurity
    if mesh {
      let resolver = MeshTarget(service: address, controlPlane: controlPlane, certs: certs)
      let resolved = try await resolver.resolve()
      target = resolved.address
      meshAuthority = address
      security = resolver.operatorTLS(expecting: resolved.identity)
    } else {
      do {
        target = try HostPort(parsing: address)
      } catch {
        throw CLIFailure.usage("\(error)")
      }
      security = .plaintext
    }
    try await probe(target)
    if mesh {
      // Resolved above.
    } else if plaintext {
      security = .plaintext
    } else {
      for path in [cacert, cert, key].compactMap({ $0 })
      where !FileManager.default.fileExists(atPath: path) {
        throw CLIFailure.other("cannot read \(path): no such file")
      }
      security = .tls { tls in
        if let cacert { tls.trustRoots = .certificates([.file(path: cacert, format: .pem)]) }
        if let cert, let key {
          tls.certificateChain = [.file(path: cert, format: .pem)]
          tls.privateKey = .file(path: key, format: .pem)
        }
      }
    }
    let resolvable: any ResolvableTarget =
      target.isIPv6
      ? .ipv6(address: target.host, port: target.port)
      : isNumericIPv4(target.host)
        ? .ipv4(address: target.host, port: target.port)
        : .dns(host: target.host, port: target.port)
    let transport: HTTP2ClientTransport.Posix
    do {
      transport = try HTTP2ClientTransport.Posix(
        target: resolvable, transportSecurity: security,
        config: .defaults { config in
          config.http2.authority = authority ?? serverName ?? meshAuthority
        })
    } catch {
      throw CLIFailure.other("cannot set up a connection to \(address): \(error)")
    }
    return try await withCommandClient(transport: transport) { try await body($0) }
  }

  /// Call options: fail at once rather than wait for a connection that is not there.
  func callOptions(timeout: Double?) -> CallOptions {
    var options = CallOptions.defaults
    options.waitForReady = false
    options.maxResponseMessageBytes = 64 * 1024 * 1024
    if let timeout { options.timeout = .milliseconds(Int64(timeout * 1000)) }
    return options
  }

  private func probe(_ target: HostPort) async throws {
    let bootstrap = ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
      .connectTimeout(.milliseconds(Int64(connectTimeout * 1000)))
    do {
      let channel = try await bootstrap.connect(host: target.host, port: target.port).get()
      try? await channel.close()
    } catch let error as ChannelError {
      if case .connectTimeout = error {
        throw CLIFailure.other(
          "cannot connect to \(target): no answer within \(connectTimeout)s (--connect-timeout)")
      }
      throw CLIFailure.other("cannot connect to \(target): \(error)")
    } catch {
      throw CLIFailure.other("cannot connect to \(target): \(Self.describe(error))")
    }
  }

  private static func describe(_ error: any Error) -> String {
    let text = "\(error)"
    if text.contains("Connection refused") || text.contains("ECONNREFUSED") {
      return "connection refused"
    }
    return text
  }

  private func isNumericIPv4(_ host: String) -> Bool {
    let parts = host.split(separator: ".", omittingEmptySubsequences: false)
    return parts.count == 4 && parts.allSatisfy { UInt8($0) != nil }
  }
}
