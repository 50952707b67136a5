import ArgumentParser
import Foundation
import MeshIdentity
import X509

extension Certs {
  /// `meshctl certs inspect FILE`: what a certificate says, and how long it has left.
  struct Inspect: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Show a certificate's SPIFFE ID, serial, issuer, validity and remaining life.")

    @Argument(help: "A PEM file; every certificate in it is shown.") var file: String
    @Option(name: .shortAndLong, help: "Output format: table, json or yaml.")
    var output: OutputFormat = .table

    func run() async throws {
      let certificates: [Certificate]
      do {
        certificates = try CertificateFiles.readCertificates(file)
      } catch let error as IdentityError {
        throw MeshctlFailure(error.description)
      }
      let now = Date()
      let rows = certificates.map { certificate -> [(String, String)] in
        let identity: String
        do {
          identity = try SVIDValidator.leafIdentity(certificate).description
        } catch {
          let uris =
            (try? certificate.extensions.subjectAlternativeNames)??.compactMap {
              name -> String? in
              if case .uniformResourceIdentifier(let uri) = name { return uri }
              return nil
            } ?? []
          identity = uris.first.map { "\($0) (CA)" } ?? "none (\(error))"
        }
        let remaining = certificate.notValidAfter.timeIntervalSince(now)
        return [
          ("spiffe_id", identity),
          ("serial", certificate.serialHex),
          ("subject", "\(certificate.subject)"),
          ("issuer", "\(certificate.issuer)"),
          ("not_before", Self.format(certificate.notValidBefore)),
          ("not_after", Self.format(certificate.notValidAfter)),
          ("remaining", remaining > 0 ? Self.describe(remaining) : "expired"),
        ]
      }
      switch output {
      case .table:
        for (i, row) in rows.enumerated() {
          if i > 0 { print() }
          for (key, value) in row {
            print("\(key.padding(toLength: 11, withPad: " ", startingAt: 0)) \(value)")
          }
        }
      case .json:
        let objects = rows.map { row in
          "{" + row.map { "\"\($0.0)\": \"\(Self.escape($0.1))\"" }.joined(separator: ", ") + "}"
        }
        print(rows.count == 1 ? objects[0] : "[" + objects.joined(separator: ", ") + "]")
      case .yaml:
        for row in rows {
          for (j, (key, value)) in row.enumerated() {
            print("\(j == 0 ? "- " : "  ")\(key): \"\(Self.escape(value))\"")
          }
        }
      }
    }

    static func format(_ date: Date) -> String {
      ISO8601DateFormatter().string(from: date)
    }

    static func describe(_ seconds: TimeInterval) -> String {
      let total = Int(seconds)
      let days = total / 86_400
      let hours = total % 86_400 / 3600
      let minutes = total % 3600 / 60
      if days > 0 { return "\(days)d \(hours)h" }
      if hours > 0 { return "\(hours)h \(minutes)m" }
      return "\(minutes)m \(total % 60)s"
    }

    static func escape(_ text: String) -> String {
      text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
    }
  }
}
