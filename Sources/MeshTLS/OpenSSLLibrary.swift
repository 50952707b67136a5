#if canImport(Glibc)
  import Glibc
#elseif canImport(Darwin)
  import Darwin
#endif

/// The system's OpenSSL 3 (`libssl.so.3`, which brings `libcrypto.so.3`), loaded when first
/// used. It is loaded rather than linked so that building Trellis needs no OpenSSL headers
/// (a fresh machine has the libraries, which curl and Swift's networking already use, but not
/// the development package); each function is looked up by name and called through the C
/// signature OpenSSL 3 declares for it.
///
/// Only the functions `TLSServerContext` and `TLSServerHandler` call are here. OpenSSL's macros
/// (`SSL_CTX_set_mode` and the like) are written out as the `SSL_CTX_ctrl` calls they stand for.
final class OpenSSLLibrary: @unchecked Sendable {
  typealias Pointer = OpaquePointer

  // SSL_CTX
  let TLS_server_method: @convention(c) () -> Pointer?
  let SSL_CTX_new: @convention(c) (Pointer?) -> Pointer?
  let SSL_CTX_free: @convention(c) (Pointer?) -> Void
  let SSL_CTX_ctrl: @convention(c) (Pointer?, Int32, Int, UnsafeMutableRawPointer?) -> Int
  let SSL_CTX_set_num_tickets: @convention(c) (Pointer?, Int) -> Int32
  let SSL_CTX_set_verify:
    @convention(c) (Pointer?, Int32, (@convention(c) (Int32, Pointer?) -> Int32)?) -> Void
  let SSL_CTX_use_certificate: @convention(c) (Pointer?, Pointer?) -> Int32
  let SSL_CTX_use_PrivateKey: @convention(c) (Pointer?, Pointer?) -> Int32
  let SSL_CTX_check_private_key: @convention(c) (Pointer?) -> Int32
  let SSL_CTX_set_alpn_select_cb:
    @convention(c) (
      Pointer?,
      (
        @convention(c) (
          Pointer?, UnsafeMutablePointer<UnsafePointer<UInt8>?>?, UnsafeMutablePointer<UInt8>?,
          UnsafePointer<UInt8>?, UInt32, UnsafeMutableRawPointer?
        ) -> Int32
      )?,
      UnsafeMutableRawPointer?
    ) -> Void
  let SSL_select_next_proto:
    @convention(c) (
      UnsafeMutablePointer<UnsafeMutablePointer<UInt8>?>?, UnsafeMutablePointer<UInt8>?,
      UnsafePointer<UInt8>?, UInt32, UnsafePointer<UInt8>?, UInt32
    ) -> Int32

  // SSL
  let SSL_new: @convention(c) (Pointer?) -> Pointer?
  let SSL_free: @convention(c) (Pointer?) -> Void
  let SSL_set_accept_state: @convention(c) (Pointer?) -> Void
  let SSL_set_bio: @convention(c) (Pointer?, Pointer?, Pointer?) -> Void
  let SSL_do_handshake: @convention(c) (Pointer?) -> Int32
  let SSL_read_ex:
    @convention(c) (Pointer?, UnsafeMutableRawPointer?, Int, UnsafeMutablePointer<Int>?)
      -> Int32
  let SSL_write_ex:
    @convention(c) (Pointer?, UnsafeRawPointer?, Int, UnsafeMutablePointer<Int>?)
      -> Int32
  let SSL_get_error: @convention(c) (Pointer?, Int32) -> Int32
  let SSL_shutdown: @convention(c) (Pointer?) -> Int32
  let SSL_get0_peer_certificate: @convention(c) (Pointer?) -> Pointer?
  let SSL_get_peer_cert_chain: @convention(c) (Pointer?) -> Pointer?
  let SSL_get0_alpn_selected:
    @convention(c) (
      Pointer?, UnsafeMutablePointer<UnsafePointer<UInt8>?>?, UnsafeMutablePointer<UInt32>?
    )
      -> Void
  let SSL_version: @convention(c) (Pointer?) -> Int32

  // X509, keys, stacks, errors
  let d2i_X509:
    @convention(c) (
      UnsafeMutablePointer<Pointer?>?, UnsafeMutablePointer<UnsafePointer<UInt8>?>?, Int
    )
      -> Pointer?
  let i2d_X509:
    @convention(c) (Pointer?, UnsafeMutablePointer<UnsafeMutablePointer<UInt8>?>?) -> Int32
  let X509_free: @convention(c) (Pointer?) -> Void
  let d2i_AutoPrivateKey:
    @convention(c) (
      UnsafeMutablePointer<Pointer?>?, UnsafeMutablePointer<UnsafePointer<UInt8>?>?, Int
    )
      -> Pointer?
  let EVP_PKEY_free: @convention(c) (Pointer?) -> Void
  let OPENSSL_sk_num: @convention(c) (Pointer?) -> Int32
  let OPENSSL_sk_value: @convention(c) (Pointer?, Int32) -> UnsafeMutableRawPointer?
  let ERR_get_error: @convention(c) () -> UInt
  let ERR_error_string_n: @convention(c) (UInt, UnsafeMutablePointer<CChar>?, Int) -> Void
  let ERR_clear_error: @convention(c) () -> Void

  // BIO
  let BIO_get_new_index: @convention(c) () -> Int32
  let BIO_meth_new: @convention(c) (Int32, UnsafePointer<CChar>?) -> Pointer?
  let BIO_meth_set_write:
    @convention(c) (Pointer?, (@convention(c) (Pointer?, UnsafePointer<CChar>?, Int32) -> Int32)?)
      -> Int32
  let BIO_meth_set_read:
    @convention(c) (
      Pointer?, (@convention(c) (Pointer?, UnsafeMutablePointer<CChar>?, Int32) -> Int32)?
    )
      -> Int32
  let BIO_meth_set_ctrl:
    @convention(c) (
      Pointer?, (@convention(c) (Pointer?, Int32, Int, UnsafeMutableRawPointer?) -> Int)?
    )
      -> Int32
  let BIO_meth_set_create: @convention(c) (Pointer?, (@convention(c) (Pointer?) -> Int32)?) -> Int32
  let BIO_new: @convention(c) (Pointer?) -> Pointer?
  let BIO_up_ref: @convention(c) (Pointer?) -> Int32
  let BIO_set_data: @convention(c) (Pointer?, UnsafeMutableRawPointer?) -> Void
  let BIO_get_data: @convention(c) (Pointer?) -> UnsafeMutableRawPointer?
  let BIO_set_init: @convention(c) (Pointer?, Int32) -> Void
  let BIO_set_flags: @convention(c) (Pointer?, Int32) -> Void
  let BIO_clear_flags: @convention(c) (Pointer?, Int32) -> Void

  /// The library, or why it could not be loaded.
  static let shared: Result<OpenSSLLibrary, TLSError> = Result { () throws(TLSError) in
    try OpenSSLLibrary()
  }

  /// The library, once something has loaded it: what OpenSSL's callbacks use.
  static var loaded: OpenSSLLibrary {
    guard case .success(let library) = shared else {
      preconditionFailure("an OpenSSL callback ran without OpenSSL loaded")
    }
    return library
  }

  private init() throws(TLSError) {
    guard let handle = dlopen("libssl.so.3", RTLD_NOW | RTLD_LOCAL) else {
      let reason = dlerror().map { String(cString: $0) } ?? "not found"
      throw TLSError.libraryUnavailable("cannot load OpenSSL 3 (libssl.so.3): \(reason)")
    }
    func load<T>(_ name: String) throws(TLSError) -> T {
      guard let symbol = dlsym(handle, name) else {
        throw TLSError.libraryUnavailable("OpenSSL 3 (libssl.so.3) has no \(name)")
      }
      return unsafeBitCast(symbol, to: T.self)
    }
    TLS_server_method = try load("TLS_server_method")
    SSL_CTX_new = try load("SSL_CTX_new")
    SSL_CTX_free = try load("SSL_CTX_free")
    SSL_CTX_ctrl = try load("SSL_CTX_ctrl")
    SSL_CTX_set_num_tickets = try load("SSL_CTX_set_num_tickets")
    SSL_CTX_set_verify = try load("SSL_CTX_set_verify")
    SSL_CTX_use_certificate = try load("SSL_CTX_use_certificate")
    SSL_CTX_use_PrivateKey = try load("SSL_CTX_use_PrivateKey")
    SSL_CTX_check_private_key = try load("SSL_CTX_check_private_key")
    SSL_CTX_set_alpn_select_cb = try load("SSL_CTX_set_alpn_select_cb")
    SSL_select_next_proto = try load("SSL_select_next_proto")
    SSL_new = try load("SSL_new")
    SSL_free = try load("SSL_free")
    SSL_set_accept_state = try load("SSL_set_accept_state")
    SSL_set_bio = try load("SSL_set_bio")
    SSL_do_handshake = try load("SSL_do_handshake")
    SSL_read_ex = try load("SSL_read_ex")
    SSL_write_ex = try load("SSL_write_ex")
    SSL_get_error = try load("SSL_get_error")
    SSL_shutdown = try load("SSL_shutdown")
    SSL_get0_peer_certificate = try load("SSL_get0_peer_certificate")
    SSL_get_peer_cert_chain = try load("SSL_get_peer_cert_chain")
    SSL_get0_alpn_selected = try load("SSL_get0_alpn_selected")
    SSL_version = try load("SSL_version")
    d2i_X509 = try load("d2i_X509")
    i2d_X509 = try load("i2d_X509")
    X509_free = try load("X509_free")
    d2i_AutoPrivateKey = try load("d2i_AutoPrivateKey")
    EVP_PKEY_free = try load("EVP_PKEY_free")
    OPENSSL_sk_num = try load("OPENSSL_sk_num")
    OPENSSL_sk_value = try load("OPENSSL_sk_value")
    ERR_get_error = try load("ERR_get_error")
    ERR_error_string_n = try load("ERR_error_string_n")
    ERR_clear_error = try load("ERR_clear_error")
    BIO_get_new_index = try load("BIO_get_new_index")
    BIO_meth_new = try load("BIO_meth_new")
    BIO_meth_set_write = try load("BIO_meth_set_write")
    BIO_meth_set_read = try load("BIO_meth_set_read")
    BIO_meth_set_ctrl = try load("BIO_meth_set_ctrl")
    BIO_meth_set_create = try load("BIO_meth_set_create")
    BIO_new = try load("BIO_new")
    BIO_up_ref = try load("BIO_up_ref")
    BIO_set_data = try load("BIO_set_data")
    BIO_get_data = try load("BIO_get_data")
    BIO_set_init = try load("BIO_set_init")
    BIO_set_flags = try load("BIO_set_flags")
    BIO_clear_flags = try load("BIO_clear_flags")
  }

  /// OpenSSL's queue of errors on this thread, oldest first, emptied.
  func drainErrors() -> [String] {
    var errors: [String] = []
    while true {
      let code = ERR_get_error()
      guard code != 0 else { return errors }
      var text = [CChar](repeating: 0, count: 256)
      ERR_error_string_n(code, &text, text.count)
      errors.append(
        String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
    }
  }

  /// The DER bytes of an `X509`.
  func der(of certificate: Pointer) -> [UInt8] {
    let length = i2d_X509(certificate, nil)
    guard length > 0 else { return [] }
    var bytes = [UInt8](repeating: 0, count: Int(length))
    bytes.withUnsafeMutableBufferPointer { buffer in
      var cursor: UnsafeMutablePointer<UInt8>? = buffer.baseAddress
      _ = i2d_X509(certificate, &cursor)
    }
    return bytes
  }
}

/// OpenSSL's numbers that the calls above take (OpenSSL 3's `ssl.h`, `bio.h`, `x509_vfy.h`).
enum OpenSSLConstant {
  static let ctrlMode: Int32 = 33  // SSL_CTRL_MODE
  static let ctrlSetSessionCacheMode: Int32 = 44  // SSL_CTRL_SET_SESS_CACHE_MODE
  static let ctrlChainCertificate: Int32 = 89  // SSL_CTRL_CHAIN_CERT
  static let ctrlSetMinimumProtocol: Int32 = 123  // SSL_CTRL_SET_MIN_PROTO_VERSION
  static let modeReleaseBuffers = 0x10  // SSL_MODE_RELEASE_BUFFERS
  static let modeAutoRetry = 0x04  // SSL_MODE_AUTO_RETRY
  static let tls13 = 0x0304  // TLS1_3_VERSION
  static let verifyPeer: Int32 = 0x01  // SSL_VERIFY_PEER
  static let verifyFailWithoutPeerCertificate: Int32 = 0x02  // SSL_VERIFY_FAIL_IF_NO_PEER_CERT
  static let errorWantRead: Int32 = 2  // SSL_ERROR_WANT_READ
  static let errorWantWrite: Int32 = 3  // SSL_ERROR_WANT_WRITE
  static let errorSyscall: Int32 = 5  // SSL_ERROR_SYSCALL
  static let errorZeroReturn: Int32 = 6  // SSL_ERROR_ZERO_RETURN
  static let alpnOK: Int32 = 0  // SSL_TLSEXT_ERR_OK
  static let alpnAlertFatal: Int32 = 2  // SSL_TLSEXT_ERR_ALERT_FATAL
  static let alpnNegotiated: Int32 = 1  // OPENSSL_NPN_NEGOTIATED
  static let bioTypeSourceSink: Int32 = 0x0400  // BIO_TYPE_SOURCE_SINK
  static let bioFlagsRead: Int32 = 0x01  // BIO_FLAGS_READ
  static let bioFlagsShouldRetry: Int32 = 0x08  // BIO_FLAGS_SHOULD_RETRY
  static let bioFlagsRetry: Int32 = 0x0F  // BIO_FLAGS_RWS | BIO_FLAGS_SHOULD_RETRY
  static let bioCtrlFlush: Int32 = 11  // BIO_CTRL_FLUSH
}
