import Crypto
import Foundation
import MeshIdentity
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import SwiftASN1
import Testing
import X509

@testable import MeshTLS

/// The OpenSSL server handler against swift-nio-ssl's client (what sidecars and `meshctl` use),
/// over real sockets on loopback.
@Suite struct TLSServerHandlerTests {
  /// A root, its issuer, and an SVID from it.
  struct Mesh {
    let root: SigningAuthority
    let issuer: SigningAuthority

    init() throws {
      root = try SigningAuthority.makeRoot()
      issuer = try root.makeIssuer()
    }

    func svid(_ identity: String) throws -> (chain: [Certificate], key: P256.Signing.PrivateKey) {
      let key = P256.Signing.PrivateKey()
      let certificate = try issuer.issueSVID(
        for: try SPIFFEID(parsing: identity), publicKey: Certificate.PublicKey(key.publicKey))
      return ([certificate, issuer.certificate], key)
    }

    func serverContext(
      clientCertificate: TLSServerContext.ClientCertificate = .required
    ) throws
      -> TLSServerContext
    {
      let (chain, key) = try svid("spiffe://trellis.local/svc/control-plane")
      return try TLSServerContext(
        certificateChain: try chain.map { try $0.derBytes() },
        privateKey: Array(key.derRepresentation),
        clientCertificate: clientCertificate)
    }

    /// What a sidecar's client would use: its SVID, the mesh's root, ALPN h2.
    func clientConfiguration(
      identity: String? = "spiffe://trellis.local/ns/default/sa/orders", alpn: [String] = ["h2"]
    ) throws -> TLSConfiguration {
      var configuration = TLSConfiguration.makeClientConfiguration()
      configuration.minimumTLSVersion = .tlsv13
      configuration.trustRoots = .certificates([
        try NIOSSLCertificate(bytes: try root.certificate.derBytes(), format: .der)
      ])
      configuration.certificateVerification = .noHostnameVerification
      configuration.applicationProtocols = alpn
      if let identity {
        let (chain, key) = try svid(identity)
        configuration.certificateChain = try chain.map {
          .certificate(try NIOSSLCertificate(bytes: try $0.derBytes(), format: .der))
        }
        configuration.privateKey = .privateKey(
          try NIOSSLPrivateKey(bytes: Array(key.derRepresentation), format: .der))
      }
      return configuration
    }
  }

  /// A server on loopback whose channels echo what they read, recording what they saw.
  final class Server: Sendable {
    let channel: any Channel
    let seen: NIOLockedValueBox<Seen>

    struct Seen {
      var established: [TLSServerHandler.Established] = []
      var errors: [String] = []
      var closed = 0
    }

    init(
      group: any EventLoopGroup, context: TLSServerContext,
      handshakeTimeout: TimeAmount = .seconds(10), check: TLSServerHandler.PeerCheck? = nil
    ) async throws {
      let seen = NIOLockedValueBox(Seen())
      self.seen = seen
      channel = try await ServerBootstrap(group: group)
        .childChannelInitializer { channel in
          channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.addHandlers(
              TLSServerHandler(context: context, handshakeTimeout: handshakeTimeout, check: check),
              Echo(seen: seen))
          }
        }
        .bind(host: "127.0.0.1", port: 0).get()
    }

    var port: Int { channel.localAddress!.port! }
  }

  final class Echo: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let seen: NIOLockedValueBox<Server.Seen>
    init(seen: NIOLockedValueBox<Server.Seen>) { self.seen = seen }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
      context.write(data, promise: nil)
    }
    func channelReadComplete(context: ChannelHandlerContext) { context.flush() }
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
      if let established = event as? TLSServerHandler.Established {
        seen.withLockedValue { $0.established.append(established) }
      }
    }
    func errorCaught(context: ChannelHandlerContext, error: any Error) {
      seen.withLockedValue { $0.errors.append("\(error)") }
    }
    func channelInactive(context: ChannelHandlerContext) {
      seen.withLockedValue { $0.closed += 1 }
    }
  }

  /// A client that collects what it reads until `expected` bytes came, or the channel closed.
  final class Collector: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    var received = ByteBuffer()
    let expected: Int
    let done: EventLoopPromise<ByteBuffer>
    var errors: [String] = []

    init(expected: Int, done: EventLoopPromise<ByteBuffer>) {
      self.expected = expected
      self.done = done
    }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
      var bytes = unwrapInboundIn(data)
      received.writeBuffer(&bytes)
      if received.readableBytes >= expected { done.succeed(received) }
    }
    func errorCaught(context: ChannelHandlerContext, error: any Error) {
      errors.append("\(error)")
    }
    func channelInactive(context: ChannelHandlerContext) {
      done.succeed(received)
    }
  }

  func connect(
    _ group: any EventLoopGroup, port: Int, _ configuration: TLSConfiguration, expecting: Int
  ) async throws -> (any Channel, EventLoopFuture<ByteBuffer>) {
    let loop = group.next()
    let done = loop.makePromise(of: ByteBuffer.self)
    let context = try NIOSSLContext(configuration: configuration)
    let channel = try await ClientBootstrap(group: loop)
      .channelInitializer { channel in
        channel.eventLoop.makeCompletedFuture {
          try channel.pipeline.syncOperations.addHandlers(
            try NIOSSLClientHandler(context: context, serverHostname: nil),
            Collector(expected: expecting, done: done))
        }
      }
      .connect(host: "127.0.0.1", port: port).get()
    return (channel, done.futureResult)
  }

  @Test func echoesOverMutualTLSAndNamesThePeer() async throws {
    let group = MultiThreadedEventLoopGroup.singleton
    let mesh = try Mesh()
    let server = try await Server(group: group, context: try mesh.serverContext())
    // Small writes and one of 1 MiB, so that records span reads both ways.
    var payload = ByteBuffer()
    payload.writeString("hello")
    payload.writeBytes((0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31) })
    payload.writeString("bye")
    let (client, echoed) = try await connect(
      group, port: server.port, try mesh.clientConfiguration(), expecting: payload.readableBytes)
    try await client.writeAndFlush(payload.getSlice(at: 0, length: 5)!).get()
    try await client.writeAndFlush(payload.getSlice(at: 5, length: payload.readableBytes - 5)!)
      .get()
    let received = try await echoed.get()
    #expect(received == payload)

    let established = try #require(server.seen.withLockedValue { $0.established.first })
    #expect(established.alpn == "h2")
    #expect(established.peerCertificates.count == 2)
    let leaf = try Certificate(derEncoded: established.peerCertificates[0])
    #expect(
      try SVIDValidator.leafIdentity(leaf).description
        == "spiffe://trellis.local/ns/default/sa/orders")
    try await client.close()
    try await server.channel.close()
  }

  @Test func aPeerTheCheckRefusesIsClosedBeforeAByteIsRead() async throws {
    let group = MultiThreadedEventLoopGroup.singleton
    let mesh = try Mesh()
    struct Refused: Error, CustomStringConvertible { var description: String { "not in the mesh" } }
    let server = try await Server(group: group, context: try mesh.serverContext()) { _, loop in
      loop.makeFailedFuture(Refused())
    }
    let (client, echoed) = try await connect(
      group, port: server.port, try mesh.clientConfiguration(), expecting: 5)
    client.writeAndFlush(ByteBuffer(string: "hello"), promise: nil)
    let received = try await echoed.get()  // the channel closes with nothing echoed
    #expect(received.readableBytes == 0)
    let seen = server.seen.withLockedValue { $0 }
    #expect(seen.established.isEmpty)
    #expect(seen.errors.contains { $0.contains("peer certificate rejected: not in the mesh") })
    try await server.channel.close()
  }

  @Test func aClientWithoutACertificateIsRefused() async throws {
    let group = MultiThreadedEventLoopGroup.singleton
    let mesh = try Mesh()
    let server = try await Server(group: group, context: try mesh.serverContext())
    let (client, echoed) = try await connect(
      group, port: server.port, try mesh.clientConfiguration(identity: nil), expecting: 5)
    client.writeAndFlush(ByteBuffer(string: "hello"), promise: nil)
    #expect(try await echoed.get().readableBytes == 0)
    try await client.closeFuture.get()
    let seen = server.seen.withLockedValue { $0 }
    #expect(seen.established.isEmpty)
    #expect(seen.errors.contains { $0.contains("TLS handshake failed") })
    try await server.channel.close()
  }

  @Test func withoutClientCertificatesAnyClientIsServed() async throws {
    let group = MultiThreadedEventLoopGroup.singleton
    let mesh = try Mesh()
    let server = try await Server(
      group: group, context: try mesh.serverContext(clientCertificate: .none))
    let (client, echoed) = try await connect(
      group, port: server.port, try mesh.clientConfiguration(identity: nil), expecting: 5)
    try await client.writeAndFlush(ByteBuffer(string: "hello")).get()
    #expect(try await echoed.get() == ByteBuffer(string: "hello"))
    #expect(server.seen.withLockedValue { $0.established.first?.peerCertificates.isEmpty } == true)
    try await client.close()
    try await server.channel.close()
  }

  @Test func aClientOfferingOnlyAnotherProtocolIsRefused() async throws {
    let group = MultiThreadedEventLoopGroup.singleton
    let mesh = try Mesh()
    let server = try await Server(group: group, context: try mesh.serverContext())
    let (client, echoed) = try await connect(
      group, port: server.port, try mesh.clientConfiguration(alpn: ["http/1.1"]), expecting: 5)
    client.writeAndFlush(ByteBuffer(string: "hello"), promise: nil)
    #expect(try await echoed.get().readableBytes == 0)
    #expect(server.seen.withLockedValue { $0.established.isEmpty })
    try await server.channel.close()
  }

  @Test func closeNotifyIsAnsweredAndTheChannelCloses() async throws {
    let group = MultiThreadedEventLoopGroup.singleton
    let mesh = try Mesh()
    let server = try await Server(group: group, context: try mesh.serverContext())
    let (client, echoed) = try await connect(
      group, port: server.port, try mesh.clientConfiguration(), expecting: 2)
    try await client.writeAndFlush(ByteBuffer(string: "hi")).get()
    _ = try await echoed.get()
    // swift-nio-ssl sends close_notify and waits for the answer before it closes the socket.
    try await client.close()
    try await waitUntil { server.seen.withLockedValue { $0.closed } == 1 }
    #expect(server.seen.withLockedValue { $0.errors }.isEmpty)
    try await server.channel.close()
  }

  @Test func aHandshakeNotFinishedInTimeClosesTheConnection() async throws {
    let group = MultiThreadedEventLoopGroup.singleton
    let mesh = try Mesh()
    let server = try await Server(
      group: group, context: try mesh.serverContext(), handshakeTimeout: .milliseconds(200))
    // A peer that connects and says nothing.
    let silent = try await ClientBootstrap(group: group).connect(
      host: "127.0.0.1", port: server.port
    )
    .get()
    try await silent.closeFuture.get()
    #expect(server.seen.withLockedValue { $0.errors } == ["TLS handshake not finished in time"])
    try await server.channel.close()
  }

  @Test func aKeyThatIsNotTheCertificatesIsAConfigurationError() throws {
    let mesh = try Mesh()
    let (chain, _) = try mesh.svid("spiffe://trellis.local/svc/control-plane")
    let other = P256.Signing.PrivateKey()
    #expect {
      try TLSServerContext(
        certificateChain: try chain.map { try $0.derBytes() },
        privateKey: Array(other.derRepresentation))
    } throws: { error in
      "\(error)".contains("the private key does not match the certificate")
    }
    #expect {
      try TLSServerContext(certificateChain: [[0x30, 0x03, 1, 2, 3]], privateKey: [])
    } throws: { error in
      "\(error)".contains("certificate 1 of the chain is not DER X.509")
    }
  }

  func waitUntil(_ condition: () -> Bool) async throws {
    for _ in 0..<500 where !condition() { try await Task.sleep(for: .milliseconds(10)) }
    #expect(condition())
  }
}

extension Certificate {
  func derBytes() throws -> [UInt8] {
    var serializer = DER.Serializer()
    try serializer.serialize(self)
    return serializer.serializedBytes
  }
}
