import ArgumentParser
import Crypto
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import MeshIdentity
import MeshProtos
import SwiftASN1
import X509

extension Certs {
  /// `meshctl certs rotate-ca [--root]`: a new issuer (and root) for the whole mesh, one step
  /// at a time, each once every sidecar has done the one before.
  struct RotateCA: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      commandName: "rotate-ca",
      abstract:
        "Replace the mesh's issuer, or with --root its root and issuer, with no failed call.",
      usage: "meshctl certs rotate-ca [<options>]",
      discussion: """
        Three steps, each of which waits until every connected sidecar has done it. First \
        (with --root) the new root is added to every trust bundle. Then the control plane signs \
        with a new issuer, and every sidecar renews from it. Last (with --root) the old root is \
        dropped from every bundle.

        The new issuer's key is made by the control plane and never leaves it; its certificate \
        is signed here with the root's key from --certs. A rotation that stopped (a sidecar \
        that did not follow in time) is taken up again by running the same command.
        """)

    @Flag(help: "Replace the root too (its new key is written to --certs).") var root = false
    @Option(help: "How long each step may wait for the sidecars.") var timeout = "5m"
    @OptionGroup var controlPlane: ControlPlaneOptions

    func run() async throws {
      let files = CAFiles(dir: controlPlane.certs)
      let wait = Int64(try durationOption(timeout, "--timeout"))
      let current: SigningAuthority
      do {
        current = try files.loadRoot()
      } catch {
        throw MeshctlFailure(
          """
          the root and its key are needed to sign the new issuer: \(error) (bring the offline root \
          key back into \(controlPlane.certs)/)
          """
        )
      }
      let trustDomain = try Self.trustDomain(of: current.certificate)
      // With replicas, each step is taken at every one: each signs with an issuer of its own.
      let replicas = try await controlPlane.replicaList()
      if replicas.count > 1 {
        print(
          "\(replicas.count) control plane replicas: \(replicas.map(\.name).joined(separator: ", "))"
        )
      }
      var signer = current
      let steps = root ? 3 : 1
      var number = 1

      if root {
        signer = try nextRoot(files, trustDomain: trustDomain)
        print(
          """
          step \(number)/\(steps): adding the new root (\(signer.certificate.subject)) to every \
          bundle
          """
        )
        let bundle = try await everywhere(.addRoots, [signer.certificate], wait, replicas)
        try write(bundle, to: files.bundle)
        number += 1
      }

      print(
        "step \(number)/\(steps): switching to a new issuer; every sidecar renews from it"
      )
      var issuers: [Certificate] = []
      for replica in replicas.isEmpty ? [nil] : replicas.map(Optional.some) {
        // The control plane makes the key; the root signs its certificate here.
        let csrPEM = try await controlPlane.withAdmin(at: replica) {
          try await $0.prepareIssuer(Trellis_Mesh_V1_PrepareIssuerRequest()).csr
        }
        let issuer = try signer.signIssuer(
          request: try CertificateSigningRequest(pemEncoded: csrPEM), trustDomain: trustDomain)
        print("  \(replica.map { "replica \($0.name): " } ?? "")issuer \(issuer.subject)")
        _ = try await Certs.rotate(
          step: .switchIssuer, certificates: [issuer], service: "", timeout: wait,
          controlPlane: controlPlane, at: replica)
        issuers.append(issuer)
      }
      if replicas.count > 1 {
        // A sidecar that moved between replicas meanwhile may still serve a certificate from
        // an issuer switched since: every replica waits once more until none of its sidecars
        // does.
        print("  every replica: waiting until each sidecar serves a certificate from a new issuer")
        for (replica, issuer) in zip(replicas, issuers) {
          _ = try await Certs.rotate(
            step: .switchIssuer, certificates: [issuer], service: "", timeout: wait,
            controlPlane: controlPlane, at: replica)
        }
      }
      try retire(files.issuer, files.issuerKey, in: files)
      try CertificateFiles.writeCertificates([issuers[0]], to: files.issuer)
      try await renewOperator(files)
      number += 1

      if root {
        print(
          """
          step \(number)/\(steps): dropping the old root (\(current.certificate.subject)) from \
          every bundle
          """
        )
        let bundle = try await everywhere(.keepRoots, [signer.certificate], wait, replicas)
        try retire(files.root, files.rootKey, in: files)
        try CertificateFiles.writePrivateKey(signer.key, to: files.rootKey)
        try CertificateFiles.writeCertificates([signer.certificate], to: files.root)
        try? FileManager.default.removeItem(atPath: nextRootFiles(files).certificate)
        try? FileManager.default.removeItem(atPath: nextRootFiles(files).key)
        try write(bundle, to: files.bundle)
      }
      try await tellDisconnected(replicas)
      print(
        """
        rotated: issuer\(issuers.count > 1 ? "s" : "") \
        \(issuers.map { "\($0.subject)" }.joined(separator: ", "))\
        \(root ? ", root \(signer.certificate.subject)" : "")
        """
      )
      print(
        "the old \(root ? "root and issuer are" : "issuer is") kept in \(controlPlane.certs)/retired/"
      )
    }

    /// A change of the bundle, made at the first replica; every other one waits until it has
    /// taken the generation in from the store, then until its own sidecars run it. Returns
    /// the bundle in force.
    private func everywhere(
      _ step: Trellis_Mesh_V1_RotateRequest.Step, _ certificates: [Certificate], _ wait: Int64,
      _ replicas: [Trellis_Mesh_V1_Replica]
    ) async throws -> String {
      let first = try await Certs.rotate(
        step: step, certificates: certificates, service: "", timeout: wait,
        controlPlane: controlPlane, at: replicas.first)
      for replica in replicas.dropFirst() {
        try await controlPlane.waitForTrust(
          generation: first.generation, at: replica, timeout: wait)
        _ = try await Certs.rotate(
          step: step, certificates: certificates, service: "", timeout: wait,
          controlPlane: controlPlane, at: replica)
      }
      return first.bundle
    }

    /// Names the sidecars connected to no replica: they take the rotation in when they return.
    private func tellDisconnected(_ replicas: [Trellis_Mesh_V1_Replica]) async throws {
      guard replicas.count > 1 else { return }
      let away = try await controlPlane.mergedStatus().status.sidecars.filter { !$0.connected }
      guard !away.isEmpty else { return }
      print(
        "not connected to any replica, will follow when they return: \(away.map(\.node).joined(separator: ", "))"
      )
    }

    private func nextRootFiles(_ files: CAFiles) -> (certificate: String, key: String) {
      ("\(files.dir)/next-root.pem", "\(files.dir)/next-root-key.pem")
    }

    /// The new root: the one a stopped rotation made, or a new one, written before it is used.
    private func nextRoot(_ files: CAFiles, trustDomain: String) throws -> SigningAuthority {
      let next = nextRootFiles(files)
      if FileManager.default.fileExists(atPath: next.key) {
        print("taking up the rotation to the root in \(next.certificate)")
        return SigningAuthority(
          certificate: try CertificateFiles.readCertificates(next.certificate)[0],
          key: try CertificateFiles.readPrivateKey(next.key))
      }
      let root = try SigningAuthority.makeRoot(trustDomain: trustDomain)
      try CertificateFiles.writePrivateKey(root.key, to: next.key)
      try CertificateFiles.writeCertificates([root.certificate], to: next.certificate)
      return root
    }

    /// Moves a certificate and its key (if there) to `retired/`, named by serial.
    private func retire(_ certificate: String, _ key: String, in files: CAFiles) throws {
      let retired = "\(files.dir)/retired"
      try FileManager.default.createDirectory(
        atPath: retired, withIntermediateDirectories: true,
        attributes: [.posixPermissions: 0o700])
      guard let old = try? CertificateFiles.readCertificates(certificate).first else { return }
      let name = URL(fileURLWithPath: certificate).deletingPathExtension().lastPathComponent
      let stem = "\(retired)/\(name)-\(old.serialHex.replacingOccurrences(of: ":", with: ""))"
      try FileManager.default.moveItem(atPath: certificate, toPath: "\(stem).pem")
      if FileManager.default.fileExists(atPath: key) {
        try FileManager.default.moveItem(atPath: key, toPath: "\(stem)-key.pem")
      }
    }

    private func write(_ pem: String, to path: String) throws {
      try CertificateFiles.replace(path, with: Array(pem.utf8))
    }

    /// A new operator certificate from the new issuer, before the old root goes.
    private func renewOperator(_ files: CAFiles) async throws {
      let key = P256.Signing.PrivateKey()
      var request = Trellis_Mesh_V1_CertifyRequest()
      request.csr = try CertificateSigningRequest.workloadPEM(key)
      let old = try CertificateFiles.readCertificates(files.operatorCertificate)[0]
      let life = old.notValidAfter.timeIntervalSince(old.notValidBefore)
      request.lifetimeSeconds = Int64(min(max(life, 3600), 365 * 86_400))
      let response = try await controlPlane.withClient { [request] client in
        try await Trellis_Mesh_V1_Identity.Client(wrapping: client).certify(request)
      }
      try CertificateFiles.writePrivateKey(key, to: files.operatorKey)
      try write(response.certificateChain, to: files.operatorCertificate)
      print("  operator certificate renewed from the new issuer (serial \(response.serial))")
    }

    static func trustDomain(of root: Certificate) throws -> String {
      let names = (try? root.extensions.subjectAlternativeNames) ?? nil
      for case .uniformResourceIdentifier(let uri) in names ?? SubjectAlternativeNames([]) {
        if let id = try? SPIFFEID(parsing: uri) { return id.trustDomain }
      }
      throw MeshctlFailure("the root names no trust domain (spiffe://… URI SAN)")
    }
  }

  /// `meshctl certs rotate --service NAME`: every sidecar of a service renews now.
  struct Rotate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      abstract:
        "Have every sidecar of a service renew its certificate now, and wait until each has.",
      usage: "meshctl certs rotate [<options>] --service <service>"
    )

    @Option(help: "The service whose sidecars renew.") var service: String
    @Option(help: "How long to wait for the sidecars.") var timeout = "5m"
    @OptionGroup var controlPlane: ControlPlaneOptions

    func run() async throws {
      let wait = Int64(try durationOption(timeout, "--timeout"))
      print("asking every sidecar of \(service) to renew its certificate")
      _ = try await Certs.rotate(
        step: .renewService, certificates: [], service: service, timeout: wait,
        controlPlane: controlPlane)
    }
  }

  /// Runs one rotation step at `replica` (or the first control plane that answers), printing
  /// progress; returns the bundle and the trust generation in force at the end.
  @discardableResult
  static func rotate(
    step: Trellis_Mesh_V1_RotateRequest.Step, certificates: [Certificate], service: String,
    timeout: Int64, controlPlane: ControlPlaneOptions, at replica: Trellis_Mesh_V1_Replica? = nil
  ) async throws -> (bundle: String, generation: Int64) {
    var request = Trellis_Mesh_V1_RotateRequest()
    request.step = step
    request.certificates = try certificates.map { try $0.serializeAsPEM().pemString }
      .joined(separator: "\n")
    request.service = service
    request.timeoutSeconds = timeout
    // With replicas, a sidecar not connected to this one is likely connected to another.
    let prefix = replica.map { "  replica \($0.name):" } ?? ""
    return try await controlPlane.withAdmin(at: replica) { [request] admin in
      try await admin.rotate(request) { response in
        var bundle = ""
        var generation: Int64 = 0
        var toldDisconnected = replica != nil
        for try await progress in response.messages {
          bundle = progress.trustBundle
          generation = progress.trustGeneration
          if !progress.disconnected.isEmpty, !toldDisconnected {
            toldDisconnected = true
            print(
              "  not connected, will follow when they return: \(progress.disconnected.joined(separator: ", "))"
            )
          }
          if progress.done {
            print(
              """
              \(prefix.isEmpty ? "" : prefix + " ")done: \(progress.doneCount)/\(progress.total) \
              sidecar(s), trust generation \(progress.trustGeneration)
              """
            )
          } else {
            print(
              "\(prefix)  \(progress.doneCount)/\(progress.total) sidecar(s); waiting for \(progress.waitingFor.joined(separator: ", "))"
            )
          }
        }
        return (bundle, generation)
      }
    }
  }
}
