import NIOCore
import NIOHTTP1
import NIOPosix

/// Sends span batches as OTLP/HTTP (`POST /v1/traces`, binary protobuf) to a plaintext
/// endpoint: an app's sidecar's admin port, or any OTLP/HTTP collector on the host.
public struct OTLPHTTPSender: Sendable {
  public let host: String
  public let port: Int
  public let path: String

  /// `http://HOST:PORT[/PATH]`; the path defaults to `/v1/traces`, as OTLP's
  /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` names it.
  public init(url: String) throws {
    guard url.hasPrefix("http://") else {
      throw OTLPEndpointError(
        "\(url): only http:// endpoints are supported (the sidecar's admin port)")
    }
    let rest = url.dropFirst("http://".count)
    let authority = rest.prefix { $0 != "/" }
    let path = rest.dropFirst(authority.count)
    guard let colon = authority.lastIndex(of: ":"),
      let port = Int(authority[authority.index(after: colon)...])
    else { throw OTLPEndpointError("\(url): expected http://HOST:PORT/PATH") }
    var host = authority[..<colon]
    if host.hasPrefix("["), host.hasSuffix("]") { host = host.dropFirst().dropLast() }
    self.host = String(host)
    self.port = port
    self.path = path.isEmpty ? "/v1/traces" : String(path)
  }

  /// Posts one `ExportTraceServiceRequest`'s bytes.
  public func send(_ body: [UInt8]) async throws {
    let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
      .connectTimeout(.seconds(2))
      .connect(host: host, port: port) { channel in
        channel.eventLoop.makeCompletedFuture {
          try channel.pipeline.syncOperations.addHTTPClientHandlers()
          return try NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>(
            wrappingChannelSynchronously: channel)
        }
      }
    try await channel.executeThenClose { inbound, outbound in
      var headers = HTTPHeaders()
      headers.add(name: "host", value: "\(host):\(port)")
      headers.add(name: "content-type", value: "application/x-protobuf")
      headers.add(name: "content-length", value: "\(body.count)")
      headers.add(name: "connection", value: "close")
      try await outbound.write(
        .head(HTTPRequestHead(version: .http1_1, method: .POST, uri: path, headers: headers)))
      try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: body))))
      try await outbound.write(.end(nil))
      for try await part in inbound {
        if case .head(let head) = part {
          guard head.status == .ok else {
            throw OTLPEndpointError("\(host):\(port)\(path) answered \(head.status.code)")
          }
          return
        }
      }
      throw OTLPEndpointError("\(host):\(port)\(path) closed the connection without an answer")
    }
  }
}

public struct OTLPEndpointError: Error, CustomStringConvertible {
  public var description: String
  init(_ description: String) { self.description = description }
}
