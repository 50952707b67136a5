import ArgumentParser
import Crypto
import Foundation
import MeshIdentity
import MeshTLS
import NIOCore
import NIOPosix
import NIOSSL
import SwiftASN1
import X509

/// `--tls-memory N`: what one idle mutual-TLS connection costs a server, on swift-nio-ssl and
/// on `MeshTLS` (OpenSSL), in the same run. Each server is a process of its own (this binary,
/// `--tls-server`) that echoes what it reads; the bench opens 100 connections untimed, then N,
/// each sending `--tls-message` bytes and reading them back, and prints the server's RSS
/// growth per connection.
enum TLSMemory {
  /// The server side: listens on loopback, prints its port, echoes; until killed.
  static func serve(_ kind: String, certs: String) async throws -> Never {
    let chain = try PEMDocument.parseMultiple(
      pemString: String(contentsOfFile: "\(certs)/server.pem", encoding: .utf8)
    ).map(\.derBytes)
    let key = try PEMDocument(
      pemString: String(contentsOfFile: "\(certs)/server-key.pem", encoding: .utf8)
    ).derBytes
    let root = try PEMDocument(
      pemString: String(contentsOfFile: "\(certs)/root.pem", encoding: .utf8)
    ).derBytes
    let openSSL =
      kind == "openssl" ? try TLSServerContext(certificateChain: chain, privateKey: key) : nil
    var configuration = TLSConfiguration.makeServerConfiguration(
      certificateChain: try chain.map {
        .certificate(try NIOSSLCertificate(bytes: $0, format: .der))
      },
      privateKey: .privateKey(try NIOSSLPrivateKey(bytes: key, format: .der)))
    configuration.trustRoots = .certificates([try NIOSSLCertificate(bytes: root, format: .der)])
    configuration.certificateVerification = .noHostnameVerification
    configuration.minimumTLSVersion = .tlsv13
    configuration.applicationProtocols = ["h2"]
    let nio = try NIOSSLContext(configuration: configuration)
    let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
      .serverChannelOption(.backlog, value: 4096)
      .childChannelInitializer { channel in
        channel.eventLoop.makeCompletedFuture {
          if let openSSL {
            try channel.pipeline.syncOperations.addHandler(TLSServerHandler(context: openSSL))
          } else {
            try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: nio))
          }
          try channel.pipeline.syncOperations.addHandler(Echo())
        }
      }
      .bind(host: "127.0.0.1", port: 0).get()
    print(server.localAddress!.port!)
    fflush(nil)
    while true { try await Task.sleep(for: .seconds(3600)) }
  }

  final class Echo: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
      context.write(data, promise: nil)
    }
    func channelReadComplete(context: ChannelHandlerContext) { context.flush() }
  }

  /// Reads `expected` bytes back, then succeeds.
  final class Reader: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    var left: Int
    let done: EventLoopPromise<Void>
    init(expected: Int, done: EventLoopPromise<Void>) {
      left = expected
      self.done = done
    }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
      left -= unwrapInboundIn(data).readableBytes
      if left <= 0 { done.succeed() }
    }
    func errorCaught(context: ChannelHandlerContext, error: any Error) { done.fail(error) }
    func channelInactive(context: ChannelHandlerContext) { done.fail(ChannelError.eof) }
  }

  static func run(connections: Int, message: Int) async throws {
    let work = FileManager.default.temporaryDirectory
      .appendingPathComponent("tls-memory-\(UUID().uuidString.prefix(8))").path
    try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: work) }
    let root = try SigningAuthority.makeRoot()
    let issuer = try root.makeIssuer()
    try CertificateFiles.writeCertificates([root.certificate], to: "\(work)/root.pem")
    var client = TLSConfiguration.makeClientConfiguration()
    client.minimumTLSVersion = .tlsv13
    client.certificateVerification = .noHostnameVerification
    client.applicationProtocols = ["h2"]
    client.trustRoots = .file("\(work)/root.pem")
    for (name, identity) in [
      ("server", try SPIFFEID.workload("control-plane")), ("client", try SPIFFEID.workload("sim")),
    ] {
      let key = P256.Signing.PrivateKey()
      let certificate = try issuer.issueSVID(
        for: identity, publicKey: Certificate.PublicKey(key.publicKey))
      try CertificateFiles.writePrivateKey(key, to: "\(work)/\(name)-key.pem")
      try CertificateFiles.writeCertificates(
        [certificate, issuer.certificate], to: "\(work)/\(name).pem")
    }
    client.certificateChain = try NIOSSLCertificate.fromPEMFile("\(work)/client.pem").map {
      .certificate($0)
    }
    client.privateKey = .privateKey(
      try NIOSSLPrivateKey(file: "\(work)/client-key.pem", format: .pem))
    let context = try NIOSSLContext(configuration: client)
    let payload = ByteBuffer(repeating: 0x2A, count: message)

    var perConnection: [String: Double] = [:]
    for kind in ["swift-nio-ssl", "openssl"] {
      let process = Process()
      process.executableURL = URL(fileURLWithPath: CommandLine.arguments[0])
      process.arguments = [
        "--tls-server", kind == "openssl" ? "openssl" : "nio", "--tls-certs", work,
      ]
      let output = Pipe()
      process.standardOutput = output
      try process.run()
      defer {
        process.terminate()
        process.waitUntilExit()
      }
      guard let line = String(data: output.fileHandleForReading.availableData, encoding: .utf8),
        let port = Int(line.trimmingCharacters(in: .whitespacesAndNewlines))
      else { throw ValidationError("the \(kind) server did not start") }
      var open: [any Channel] = []
      func connect(_ count: Int) async throws {
        for _ in 0..<count {
          let loop = MultiThreadedEventLoopGroup.singleton.next()
          let done = loop.makePromise(of: Void.self)
          let channel = try await ClientBootstrap(group: loop)
            .channelInitializer { channel in
              channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandlers(
                  try NIOSSLClientHandler(context: context, serverHostname: nil),
                  Reader(expected: message, done: done))
              }
            }
            .connect(host: "127.0.0.1", port: port).get()
          try await channel.writeAndFlush(payload)
          try await done.futureResult.get()
          open.append(channel)
        }
      }
      try await connect(100)
      try await Task.sleep(for: .milliseconds(500))
      let before = ControlPlaneBench.residentBytes(process.processIdentifier) / 1024
      try await connect(connections)
      try await Task.sleep(for: .seconds(1))
      let after = ControlPlaneBench.residentBytes(process.processIdentifier) / 1024
      let each = Double(after - before) / Double(connections)
      perConnection[kind] = each
      print(
        "\(kind): \(connections) idle connections, each after \(message) bytes echoed: "
          + "\(String(format: "%.1f", each)) KB each (server RSS \(before) → \(after) kB)")
      for channel in open { try? await channel.close() }
    }
    if let nio = perConnection["swift-nio-ssl"], let openSSL = perConnection["openssl"], nio > 0 {
      print(
        "MeshTLS against swift-nio-ssl: \(String(format: "%.2f", openSSL / nio))× memory per connection"
      )
    }
  }
}
