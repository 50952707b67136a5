import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import MeshConfig
import MeshControlClient
import MeshIdentity
import MeshProtos
import MeshServiceKit
import NIOCore
import NIOSSL
import X509

/// `--mesh`: a service called by name, as the mesh's operator. Its endpoints come from the
/// control plane's running config; the connection is mutual TLS with the operator identity
/// (`certs/operator.pem`), and the peer must present that service's SPIFFE ID.
struct MeshTarget {
  let service: String
  let controlPlane: String
  let certs: String

  var files: CAFiles { CAFiles(dir: certs) }

  /// An endpoint of the service and the identity it must present.
  func resolve() async throws -> (address: HostPort, identity: String) {
    for path in [files.operatorCertificate, files.operatorKey, files.bundle]
    where !FileManager.default.fileExists(atPath: path) {
      throw CLIFailure.other("cannot read \(path): run meshctl certs init, or pass --certs")
    }
    let planes: [HostPort]
    do {
      planes = try controlPlane.split(separator: ",").flatMap {
        try HostPort(parsing: String($0).filter { $0 != " " }).resolved
      }
    } catch {
      throw CLIFailure.usage("--control-plane: \(error)")
    }
    guard !planes.isEmpty else { throw CLIFailure.usage("--control-plane: no address given") }
    // The running config's endpoints and the registered ones, from the first replica that
    // answers.
    var answer: (Trellis_Mesh_V1_ConfigVersion?, [Trellis_Mesh_V1_RegisteredEndpoint])?
    var failures: [String] = []
    for plane in planes where answer == nil {
      do {
        answer = try await read(plane)
      } catch let error as RPCError {
        failures.append("\(plane): \(error.code.canonicalName): \(error.message)")
        // Another replica may answer; any other failure is the answer.
        guard error.code == .unavailable else { break }
      }
    }
    guard let (stored, registered) = answer else {
      throw CLIFailure.other(
        """
        cannot read the mesh config from the control plane at \(controlPlane): \
        \(failures.joined(separator: "; "))
        """
      )
    }
    var config = MeshConfig()
    if let stored {
      do {
        config = try MeshConfig(yaml: stored.yaml, file: "config version \(stored.version)")
      } catch {
        throw CLIFailure.other("\(error)")
      }
    }
    let candidates =
      (config.services[service]?.endpoints.map { "\($0.address)" } ?? [])
      + registered.filter { $0.service == service }.map(\.address)
    guard let endpoint = candidates.randomElement() else {
      throw CLIFailure.other(
        """
        '\(service)' has no endpoints in the mesh config (version \(stored?.version ?? 0)) and \
        none registered
        """
      )
    }
    let address = try HostPort(parsing: endpoint)
    return (address, "spiffe://\(config.trustDomain)/svc/\(service)")
  }

  /// The running config (nil when none was applied) and the registered endpoints, as the
  /// control plane at `plane` has them.
  private func read(
    _ plane: HostPort
  ) async throws -> (Trellis_Mesh_V1_ConfigVersion?, [Trellis_Mesh_V1_RegisteredEndpoint]) {
    try await withCommandClient(
      transport: try HTTP2ClientTransport.Posix(
        target: plane.target, transportSecurity: operatorTLS())
    ) { client in
      let admin = Trellis_Mesh_V1_Admin.Client(wrapping: client)
      var stored: Trellis_Mesh_V1_ConfigVersion?
      do {
        stored = try await admin.getConfig(Trellis_Mesh_V1_GetConfigRequest())
      } catch let error as RPCError where error.code == .notFound {
        stored = nil  // no config applied yet: registrations only
      }
      let status = try await admin.status(Trellis_Mesh_V1_StatusRequest())
      return (stored, status.discovery.endpoints)
    }
  }

  /// Mutual TLS as the operator, the peer checked against the bundle.
  func operatorTLS(
    expecting identity: String? = nil
  )
    -> HTTP2ClientTransport.Posix
    .TransportSecurity
  {
    let bundle = files.bundle
    return .meshIdentity(
      certificate: files.operatorCertificate, key: files.operatorKey, bundle: bundle
    ) { tls in
      if let identity {
        // Secure naming: the chain must lead to the bundle and name exactly this service.
        let roots = (try? CertificateFiles.readCertificates(bundle)) ?? []
        let trustDomain =
          (try? SPIFFEID(parsing: identity).trustDomain) ?? SPIFFEID.defaultTrustDomain
        let validator = SVIDValidator(bundle: TrustBundle(roots: roots), trustDomain: trustDomain)
        tls.customVerificationCallback = { certificates, promise in
          let chain = certificates.compactMap {
            try? Certificate(derEncoded: try $0.toDERBytes())
          }
          Task {
            let verified = try? await validator.validate(chain: chain, as: .server)
            promise.succeed(
              verified?.description == identity ? .certificateVerified(.init(nil)) : .failed)
          }
        }
      }
    }
  }
}
