import SwiftASN1

/// A server's TLS settings on OpenSSL (an `SSL_CTX`), shared by its connections: TLS 1.3 only,
/// its certificate chain and key, ALPN, and whether a client certificate is asked for.
///
/// What it leaves out is what keeps a connection small while idle: OpenSSL is told to release
/// its record buffers whenever they are empty (`SSL_MODE_RELEASE_BUFFERS`), there is no
/// session cache and no session tickets (mesh connections are long-lived), and the peer's
/// chain is not verified by OpenSSL but handed to the caller's own check (`TLSServerHandler`),
/// which knows the mesh's trust and SPIFFE identities. OpenSSL still checks that the client
/// holds its certificate's key (TLS 1.3's CertificateVerify).
///
/// A new certificate (a renewal or a rotation) takes a new context; connections keep the one
/// they started with.
public final class TLSServerContext: @unchecked Sendable {
  /// Whether clients present a certificate.
  public enum ClientCertificate: Sendable {
    case required
    case none
  }

  let library: OpenSSLLibrary
  let context: OpaquePointer
  public let clientCertificate: ClientCertificate
  /// The ALPN protocols offered, in OpenSSL's wire form after a two-byte length (big-endian);
  /// the ALPN callback reads it.
  private let alpn: UnsafeMutableBufferPointer<UInt8>

  /// - Parameters:
  ///   - certificateChain: DER certificates, the server's own first.
  ///   - privateKey: the DER key of the first certificate (PKCS #8 or SEC 1).
  ///   - alpn: the protocols the server speaks, preferred first; a client that offers ALPN
  ///     without one of them is refused (`no_application_protocol`).
  public init(
    certificateChain: [[UInt8]], privateKey: [UInt8], alpn: [String] = ["h2"],
    clientCertificate: ClientCertificate = .required
  ) throws(TLSError) {
    let library = try OpenSSLLibrary.shared.get()
    guard let method = library.TLS_server_method(), let context = library.SSL_CTX_new(method)
    else {
      throw TLSError.configuration(library.drainErrors().joined(separator: "; "))
    }
    self.library = library
    self.context = context
    self.clientCertificate = clientCertificate
    var wire: [UInt8] = []
    for name in alpn {
      let bytes = Array(name.utf8)
      precondition(!bytes.isEmpty && bytes.count < 256, "an ALPN name is 1 to 255 bytes")
      wire.append(UInt8(bytes.count))
      wire += bytes
    }
    let prefixed = [UInt8(wire.count >> 8), UInt8(wire.count & 0xFF)] + wire
    self.alpn = .allocate(capacity: prefixed.count)
    _ = self.alpn.initialize(from: prefixed)
    try configure(certificateChain: certificateChain, privateKey: privateKey)
  }

  /// The same from PEM: the chain's certificates and the key.
  public convenience init(
    certificateChainPEM: [String], privateKeyPEM: String, alpn: [String] = ["h2"],
    clientCertificate: ClientCertificate = .required
  ) throws(TLSError) {
    let chain: [[UInt8]]
    let key: [UInt8]
    do {
      chain = try certificateChainPEM.flatMap { pem in
        try PEMDocument.parseMultiple(pemString: pem).map(\.derBytes)
      }
      key = try PEMDocument(pemString: privateKeyPEM).derBytes
    } catch {
      throw TLSError.configuration("cannot read PEM: \(error)")
    }
    try self.init(
      certificateChain: chain, privateKey: key, alpn: alpn, clientCertificate: clientCertificate)
  }

  /// Loads the system's OpenSSL 3, or throws why it cannot be.
  public static func loadLibrary() throws(TLSError) {
    _ = try OpenSSLLibrary.shared.get()
  }

  deinit {
    library.SSL_CTX_free(context)
    alpn.deallocate()
  }

  private func configure(certificateChain: [[UInt8]], privateKey: [UInt8]) throws(TLSError) {
    let lib = library
    lib.ERR_clear_error()
    func failure(_ what: String) -> TLSError {
      let reasons = lib.drainErrors()
      return .configuration(reasons.isEmpty ? what : "\(what): \(reasons.joined(separator: "; "))")
    }
    guard
      lib.SSL_CTX_ctrl(context, OpenSSLConstant.ctrlSetMinimumProtocol, OpenSSLConstant.tls13, nil)
        == 1
    else { throw failure("cannot require TLS 1.3") }
    _ = lib.SSL_CTX_ctrl(
      context, OpenSSLConstant.ctrlMode,
      OpenSSLConstant.modeReleaseBuffers | OpenSSLConstant.modeAutoRetry, nil)
    _ = lib.SSL_CTX_ctrl(context, OpenSSLConstant.ctrlSetSessionCacheMode, 0, nil)
    _ = lib.SSL_CTX_set_num_tickets(context, 0)

    guard !certificateChain.isEmpty else { throw TLSError.configuration("no certificate") }
    for (index, der) in certificateChain.enumerated() {
      guard let certificate = Self.x509(der, lib) else {
        throw failure("certificate \(index + 1) of the chain is not DER X.509")
      }
      defer { lib.X509_free(certificate) }
      if index == 0 {
        guard lib.SSL_CTX_use_certificate(context, certificate) == 1 else {
          throw failure("cannot use the certificate")
        }
      } else {
        // SSL_CTX_add1_chain_cert: takes its own reference.
        guard
          lib.SSL_CTX_ctrl(
            context, OpenSSLConstant.ctrlChainCertificate, 1, UnsafeMutableRawPointer(certificate))
            == 1
        else { throw failure("cannot add certificate \(index + 1) to the chain") }
      }
    }
    let key = privateKey.withUnsafeBufferPointer { buffer -> OpaquePointer? in
      var cursor = buffer.baseAddress
      return lib.d2i_AutoPrivateKey(nil, &cursor, buffer.count)
    }
    guard let key else { throw failure("the private key is not DER PKCS #8 or SEC 1") }
    defer { lib.EVP_PKEY_free(key) }
    guard lib.SSL_CTX_use_PrivateKey(context, key) == 1,
      lib.SSL_CTX_check_private_key(context) == 1
    else { throw failure("the private key does not match the certificate") }

    switch clientCertificate {
    case .required:
      lib.SSL_CTX_set_verify(
        context, OpenSSLConstant.verifyPeer | OpenSSLConstant.verifyFailWithoutPeerCertificate,
        acceptAnyChain)
    case .none:
      lib.SSL_CTX_set_verify(context, 0, nil)
    }
    lib.SSL_CTX_set_alpn_select_cb(context, selectALPN, UnsafeMutableRawPointer(alpn.baseAddress))
  }

  static func x509(_ der: [UInt8], _ lib: OpenSSLLibrary) -> OpaquePointer? {
    der.withUnsafeBufferPointer { buffer in
      var cursor = buffer.baseAddress
      return lib.d2i_X509(nil, &cursor, buffer.count)
    }
  }
}

/// OpenSSL's own chain check is bypassed: the handler's check decides, after the handshake,
/// before any application byte is read.
private let acceptAnyChain: @convention(c) (Int32, OpaquePointer?) -> Int32 = { _, _ in 1 }

/// Chooses the server's first protocol the client offers; none in common is fatal.
private let selectALPN:
  @convention(c) (
    OpaquePointer?, UnsafeMutablePointer<UnsafePointer<UInt8>?>?, UnsafeMutablePointer<UInt8>?,
    UnsafePointer<UInt8>?, UInt32, UnsafeMutableRawPointer?
  ) -> Int32 = { _, out, outLength, offered, offeredLength, argument in
    guard let argument else { return OpenSSLConstant.alpnAlertFatal }
    let prefixed = argument.assumingMemoryBound(to: UInt8.self)
    let length = Int(prefixed[0]) << 8 | Int(prefixed[1])
    let server = prefixed + 2
    var chosen: UnsafeMutablePointer<UInt8>?
    let result = OpenSSLLibrary.loaded.SSL_select_next_proto(
      &chosen, outLength, UnsafePointer(server), UInt32(length), offered, offeredLength)
    guard result == OpenSSLConstant.alpnNegotiated, let chosen else {
      return OpenSSLConstant.alpnAlertFatal
    }
    out?.pointee = UnsafePointer(chosen)
    return OpenSSLConstant.alpnOK
  }
