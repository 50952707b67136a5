import NIOCore

/// The server side of TLS on a channel, on OpenSSL (`TLSServerContext`): ciphertext below,
/// plaintext above.
///
/// It is made for connections that stay open and mostly idle (a sidecar's config stream): it
/// keeps no buffer of its own between reads and writes. Ciphertext read is handed to OpenSSL
/// and dropped; plaintext read goes up in buffers made for that read; records written go down
/// in a buffer made for that flush. OpenSSL releases its own record buffers when they are
/// empty. An idle connection costs what OpenSSL keeps (its state and the peer's certificate)
/// and this handler's few fields.
///
/// After the handshake the peer's chain (DER, leaf first) goes to `check`; until it accepts,
/// no plaintext is read and none is written (writes wait). Then `Established` is fired as a
/// user event. A rejected chain, a failed handshake or a handshake not finished within
/// `handshakeTimeout` closes the channel after firing the error.
///
/// A peer's close_notify is answered with one, and the channel closed (no half-closed TLS).
/// Closing the channel sends close_notify first.
public final class TLSServerHandler: ChannelDuplexHandler, RemovableChannelHandler {
  public typealias InboundIn = ByteBuffer
  public typealias InboundOut = ByteBuffer
  public typealias OutboundIn = ByteBuffer
  public typealias OutboundOut = ByteBuffer

  /// Fired once the handshake is done and the peer accepted.
  public struct Established: Sendable {
    /// The peer's chain, DER, its own certificate first; empty without a client certificate.
    public let peerCertificates: [[UInt8]]
    /// The ALPN protocol agreed on, if the client offered ALPN.
    public let alpn: String?
  }

  /// Accepts a peer's chain (the future succeeds) or rejects it (it fails, with the reason).
  public typealias PeerCheck =
    @Sendable (_ chain: [[UInt8]], _ eventLoop: any EventLoop) -> EventLoopFuture<Void>

  private enum State {
    case handshaking
    case checking
    case active
    case closed
  }

  private let tls: TLSServerContext
  private let check: PeerCheck?
  private let handshakeTimeout: TimeAmount
  private var state = State.handshaking
  private var ssl: OpaquePointer?
  private let io = RecordIO()
  private var handshakeTimer: Scheduled<Void>?
  /// Writes made before the peer was accepted, and whether a flush was asked for meanwhile.
  private var waitingWrites: [(ByteBuffer, EventLoopPromise<Void>?)] = []
  /// Promises of writes encrypted since the last flush.
  private var encryptedPromises: [EventLoopPromise<Void>] = []

  public init(
    context: TLSServerContext, handshakeTimeout: TimeAmount = .seconds(10),
    check: PeerCheck? = nil
  ) {
    self.tls = context
    self.check = check
    self.handshakeTimeout = handshakeTimeout
  }

  public func handlerAdded(context: ChannelHandlerContext) {
    let lib = tls.library
    guard let ssl = lib.SSL_new(tls.context), let bio = lib.BIO_new(RecordIO.method) else {
      fail(context, .configuration(lib.drainErrors().joined(separator: "; ")))
      return
    }
    lib.BIO_set_data(bio, Unmanaged.passUnretained(io).toOpaque())
    lib.BIO_set_init(bio, 1)
    // One BIO both ways: SSL_set_bio takes the one reference BIO_new gave.
    lib.SSL_set_bio(ssl, bio, bio)
    lib.SSL_set_accept_state(ssl)
    self.ssl = ssl
    if context.channel.isActive { startTimer(context) }
  }

  public func handlerRemoved(context: ChannelHandlerContext) {
    handshakeTimer?.cancel()
    handshakeTimer = nil
    if let ssl { tls.library.SSL_free(ssl) }
    ssl = nil
    io.inbound = nil
    io.outbound = nil
    failWrites(ChannelError.ioOnClosedChannel)
  }

  public func channelActive(context: ChannelHandlerContext) {
    startTimer(context)
    context.fireChannelActive()
  }

  public func channelInactive(context: ChannelHandlerContext) {
    state = .closed
    handshakeTimer?.cancel()
    failWrites(ChannelError.ioOnClosedChannel)
    context.fireChannelInactive()
  }

  public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    var bytes = unwrapInboundIn(data)
    guard state != .closed else { return }
    if io.inbound == nil {
      io.inbound = bytes
    } else {
      io.inbound!.writeBuffer(&bytes)
    }
    advance(context)
  }

  public func channelReadComplete(context: ChannelHandlerContext) {
    if state == .active { context.fireChannelReadComplete() }
  }

  public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?)
  {
    let plaintext = unwrapOutboundIn(data)
    switch state {
    case .handshaking, .checking:
      waitingWrites.append((plaintext, promise))
    case .active:
      encrypt(context, plaintext, promise)
    case .closed:
      promise?.fail(ChannelError.ioOnClosedChannel)
    }
  }

  public func flush(context: ChannelHandlerContext) {
    if state == .active { sendRecords(context) }
  }

  public func close(
    context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?
  ) {
    guard mode == .all, state != .closed, let ssl else {
      context.close(mode: mode, promise: promise)
      return
    }
    if state == .active {
      _ = tls.library.SSL_shutdown(ssl)  // close_notify, into the outbound records
      sendRecords(context)
    }
    state = .closed
    failWrites(ChannelError.ioOnClosedChannel)
    context.close(mode: .all, promise: promise)
  }

  // MARK: - Driving OpenSSL

  private func advance(_ context: ChannelHandlerContext) {
    switch state {
    case .handshaking: handshake(context)
    case .checking, .closed: return  // bytes wait in `io.inbound`, or are dropped
    case .active: readPlaintext(context)
    }
  }

  private func handshake(_ context: ChannelHandlerContext) {
    guard let ssl else { return }
    let lib = tls.library
    lib.ERR_clear_error()
    let result = lib.SSL_do_handshake(ssl)
    guard result == 1 else {
      let error = lib.SSL_get_error(ssl, result)
      if error == OpenSSLConstant.errorWantRead || error == OpenSSLConstant.errorWantWrite {
        sendRecords(context)
        return
      }
      let reasons = lib.drainErrors()
      sendRecords(context)  // the alert, if OpenSSL made one
      fail(
        context,
        .handshake(
          reasons.isEmpty ? "the peer closed or sent garbage" : reasons.joined(separator: "; ")))
      return
    }
    sendRecords(context)
    let chain = peerChain(ssl)
    guard let check else {
      becomeActive(context, chain)
      return
    }
    state = .checking
    let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
    check(chain, context.eventLoop).hop(to: context.eventLoop).whenComplete { result in
      let (handler, context) = bound.value
      guard handler.state == .checking else { return }
      switch result {
      case .success: handler.becomeActive(context, chain)
      case .failure(let error): handler.fail(context, .peerRejected("\(error)"))
      }
    }
  }

  private func becomeActive(_ context: ChannelHandlerContext, _ chain: [[UInt8]]) {
    handshakeTimer?.cancel()
    handshakeTimer = nil
    state = .active
    context.fireUserInboundEventTriggered(Established(peerCertificates: chain, alpn: alpn()))
    let waiting = waitingWrites
    waitingWrites = []
    for (plaintext, promise) in waiting { encrypt(context, plaintext, promise) }
    if !waiting.isEmpty { sendRecords(context) }
    if state == .active { readPlaintext(context) }
    if state == .active { context.fireChannelReadComplete() }
  }

  private func readPlaintext(_ context: ChannelHandlerContext) {
    guard let ssl else { return }
    let lib = tls.library
    // Plaintext is no longer than the ciphertext it came in; a record begun in an earlier
    // read may add up to one record (16 KiB).
    var buffer = context.channel.allocator.buffer(
      capacity: min(max(io.inboundBytes, 512), 16_384 + 256))
    lib.ERR_clear_error()
    while state == .active {
      if buffer.writableBytes == 0 {
        context.fireChannelRead(wrapInboundOut(buffer))
        buffer = context.channel.allocator.buffer(capacity: min(max(io.inboundBytes, 512), 16_384))
      }
      var count = 0
      let result = buffer.withUnsafeMutableWritableBytes { space in
        lib.SSL_read_ex(ssl, space.baseAddress, space.count, &count)
      }
      if result == 1 {
        buffer.moveWriterIndex(forwardBy: count)
        continue
      }
      let error = lib.SSL_get_error(ssl, result)
      if buffer.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(buffer)) }
      buffer = ByteBuffer()
      switch error {
      case OpenSSLConstant.errorWantRead, OpenSSLConstant.errorWantWrite:
        sendRecords(context)  // what OpenSSL answered (a key update), if anything
        io.inbound = nil
        return
      case OpenSSLConstant.errorZeroReturn:
        // The peer's close_notify: answer it and close.
        context.fireChannelReadComplete()
        close(context: context, mode: .all, promise: nil)
        return
      default:
        let reasons = lib.drainErrors()
        fail(
          context,
          .connection(
            reasons.isEmpty
              ? "the connection ended inside a record" : reasons.joined(separator: "; ")))
        return
      }
    }
  }

  private func encrypt(
    _ context: ChannelHandlerContext, _ plaintext: ByteBuffer, _ promise: EventLoopPromise<Void>?
  ) {
    guard let ssl else {
      promise?.fail(ChannelError.ioOnClosedChannel)
      return
    }
    let lib = tls.library
    if plaintext.readableBytes > 0 {
      lib.ERR_clear_error()
      var written = 0
      let result = plaintext.withUnsafeReadableBytes { bytes in
        lib.SSL_write_ex(ssl, bytes.baseAddress, bytes.count, &written)
      }
      guard result == 1, written == plaintext.readableBytes else {
        let reasons = lib.drainErrors()
        promise?.fail(TLSError.connection(reasons.joined(separator: "; ")))
        fail(
          context, .connection(reasons.isEmpty ? "cannot write" : reasons.joined(separator: "; ")))
        return
      }
    }
    if let promise { encryptedPromises.append(promise) }
  }

  /// Writes and flushes the records OpenSSL made since the last time, completing the promises
  /// of the plaintext they carry.
  private func sendRecords(_ context: ChannelHandlerContext) {
    let promises = encryptedPromises
    encryptedPromises = []
    guard let records = io.outbound else {
      for promise in promises { promise.succeed() }
      return
    }
    io.outbound = nil
    if promises.isEmpty {
      context.writeAndFlush(wrapOutboundOut(records), promise: nil)
    } else {
      let written = context.eventLoop.makePromise(of: Void.self)
      written.futureResult.whenComplete { result in
        for promise in promises { promise.completeWith(result) }
      }
      context.writeAndFlush(wrapOutboundOut(records), promise: written)
    }
  }

  private func fail(_ context: ChannelHandlerContext, _ error: TLSError) {
    guard state != .closed else { return }
    state = .closed
    handshakeTimer?.cancel()
    failWrites(error)
    context.fireErrorCaught(error)
    context.close(promise: nil)
  }

  private func failWrites(_ error: any Error) {
    let waiting = waitingWrites
    let encrypted = encryptedPromises
    waitingWrites = []
    encryptedPromises = []
    for (_, promise) in waiting { promise?.fail(error) }
    for promise in encrypted { promise.fail(error) }
  }

  private func startTimer(_ context: ChannelHandlerContext) {
    guard handshakeTimer == nil, state == .handshaking || state == .checking else { return }
    let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
    handshakeTimer = context.eventLoop.scheduleTask(in: handshakeTimeout) {
      let (handler, context) = bound.value
      guard handler.state == .handshaking || handler.state == .checking else { return }
      handler.fail(context, .handshakeTimedOut)
    }
  }

  private func peerChain(_ ssl: OpaquePointer) -> [[UInt8]] {
    let lib = tls.library
    guard let leaf = lib.SSL_get0_peer_certificate(ssl) else { return [] }
    var chain = [lib.der(of: leaf)]
    // On a server the stack holds the certificates the client sent after its own.
    if let stack = lib.SSL_get_peer_cert_chain(ssl) {
      for index in 0..<lib.OPENSSL_sk_num(stack) {
        if let certificate = lib.OPENSSL_sk_value(stack, index) {
          chain.append(lib.der(of: OpaquePointer(certificate)))
        }
      }
    }
    return chain
  }

  private func alpn() -> String? {
    guard let ssl else { return nil }
    var name: UnsafePointer<UInt8>?
    var length: UInt32 = 0
    tls.library.SSL_get0_alpn_selected(ssl, &name, &length)
    guard let name, length > 0 else { return nil }
    return String(decoding: UnsafeBufferPointer(start: name, count: Int(length)), as: UTF8.self)
  }
}

/// What OpenSSL's BIO reads from and writes to: the ciphertext received and not yet taken, and
/// the records made since the last flush. Neither is kept once empty.
final class RecordIO {
  var inbound: ByteBuffer?
  var outbound: ByteBuffer?

  var inboundBytes: Int { inbound?.readableBytes ?? 0 }

  /// The BIO method every connection's BIO uses, made once.
  nonisolated(unsafe) static let method: OpaquePointer? = {
    let lib = OpenSSLLibrary.loaded
    let type = lib.BIO_get_new_index() | OpenSSLConstant.bioTypeSourceSink
    guard let method = lib.BIO_meth_new(type, "trellis records") else { return nil }
    _ = lib.BIO_meth_set_read(method, bioRead)
    _ = lib.BIO_meth_set_write(method, bioWrite)
    _ = lib.BIO_meth_set_ctrl(method, bioControl)
    return method
  }()
}

private func recordIO(_ bio: OpaquePointer?) -> RecordIO? {
  guard let data = OpenSSLLibrary.loaded.BIO_get_data(bio) else { return nil }
  return Unmanaged<RecordIO>.fromOpaque(data).takeUnretainedValue()
}

private let bioRead: @convention(c) (OpaquePointer?, UnsafeMutablePointer<CChar>?, Int32) -> Int32 =
  {
    bio, out, length in
    let lib = OpenSSLLibrary.loaded
    lib.BIO_clear_flags(bio, OpenSSLConstant.bioFlagsRetry)
    guard let io = recordIO(bio), let out, length > 0 else { return -1 }
    guard var inbound = io.inbound, inbound.readableBytes > 0 else {
      lib.BIO_set_flags(bio, OpenSSLConstant.bioFlagsRead | OpenSSLConstant.bioFlagsShouldRetry)
      return -1
    }
    io.inbound = nil  // one reference, so that reading does not copy
    let count = min(Int(length), inbound.readableBytes)
    inbound.withUnsafeReadableBytes { bytes in
      UnsafeMutableRawPointer(out).copyMemory(from: bytes.baseAddress!, byteCount: count)
    }
    inbound.moveReaderIndex(forwardBy: count)
    io.inbound = inbound.readableBytes > 0 ? inbound : nil
    return Int32(count)
  }

private let bioWrite: @convention(c) (OpaquePointer?, UnsafePointer<CChar>?, Int32) -> Int32 = {
  bio, bytes, length in
  OpenSSLLibrary.loaded.BIO_clear_flags(bio, OpenSSLConstant.bioFlagsRetry)
  guard let io = recordIO(bio), let bytes, length >= 0 else { return -1 }
  var outbound = io.outbound ?? ByteBufferAllocator().buffer(capacity: Int(length))
  io.outbound = nil
  outbound.writeBytes(UnsafeRawBufferPointer(start: bytes, count: Int(length)))
  io.outbound = outbound
  return length
}

private let bioControl:
  @convention(c) (OpaquePointer?, Int32, Int, UnsafeMutableRawPointer?) -> Int = {
    _, command, _, _ in
    command == OpenSSLConstant.bioCtrlFlush ? 1 : 0
  }
