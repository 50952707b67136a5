import SwiftASN1
@_spi(FixedExpiryValidationTime) import X509

#if canImport(FoundationEssentials)
  import FoundationEssentials
#else
  import Foundation
#endif

/// The roots a sidecar trusts. It may hold several at once: during a root rotation both the
/// old and the new root verify.
public struct TrustBundle: Sendable, Equatable {
  public var roots: [Certificate]

  public init(roots: [Certificate]) {
    self.roots = roots
  }

  /// Every certificate in a PEM file.
  public init(pem: String) throws {
    let documents = try PEMDocument.parseMultiple(pemString: pem)
    guard !documents.isEmpty else { throw IdentityError("the trust bundle holds no certificate") }
    self.roots = try documents.map { try Certificate(pemDocument: $0) }
  }

  /// The bundle as concatenated PEM certificates.
  public func pemString() throws -> String {
    try roots.map { try $0.serializeAsPEM().pemString }.joined(separator: "\n") + "\n"
  }
}

/// Why a peer's certificate chain is not an acceptable X.509-SVID.
public struct SVIDRejection: Error, CustomStringConvertible, Equatable {
  public enum Reason: String, Sendable {
    case noCertificate = "no_certificate"
    case untrusted = "untrusted_chain"
    case notAnSVID = "not_an_svid"
    case wrongTrustDomain = "wrong_trust_domain"
  }

  public let reason: Reason
  public let detail: String
  public var description: String { detail }

  init(_ reason: Reason, _ detail: String) {
    self.reason = reason
    self.detail = detail
  }
}

/// Validates a peer's certificate chain as an X.509-SVID: the chain to one of the bundle's
/// roots (signatures, validity periods, CA constraints, as RFC 5280), then the SVID rules for
/// the leaf — exactly one URI SAN holding a SPIFFE ID of the expected trust domain, not a CA,
/// no keyCertSign or cRLSign, digitalSignature allowed.
public struct SVIDValidator: Sendable {
  public let bundle: TrustBundle
  public let trustDomain: String

  public init(bundle: TrustBundle, trustDomain: String = SPIFFEID.defaultTrustDomain) {
    self.bundle = bundle
    self.trustDomain = trustDomain
  }

  /// Which end of a TLS handshake a peer's certificate is presented at.
  public enum Role: String, Sendable {
    case client
    case server
  }

  /// The peer's identity, or the reason it is refused. `chain` is leaf first; the peer is the
  /// handshake's `role`, which its certificate's extended key usage must allow.
  public func validate(
    chain: [Certificate], as role: Role, now: Date = Date()
  ) async throws(SVIDRejection)
    -> SPIFFEID
  {
    guard let leaf = chain.first else {
      throw SVIDRejection(.noCertificate, "the peer presented no certificate")
    }
    let identity = try Self.leafIdentity(leaf)
    try Self.checkExtendedKeyUsage(leaf, as: role)
    guard identity.trustDomain == trustDomain else {
      throw SVIDRejection(
        .wrongTrustDomain,
        "\(identity) is in trust domain \(identity.trustDomain), not \(trustDomain)")
    }
    var verifier = Verifier(rootCertificates: CertificateStore(bundle.roots)) {
      RFC5280Policy(fixedExpiryValidationTime: now)
    }
    let result = await verifier.validate(
      leaf: leaf, intermediates: CertificateStore(Array(chain.dropFirst())))
    switch result {
    case .validCertificate:
      return identity
    case .couldNotValidate(let failures):
      let reason = failures.first.map { "\($0.policyFailureReason)" } ?? "no path to a trusted root"
      throw SVIDRejection(.untrusted, "\(identity)'s certificate is not trusted: \(reason)")
    }
  }

  /// RFC 5280 §4.2.1.12: a certificate whose extended key usage is stated may be used only for
  /// what it states (an SVID states both TLS purposes, as the mesh's CA issues them).
  public static func checkExtendedKeyUsage(
    _ leaf: Certificate, as role: Role
  ) throws(SVIDRejection) {
    let usage: ExtendedKeyUsage?
    do {
      usage = try leaf.extensions.extendedKeyUsage
    } catch {
      throw SVIDRejection(.notAnSVID, "the certificate's extended key usage does not parse")
    }
    guard let usage else { return }
    let needed: ExtendedKeyUsage.Usage = role == .client ? .clientAuth : .serverAuth
    guard usage.contains(needed) || usage.contains(.any) else {
      throw SVIDRejection(
        .notAnSVID, "the certificate's extended key usage does not allow a TLS \(role.rawValue)")
    }
  }

  /// The SPIFFE ID of a leaf that follows the X.509-SVID rules.
  public static func leafIdentity(_ leaf: Certificate) throws(SVIDRejection) -> SPIFFEID {
    do {
      if let constraints = try leaf.extensions.basicConstraints,
        case .isCertificateAuthority = constraints
      {
        throw SVIDRejection(.notAnSVID, "the certificate is a CA (cA=true), not a workload's")
      }
      if let usage = try leaf.extensions.keyUsage {
        if usage.keyCertSign || usage.cRLSign {
          throw SVIDRejection(.notAnSVID, "the certificate may sign certificates or CRLs")
        }
        if !usage.digitalSignature {
          throw SVIDRejection(.notAnSVID, "the certificate's key usage lacks digitalSignature")
        }
      }
      let names = try leaf.extensions.subjectAlternativeNames ?? SubjectAlternativeNames([])
      let uris = names.compactMap { name -> String? in
        if case .uniformResourceIdentifier(let uri) = name { return uri }
        return nil
      }
      guard uris.count == 1, let uri = uris.first else {
        throw SVIDRejection(
          .notAnSVID, "the certificate has \(uris.count) URI SANs; an SVID has exactly one")
      }
      do {
        let id = try SPIFFEID(parsing: uri)
        guard !id.path.isEmpty else {
          throw SVIDRejection(.notAnSVID, "\(uri) names a trust domain, not a workload")
        }
        return id
      } catch let error as SPIFFEIDError {
        throw SVIDRejection(.notAnSVID, error.description)
      }
    } catch let rejection as SVIDRejection {
      throw rejection
    } catch {
      throw SVIDRejection(.notAnSVID, "the certificate's extensions do not parse: \(error)")
    }
  }
}
