import Crypto
import SwiftASN1
import X509

#if canImport(FoundationEssentials)
  import FoundationEssentials
#else
  import Foundation
#endif
#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

extension Certificate {
  /// The serial as `meshctl certs inspect` shows it: hex bytes joined by colons.
  public var serialHex: String {
    serialNumber.bytes.map(hexByte).joined(separator: ":")
  }
}

/// A byte as two lower-case hex digits.
func hexByte(_ byte: UInt8) -> String {
  let hex = String(byte, radix: 16)
  return hex.count == 1 ? "0" + hex : hex
}

/// Reading and writing certificates and keys as PEM files. Private keys are written with mode
/// 0600 from the start (never world-readable, even briefly) and never overwritten silently.
public enum CertificateFiles {
  /// A file as the file system describes it, cheaply: its modification time, size and inode
  /// ("missing" when there is none). Files written by `replace` get a new inode each time, so
  /// a stamp that has not changed means a file that has not been written since.
  public static func stamp(_ path: String) -> String {
    guard let attributes = try? FileManager.default.attributesOfItem(atPath: path) else {
      return "missing"
    }
    let modified = (attributes[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0
    return "\(modified)/\(attributes[.size] ?? 0)/\(attributes[.systemFileNumber] ?? 0)"
  }

  /// Every certificate in a PEM file, in order (a leaf first, then its chain).
  public static func readCertificates(_ path: String) throws -> [Certificate] {
    let text = try readText(path)
    let documents: [PEMDocument]
    do {
      documents = try PEMDocument.parseMultiple(pemString: text)
    } catch {
      throw IdentityError("\(path) is not PEM: \(error)")
    }
    let certificates = try documents.filter { $0.discriminator == "CERTIFICATE" }.map {
      try Certificate(pemDocument: $0)
    }
    guard !certificates.isEmpty else { throw IdentityError("\(path) holds no certificate") }
    return certificates
  }

  /// An ECDSA P-256 private key from a PEM file (PKCS#8 or SEC1).
  public static func readPrivateKey(_ path: String) throws -> P256.Signing.PrivateKey {
    let text = try readText(path)
    do {
      return try P256.Signing.PrivateKey(pemRepresentation: text)
    } catch {
      throw IdentityError("\(path) is not an ECDSA P-256 private key in PEM")
    }
  }

  /// Writes certificates as PEM, leaf first.
  public static func writeCertificates(_ certificates: [Certificate], to path: String) throws {
    let pem = try certificates.map { try $0.serializeAsPEM().pemString }.joined(separator: "\n")
    try replace(path, with: Array((pem + "\n").utf8), mode: 0o644)
  }

  /// Writes a private key as PKCS#8 PEM, mode 0600.
  public static func writePrivateKey(_ key: P256.Signing.PrivateKey, to path: String) throws {
    try replace(path, with: Array((key.pemRepresentation + "\n").utf8), mode: 0o600)
  }

  private static func readText(_ path: String) throws -> String {
    guard let data = FileManager.default.contents(atPath: path) else {
      throw IdentityError("cannot read \(path)")
    }
    return String(decoding: data, as: UTF8.self)
  }

  /// Replaces `path` with `bytes`, whole or not at all: written beside it with `mode` (never
  /// more open than that, even briefly), then renamed over it. Folders are made as needed.
  public static func replace(_ path: String, with bytes: [UInt8], mode: mode_t = 0o644) throws {
    let directory = URL(fileURLWithPath: path).deletingLastPathComponent().path
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    // Write beside the target and rename over it, so a reader never sees half a file.
    // Unique per write: two tasks of one process may replace the same file at once.
    let temporary = path + ".tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC, mode)
    guard fd >= 0 else {
      throw IdentityError("cannot write \(path): \(String(cString: strerror(errno)))")
    }
    let written = bytes.withUnsafeBytes { systemWrite(fd, $0.baseAddress, $0.count) }
    fchmod(fd, mode)
    close(fd)
    guard written == bytes.count, rename(temporary, path) == 0 else {
      unlink(temporary)
      throw IdentityError("cannot write \(path): \(String(cString: strerror(errno)))")
    }
  }
}

private func systemWrite(_ fd: Int32, _ bytes: UnsafeRawPointer?, _ count: Int) -> Int {
  write(fd, bytes, count)
}
