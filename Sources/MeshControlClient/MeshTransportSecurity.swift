import GRPCNIOTransportHTTP2

extension HTTP2ClientTransport.Posix.TransportSecurity {
  /// Mutual TLS with a mesh identity's PEM files, the peer's chain checked against the trust
  /// bundle. Mesh certificates name SPIFFE IDs, not hosts, so no host name is checked;
  /// `configure` may add a check of the peer's identity.
  public static func meshIdentity(
    certificate: String, key: String, bundle: String,
    configure: (inout TLS) -> Void = { _ in }
  ) -> Self {
    .mTLS(
      certificateChain: [.file(path: certificate, format: .pem)],
      privateKey: .file(path: key, format: .pem)
    ) { tls in
      tls.trustRoots = .certificates([.file(path: bundle, format: .pem)])
      tls.serverCertificateVerification = .noHostnameVerification
      configure(&tls)
    }
  }

  /// TLS without a client certificate, the peer checked against the trust bundle: the control
  /// plane's join listener, before a workload has an identity.
  public static func meshJoin(bundle: String) -> Self {
    .tls { tls in
      tls.trustRoots = .certificates([.file(path: bundle, format: .pem)])
      tls.serverCertificateVerification = .noHostnameVerification
    }
  }
}
