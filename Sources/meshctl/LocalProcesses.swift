import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Starting, watching and stopping the local processes `meshctl up` runs.
enum LocalProcesses {
  /// Starts `executable` in a session of its own (so a Ctrl-C at the terminal reaches only
  /// meshctl, which stops everything in order, and a detached mesh outlives it), with standard
  /// output and error appended to `log` and standard input from /dev/null.
  static func spawn(
    _ executable: String, _ arguments: [String], environment: [String: String], log: String
  ) throws -> pid_t {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, log, O_WRONLY | O_CREAT | O_APPEND, 0o644)
    posix_spawn_file_actions_adddup2(&actions, 1, 2)
    closeOnExec()
    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    // POSIX_SPAWN_SETSID (glibc's 0x80): the child starts a new session. Its signal mask and
    // dispositions are reset to the defaults.
    posix_spawnattr_setflags(&attributes, Int16(0x80 | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
    var empty = sigset_t()
    sigemptyset(&empty)
    posix_spawnattr_setsigmask(&attributes, &empty)
    var defaults = sigset_t()
    sigemptyset(&defaults)
    for signal in [SIGINT, SIGTERM, SIGPIPE, SIGCHLD] { sigaddset(&defaults, signal) }
    posix_spawnattr_setsigdefault(&attributes, &defaults)

    var merged = ProcessInfo.processInfo.environment
    for (key, value) in environment { merged[key] = value }
    let argv = ([executable] + arguments).map { strdup($0) } + [nil]
    let envp = merged.map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer {
      for pointer in argv { free(pointer) }
      for pointer in envp { free(pointer) }
    }
    var pid: pid_t = 0
    let result = posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
    guard result == 0 else {
      throw MeshctlFailure("cannot start \(executable): \(String(cString: strerror(result)))")
    }
    return pid
  }

  /// Marks every descriptor above standard error close-on-exec, so a child gets none of
  /// meshctl's: a pipe meshctl inherited (its caller reading its output to the end) must not
  /// stay open in a mesh that outlives it.
  static func closeOnExec() {
    guard let names = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd") else {
      return
    }
    for name in names {
      guard let fd = Int32(name), fd > 2 else { continue }
      let flags = fcntl(fd, F_GETFD)
      if flags >= 0 { _ = fcntl(fd, F_SETFD, flags | FD_CLOEXEC) }
    }
  }

  /// Exit statuses of this process's children that have ended, reaped.
  static func reapChildren() -> [pid_t: Int32] {
    var ended: [pid_t: Int32] = [:]
    while true {
      var status: Int32 = 0
      let pid = waitpid(-1, &status, WNOHANG)
      guard pid > 0 else { return ended }
      ended[pid] = status
    }
  }

  /// Whether `pid` runs (and is not a zombie).
  static func isRunning(_ pid: pid_t) -> Bool {
    guard pid > 0, kill(pid, 0) == 0 || errno == EPERM else { return false }
    if let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
      let close = stat.lastIndex(of: ")")
    {
      let state = stat[stat.index(close, offsetBy: 2)]
      return state != "Z" && state != "X"
    }
    return true
  }

  /// Sends SIGTERM to each and waits for all to end, up to `timeout`; those still running then
  /// get SIGKILL. Returns the ones that had to be killed.
  @discardableResult
  static func stop(_ pids: [pid_t], timeout: Duration = .seconds(20)) async -> [pid_t] {
    for pid in pids where isRunning(pid) { kill(pid, SIGTERM) }
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
      _ = reapChildren()
      if !pids.contains(where: isRunning) { return [] }
      try? await Task.sleep(for: .milliseconds(50))
    }
    let stubborn = pids.filter(isRunning)
    for pid in stubborn { kill(pid, SIGKILL) }
    _ = reapChildren()
    return stubborn
  }

  /// The last `count` lines of a file.
  static func tail(_ path: String, lines count: Int) -> [String] {
    guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return [] }
    return Array(text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
      .dropLast(text.hasSuffix("\n") ? 1 : 0).suffix(count))
  }

  /// Whether something listens on 127.0.0.1:`port` (a connection is accepted).
  static func isListening(_ port: Int) -> Bool {
    let socket = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard socket >= 0 else { return false }
    defer { close(socket) }
    var address = loopback(port)
    return withUnsafePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        connect(socket, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
      }
    }
  }

  /// Whether 127.0.0.1:`port` can be bound now (nobody holds it).
  static func isFree(_ port: Int) -> Bool {
    let socket = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard socket >= 0 else { return false }
    defer { close(socket) }
    var yes: Int32 = 1
    setsockopt(socket, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
    var address = loopback(port)
    return withUnsafePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        bind(socket, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
      }
    }
  }

  static func loopback(_ port: Int) -> sockaddr_in {
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    address.sin_addr.s_addr = in_addr_t(0x7f00_0001).bigEndian
    return address
  }

  /// One HTTP/1.1 request to 127.0.0.1:`port`, answered within `timeout` seconds: the status
  /// and body, or nil when there was no answer.
  static func httpRequest(
    port: Int, method: String = "GET", path: String, headers: [String: String] = [:],
    body: String? = nil, timeout: Int = 3
  ) -> (status: Int, body: String)? {
    let socket = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard socket >= 0 else { return nil }
    defer { close(socket) }
    var limit = timeval(tv_sec: timeout, tv_usec: 0)
    setsockopt(socket, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
    setsockopt(socket, SOL_SOCKET, SO_SNDTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
    var address = loopback(port)
    let connected = withUnsafePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        connect(socket, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
      }
    }
    guard connected else { return nil }
    var request = "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nConnection: close\r\n"
    for (name, value) in headers { request += "\(name): \(value)\r\n" }
    if let body { request += "Content-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n" }
    request += "\r\n" + (body ?? "")
    let bytes = Array(request.utf8)
    guard bytes.withUnsafeBytes({ send(socket, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) })
      == bytes.count
    else { return nil }
    var response: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 16384)
    while true {
      let count = buffer.withUnsafeMutableBytes { recv(socket, $0.baseAddress, $0.count, 0) }
      if count <= 0 { break }
      response.append(contentsOf: buffer[0..<count])
    }
    let text = String(decoding: response, as: UTF8.self)
    guard text.hasPrefix("HTTP/1."), let space = text.firstIndex(of: " ") else { return nil }
    let status = Int(text[text.index(after: space)...].prefix(3)) ?? 0
    let body = text.range(of: "\r\n\r\n").map { String(text[$0.upperBound...]) } ?? ""
    return (status, body)
  }
}

/// Writes out what `print` has buffered (standard output is a pipe or file under `up`'s
/// callers, not only a terminal).
func flushStandardOutput() {
  fflush(nil)  // every output stream
}
