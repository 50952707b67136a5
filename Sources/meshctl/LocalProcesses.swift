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
    posix_spawnattr_setflags(
      &attributes, Int16(0x80 | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
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

  /// Whether `pid` runs: it exists and has not finished exiting. A zombie whose other threads
  /// still run is running (the leader thread shows `Z` while the rest of the process exits,
  /// holding its sockets and files until the last thread is gone). With `startedAt`, a
  /// process of another start time — the pid given to someone else since — is not ours.
  static func isRunning(_ pid: pid_t, startedAt: UInt64? = nil) -> Bool {
    guard pid > 0, kill(pid, 0) == 0 || errno == EPERM else { return false }
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
      let close = stat.lastIndex(of: ")")
    else { return true }
    let fields = stat[stat.index(after: close)...].split(separator: " ")
    // After the command: state is the 3rd field of the line, start time the 22nd.
    if let startedAt, fields.count > 19, UInt64(fields[19]) != startedAt { return false }
    guard let state = fields.first, state == "Z" || state == "X" else { return true }
    let threads = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task"))
    return (threads?.count ?? 0) > 1
  }

  /// When `pid` started, in clock ticks after boot (`/proc/PID/stat`'s 22nd field): with the
  /// pid, it names one process for as long as the machine runs.
  static func startTime(_ pid: pid_t) -> UInt64? {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
      let close = stat.lastIndex(of: ")")
    else { return nil }
    let fields = stat[stat.index(after: close)...].split(separator: " ")
    return fields.count > 19 ? UInt64(fields[19]) : nil
  }

  /// What stopping a group of processes came to.
  struct Stopped {
    /// Those that did not end within the timeout after SIGTERM, and were sent SIGKILL.
    var killed: [ShopRun.Entry] = []
    /// Those still running even after SIGKILL (a process in uninterruptible sleep, or one
    /// this user may not signal).
    var remaining: [ShopRun.Entry] = []

    mutating func add(_ other: Stopped) {
      killed += other.killed
      remaining += other.remaining
    }
  }

  /// Sends SIGTERM to each and waits for all to end, up to `timeout`; those still running then
  /// get SIGKILL, and are waited for again (up to 5 s). Returns only once each has ended, or
  /// says which have not.
  @discardableResult
  static func stop(
    _ entries: [ShopRun.Entry], signal: Int32 = SIGTERM, timeout: Duration = .seconds(20)
  ) async -> Stopped {
    var stopped = Stopped()
    for entry in entries where entry.isRunning { kill(entry.pid, signal) }
    guard await waitForExit(entries, within: timeout) else {
      stopped.killed = entries.filter(\.isRunning)
      for entry in stopped.killed { kill(entry.pid, SIGKILL) }
      _ = await waitForExit(stopped.killed, within: .seconds(5))
      stopped.remaining = stopped.killed.filter(\.isRunning)
      return stopped
    }
    return stopped
  }

  /// Waits until none of `entries` runs (reaping those that are meshctl's own children);
  /// whether that happened within `timeout`.
  static func waitForExit(_ entries: [ShopRun.Entry], within timeout: Duration) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while true {
      _ = reapChildren()
      if !entries.contains(where: \.isRunning) { return true }
      if ContinuousClock.now >= deadline { return false }
      try? await Task.sleep(for: .milliseconds(20))
    }
  }

  /// The last `count` lines of a file.
  static func tail(_ path: String, lines count: Int) -> [String] {
    guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return [] }
    return Array(
      text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
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
    if let body {
      request += "Content-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n"
    }
    request += "\r\n" + (body ?? "")
    let bytes = Array(request.utf8)
    guard
      bytes.withUnsafeBytes({ send(socket, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) })
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
