#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

/// The process's standard error and exit, without Foundation: the sidecar links this module,
/// and Foundation with ICU would be about 8 MB of its resident memory.
public enum StandardError {
  /// Writes `text` whole, as one `write(2)` where the kernel allows.
  public static func write(_ text: String) {
    var text = text
    text.withUTF8 { bytes in
      guard var next = bytes.baseAddress else { return }
      var left = bytes.count
      while left > 0 {
        let written = systemWrite(2, next, left)
        if written < 0, errno == EINTR { continue }
        guard written > 0 else { return }
        next += written
        left -= written
      }
    }
  }
}

/// Ends the process with `status`.
public func exitProcess(_ status: Int32) -> Never {
  exit(status)
}

private func systemWrite(_ fd: Int32, _ bytes: UnsafePointer<UInt8>, _ count: Int) -> Int {
  write(fd, bytes, count)
}
