import ArgumentParser
import Crypto
import Foundation
import GRPCCore
import LocalPostgres
import Logging
import MeshIdentity
import MeshProtos
import MeshServiceKit
import ShopSupport

#if canImport(Glibc)
  import Glibc
#endif

/// Starts and stops the processes of a local mesh, for `up`, `restart` and `down`.
struct Launcher {
  let run: ShopRun

  var root: String { FileManager.default.currentDirectoryPath }
  func absolute(_ path: String) -> String { path.hasPrefix("/") ? path : root + "/" + path }

  var controlPlane: ControlPlaneOptions {
    // (Parsed, as options made any other way hold no values.)
    try! ControlPlaneOptions.parse(["--control-plane", run.ports.controlPlaneList])
  }

  // MARK: - Before anything runs

  /// The CA in certs/: made when missing (the same as `meshctl certs init`).
  func ensureCA() throws {
    let files = CAFiles(dir: "certs")
    if FileManager.default.fileExists(atPath: files.root) {
      for path in [files.issuer, files.issuerKey, files.bundle, files.operatorCertificate]
      where !FileManager.default.fileExists(atPath: path) {
        throw MeshctlFailure(
          "certs/ is incomplete: \(path) is missing (meshctl certs init --force makes a new CA)")
      }
      return
    }
    print("creating the mesh's CA in certs/ (meshctl certs init)…")
    let me = Self.ownExecutable
    let made = try Self.runTool(me, ["certs", "init", "--dir", "certs"])
    guard made.status == 0 else {
      throw MeshctlFailure("meshctl certs init failed: \(made.output)")
    }
  }

  /// The gateway's API key, made once and kept in .trellis/api-keys (mode 0600).
  func ensureAPIKey() throws {
    if FileManager.default.fileExists(atPath: run.apiKeyFile) { return }
    var bytes = [UInt8](repeating: 0, count: 18)
    for index in bytes.indices { bytes[index] = UInt8.random(in: 0...255) }
    let key =
      "shop_"
      + Data(bytes).base64EncodedString()
      .replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
    guard
      FileManager.default.createFile(
        atPath: run.apiKeyFile,
        contents: Data("# the shop's API key (meshctl up)\n\(key)\n".utf8),
        attributes: [.posixPermissions: 0o600])
    else { throw MeshctlFailure("cannot write \(run.apiKeyFile)") }
  }

  var apiKey: String {
    let text = (try? String(contentsOfFile: run.apiKeyFile, encoding: .utf8)) ?? ""
    return text.split(separator: "\n").first { !$0.hasPrefix("#") && !$0.isEmpty }.map(String.init)
      ?? ""
  }

  // MARK: - Starting

  /// The shop's services whose data is kept in a database of their own.
  static let databaseServices = ["events", "payments", "users", "orders"]

  /// `up --postgres`: the local PostgreSQL cluster (made the first time), started and
  /// supervised like the mesh's other processes, with a database and role per service. As
  /// root, the cluster belongs to the `postgres` user (PostgreSQL refuses root) and lives under
  /// /var/lib/trellis/, in a folder named by this checkout's path (recorded in
  /// .trellis/postgres-folder); otherwise in .trellis/postgres/.
  func startLocalPostgres(port: Int) async throws -> (ShopRun.PostgresRun, ShopRun.Entry) {
    let folder: String
    if getuid() == 0 {
      let digest = SHA256.hash(data: Data(root.utf8)).prefix(6)
        .map { String(format: "%02x", $0) }.joined()
      folder = "/var/lib/trellis/postgres-\(digest)"
      try FileManager.default.createDirectory(
        atPath: "/var/lib/trellis", withIntermediateDirectories: true)
      try (folder + "\n").write(
        toFile: ShopRun.folder + "/postgres-folder", atomically: true, encoding: .utf8)
    } else {
      folder = absolute(ShopRun.folder + "/postgres")
    }
    let cluster = LocalPostgres(directory: folder, port: port)
    if !cluster.isInitialized {
      print("creating the shop's PostgreSQL cluster in \(folder) (initdb)…")
      try cluster.initialize()
    }
    let command = try cluster.serverCommand()
    let log = ShopRun.folder + "/logs/postgres.log"
    let pid = try LocalProcesses.spawn(
      command.executable, command.arguments, environment: [:], log: log)
    let entry = ShopRun.Entry(
      name: "postgres", service: "postgres", instance: "postgres", role: .postgres, pid: pid,
      startTime: LocalProcesses.startTime(pid), log: log, slot: nil,
      address: "127.0.0.1:\(port)")
    guard
      try cluster.waitUntilReady(stillRunning: {
        _ = LocalProcesses.reapChildren()
        return LocalProcesses.isRunning(pid)
      })
    else {
      throw MeshctlFailure("PostgreSQL did not start (its log: \(log))")
    }
    var urls: [String: String] = [:]
    for service in Self.databaseServices {
      urls[service] = try await cluster.createServiceDatabase(
        "shop_\(service)", logger: Logger(label: "meshctl"))
    }
    return (ShopRun.PostgresRun(folder: folder, host: "127.0.0.1", port: port, urls: urls), entry)
  }

  /// `up --postgres-url`: a database and role per service on an existing server, made by the
  /// admin `location` names (their password files in .trellis/postgres-credentials/).
  func useExistingPostgres(_ location: PostgresLocation) async throws -> ShopRun.PostgresRun {
    guard let passwordFile = location.passwordFile else {
      throw MeshctlFailure("--postgres-url: the admin's password_file=PATH is required")
    }
    _ = try location.password()  // refuses a file others may read
    let admin = PostgresAdmin(
      host: location.host, port: location.port, user: location.user,
      passwordFile: passwordFile,
      credentials: absolute(ShopRun.folder + "/postgres-credentials"))
    var urls: [String: String] = [:]
    do {
      for service in Self.databaseServices {
        urls[service] = try await admin.createServiceDatabase(
          "shop_\(service)", logger: Logger(label: "meshctl"))
      }
    } catch {
      throw MeshctlFailure("cannot make the shop's databases on \(location): \(error)")
    }
    return ShopRun.PostgresRun(folder: nil, host: location.host, port: location.port, urls: urls)
  }

  /// The etcd cluster the replicas share (several replicas only): one member per replica, its
  /// data in .trellis/etcd/, on loopback.
  func startEtcd() throws -> [ShopRun.Entry] {
    let members = run.ports.etcdPorts
    guard !members.isEmpty else { return [] }
    let cluster = members.enumerated().map {
      "etcd-\($0.offset + 1)=http://127.0.0.1:\($0.element.peer)"
    }
    .joined(separator: ",")
    let etcd = try Self.locate("etcd", hint: "apt-get install etcd-server")
    return try members.enumerated().map { index, ports in
      let name = "etcd-\(index + 1)"
      let data = absolute(ShopRun.folder + "/etcd/\(name)")
      // A member that has data joins its cluster again; a new one starts it.
      let state = FileManager.default.fileExists(atPath: data + "/member") ? "existing" : "new"
      let log = ShopRun.folder + "/logs/\(name).log"
      let pid = try LocalProcesses.spawn(
        etcd,
        [
          "--name", name, "--data-dir", data,
          "--listen-client-urls", "http://127.0.0.1:\(ports.client)",
          "--advertise-client-urls", "http://127.0.0.1:\(ports.client)",
          "--listen-peer-urls", "http://127.0.0.1:\(ports.peer)",
          "--initial-advertise-peer-urls", "http://127.0.0.1:\(ports.peer)",
          "--initial-cluster", cluster, "--initial-cluster-state", state,
          "--initial-cluster-token", "trellis-local",
        ], environment: [:], log: log)
      return ShopRun.Entry(
        name: name, service: "etcd", instance: name, role: .etcd, pid: pid,
        startTime: LocalProcesses.startTime(pid), log: log, slot: nil,
        address: "127.0.0.1:\(ports.client)")
    }
  }

  /// An executable on PATH (or in /usr/bin, /usr/sbin).
  static func locate(_ name: String, hint: String) throws -> String {
    let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin"
    for folder in path.split(separator: ":").map(String.init) + ["/usr/bin", "/usr/sbin"] {
      let candidate = folder + "/" + name
      if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
    }
    throw MeshctlFailure("\(name) is not installed: \(hint)")
  }

  /// The control plane, or replica `index` of several (on the etcd cluster). A replica after
  /// the first signs with an issuer of its own: it writes its CSR, which is signed here with the
  /// root's key from certs/ (as `meshctl certs sign-issuer` does).
  func startControlPlane(replica index: Int = 0) async throws -> ShopRun.Entry {
    let several = run.ports.replicas > 1
    let name = several ? "control-plane-\(index + 1)" : "control-plane"
    let ports = run.ports.replicaPorts[index]
    let data = absolute(ShopRun.folder + "/" + name)
    let log = ShopRun.folder + "/logs/\(name).log"
    var arguments = [
      "--certs", absolute("certs"), "--data", data,
      "--listen", "127.0.0.1:\(ports.api)", "--join", "127.0.0.1:\(ports.join)",
    ]
    if several {
      arguments += [
        "--store",
        "etcd://"
          + run.ports.etcdPorts.map { "127.0.0.1:\($0.client)" }
          .joined(separator: ","), "--replica", name,
      ]
    }
    let pid = try LocalProcesses.spawn(
      run.bin + "/control-plane", arguments, environment: [:], log: log)
    let entry = ShopRun.Entry(
      name: name, service: "control-plane", instance: name, role: .controlPlane, pid: pid,
      startTime: LocalProcesses.startTime(pid), log: log, slot: nil,
      address: "127.0.0.1:\(ports.api)")
    let target = try HostPort(parsing: entry.address)
    let deadline = ContinuousClock.now + .seconds(60)
    while true {
      guard LocalProcesses.isRunning(pid) else {
        throw MeshctlFailure("\(name) exited at start (see \(log))")
      }
      try signIssuerIfAsked(data: data)
      if (try? await controlPlane.withClient(at: target) {
        try await Trellis_Mesh_V1_Admin.Client(wrapping: $0).status(.init())
      }) != nil {
        return entry
      }
      if ContinuousClock.now > deadline {
        throw MeshctlFailure("\(name) did not answer within 60 s (see \(log))")
      }
      try await Task.sleep(for: .milliseconds(100))
    }
  }

  /// Signs, with the root in certs/, the issuer a replica asks for in `data/issuer.csr`.
  private func signIssuerIfAsked(data: String) throws {
    let csr = data + "/issuer.csr"
    let out = data + "/issuer.pem"
    guard FileManager.default.fileExists(atPath: csr), !FileManager.default.fileExists(atPath: out)
    else { return }
    let signed = try Self.runTool(
      Self.ownExecutable, ["certs", "sign-issuer", csr, "--out", out, "--dir", "certs"])
    guard signed.status == 0 else {
      throw MeshctlFailure("cannot sign \(csr): \(signed.output)")
    }
  }

  /// Applies .trellis/mesh.yaml, written with the shop's defaults the first time.
  func applyMeshConfig() async throws {
    let file = ShopRun.folder + "/mesh.yaml"
    if !FileManager.default.fileExists(atPath: file) {
      try ShopLayout.defaultMeshConfig.write(toFile: file, atomically: true, encoding: .utf8)
    }
    var request = Trellis_Mesh_V1_ApplyConfigRequest()
    request.yaml = try String(contentsOfFile: file, encoding: .utf8)
    request.fileName = file
    let response = try await controlPlane.withAdmin { [request] in
      try await $0.applyConfig(request)
    }
    print(
      response.changed
        ? "applied \(file) as version \(response.version)"
        : "\(file) is the running config (version \(response.version))")
  }

  /// Starts one instance of a service: its app and its sidecar (joined with a new token).
  ///
  /// A gateway started with `takingOverPort` waits for the gateway port to be free and takes it
  /// the moment the running gateway closes it.
  func startInstance(
    _ service: ShopLayout.Service, instance: String, slot: Int, takingOverPort: Bool = false
  ) async throws -> [ShopRun.Entry] {
    let ports = run.slotPorts(slot)
    let folder = ShopRun.folder + "/sidecars/\(instance)"
    try FileManager.default.createDirectory(
      atPath: folder + "/state", withIntermediateDirectories: true)
    let tokenFile = folder + "/token"
    var request = Trellis_Mesh_V1_CreateTokenRequest()
    request.service = service.name
    request.ttlSeconds = 3600
    let token = try await controlPlane.withAdmin { [request] in try await $0.createToken(request) }
    guard
      FileManager.default.createFile(
        atPath: tokenFile, contents: Data((token.token + "\n").utf8),
        attributes: [.posixPermissions: 0o600])
    else { throw MeshctlFailure("cannot write \(tokenFile)") }
    let bootstrap = """
      # \(instance)'s sidecar, written by meshctl up
      service: \(service.name)
      app: 127.0.0.1:\(ports.app)
      listen: {inbound: 127.0.0.1:\(ports.inbound), outbound: 127.0.0.1:\(ports.outbound), admin: 127.0.0.1:\(ports.admin)}
      controlPlane:
        address: [\(run.ports.replicaPorts.map { "127.0.0.1:\($0.api)" }.joined(separator: ", "))]
        join: [\(run.ports.replicaPorts.map { "127.0.0.1:\($0.join)" }.joined(separator: ", "))]
        tokenFile: \(absolute(tokenFile))
        bundle: \(absolute("certs/bundle.pem"))
      state: \(absolute(folder + "/state"))

      """
    let bootstrapFile = folder + "/sidecar.yaml"
    try bootstrap.write(toFile: bootstrapFile, atomically: true, encoding: .utf8)

    let data = ShopRun.folder + "/data/\(service.name)"
    try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
    var arguments: [String]
    var address = "127.0.0.1:\(ports.app)"
    if service.name == "gateway" {
      arguments = [
        "--listen", "127.0.0.1:\(run.ports.gateway)", "--health-listen", "127.0.0.1:\(ports.app)",
        "--sidecar", "127.0.0.1:\(ports.outbound)", "--api-keys-file", absolute(run.apiKeyFile),
      ]
      address = "127.0.0.1:\(run.ports.gateway)"
      if takingOverPort { arguments += ["--bind-wait", "120"] }
    } else {
      arguments = [
        "--listen", "127.0.0.1:\(ports.app)", "--db",
        run.postgres?.urls[service.name] ?? absolute(data + "/\(service.name).sqlite"),
        "--shutdown-delay", "2",
      ]
      if service.callsOut { arguments += ["--sidecar", "127.0.0.1:\(ports.outbound)"] }
    }
    let appLog = ShopRun.folder + "/logs/\(instance).log"
    let sidecarLog = ShopRun.folder + "/logs/\(instance)-sidecar.log"
    let app = try LocalProcesses.spawn(
      run.bin + "/" + service.executable, arguments,
      environment: [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:\(ports.admin)/v1/traces",
        "OTEL_SERVICE_NAME": service.name,
      ], log: appLog)
    let sidecar = try LocalProcesses.spawn(
      run.bin + "/sidecar", ["--config", absolute(bootstrapFile)], environment: [:],
      log: sidecarLog)
    return [
      .init(
        name: instance, service: service.name, instance: instance, role: .app, pid: app,
        startTime: LocalProcesses.startTime(app), log: appLog, slot: slot, address: address),
      .init(
        name: "\(instance)-sidecar", service: service.name, instance: instance, role: .sidecar,
        pid: sidecar, startTime: LocalProcesses.startTime(sidecar), log: sidecarLog, slot: slot,
        address: "127.0.0.1:\(ports.admin)"),
    ]
  }

  // MARK: - Readiness

  /// Waits until every process (or `only` these) is ready: each sidecar ready and its
  /// endpoint registered with the running config, each app listening, and the gateway
  /// answering through the mesh.
  /// The dashboard (`meshctl dashboard`, this executable's sibling in the bin folder), on
  /// loopback at the dashboard port, reading from every replica as the operator.
  func startDashboard() throws -> ShopRun.Entry {
    let port = run.ports.dashboard ?? run.ports.controlPlane + 80
    let log = ShopRun.folder + "/logs/dashboard.log"
    let pid = try LocalProcesses.spawn(
      run.bin + "/meshctl",
      [
        "dashboard", "--listen", "127.0.0.1:\(port)", "--control-plane",
        run.ports.controlPlaneList, "--certs", absolute("certs"),
      ], environment: [:], log: log)
    return ShopRun.Entry(
      name: "dashboard", service: "dashboard", instance: "dashboard", role: .dashboard, pid: pid,
      startTime: LocalProcesses.startTime(pid), log: log, slot: nil,
      address: "127.0.0.1:\(port)")
  }

  func waitUntilReady(
    _ run: ShopRun, only: [ShopRun.Entry]? = nil, timeout: Duration = .seconds(120)
  )
    async throws
  {
    let entries = only ?? run.processes
    let deadline = ContinuousClock.now + timeout
    var waitingFor: [String] = []
    while ContinuousClock.now < deadline {
      _ = LocalProcesses.reapChildren()
      if let dead = entries.first(where: { !LocalProcesses.isRunning($0.pid) }) {
        throw MeshctlFailure("\(dead.name) exited (its log: \(dead.log))")
      }
      let status = try? await controlPlane.mergedStatus().status
      waitingFor = []
      for entry in entries {
        switch entry.role {
        case .etcd, .postgres:
          let port = Int(entry.address.split(separator: ":").last ?? "") ?? 0
          if !LocalProcesses.isListening(port) { waitingFor.append("\(entry.name) (not serving)") }
        case .controlPlane:
          if status == nil { waitingFor.append("control-plane") }
        case .dashboard:
          let port = Int(entry.address.split(separator: ":").last ?? "") ?? 0
          if LocalProcesses.httpRequest(port: port, path: "/", timeout: 1)?.status != 200 {
            waitingFor.append("dashboard (not serving)")
          }
        case .sidecar:
          let ports = run.slotPorts(entry.slot ?? 0)
          let ready =
            LocalProcesses.httpRequest(port: ports.admin, path: "/ready", timeout: 1)?.status == 200
          let inbound = "127.0.0.1:\(ports.inbound)"
          let registered =
            status?.sidecars.contains {
              $0.connected && $0.registered && $0.registeredAddress == inbound
                && $0.version == status?.currentVersion
            } ?? false
          if !ready || !registered {
            waitingFor.append("\(entry.name) (\(ready ? "not registered yet" : "not ready"))")
          }
        case .app:
          let port = Int(entry.address.split(separator: ":").last ?? "") ?? 0
          if !LocalProcesses.isListening(port) {
            waitingFor.append("\(entry.name) (not listening)")
          }
        }
      }
      if waitingFor.isEmpty, entries.contains(where: { $0.service == "gateway" && $0.role == .app })
      {
        // Through the gateway, its sidecar, users' sidecar, to users: a NOT_FOUND is the answer.
        let answer = LocalProcesses.httpRequest(
          port: run.ports.gateway, path: "/v1/users/usr_readiness", headers: ["x-api-key": apiKey],
          timeout: 2)
        if answer?.status != 404 {
          waitingFor.append(
            "gateway → users (answered \(answer.map { "\($0.status)" } ?? "nothing"))")
        }
      }
      if waitingFor.isEmpty { return }
      try await Task.sleep(for: .milliseconds(200))
    }
    throw MeshctlFailure("not ready after \(timeout): \(waitingFor.joined(separator: ", "))")
  }

  /// Waits until a gateway instance started to take over the port is ready but for the port:
  /// its sidecar is ready and runs the current config, and the gateway says it waits (or,
  /// when the port was free already, listens).
  func waitUntilWaitingForThePort(
    _ run: ShopRun, _ fresh: [ShopRun.Entry], timeout: Duration = .seconds(120)
  ) async throws {
    let deadline = ContinuousClock.now + timeout
    var waitingFor = ""
    while ContinuousClock.now < deadline {
      _ = LocalProcesses.reapChildren()
      if let dead = fresh.first(where: { !LocalProcesses.isRunning($0.pid) }) {
        throw MeshctlFailure("\(dead.name) exited (its log: \(dead.log))")
      }
      waitingFor = ""
      for entry in fresh {
        let ports = run.slotPorts(entry.slot ?? 0)
        switch entry.role {
        case .sidecar:
          let ready =
            LocalProcesses.httpRequest(port: ports.admin, path: "/ready", timeout: 1)?.status == 200
          let status = try? await controlPlane.mergedStatus().status
          let synced =
            status?.sidecars.contains {
              $0.node == "\(entry.service)@127.0.0.1:\(ports.inbound)" && $0.connected
                && $0.version == status?.currentVersion
            } ?? false
          if !ready || !synced {
            waitingFor = "\(entry.name) (\(ready ? "config not synced" : "not ready"))"
          }
        case .app:
          let log = (try? String(contentsOfFile: absolute(entry.log), encoding: .utf8)) ?? ""
          if !log.contains("\"waiting for the listen address to be free\""),
            !log.contains("\"message\":\"listening\"")
          {
            waitingFor = "\(entry.name) (starting)"
          }
        case .controlPlane, .etcd, .postgres, .dashboard:
          break
        }
        if !waitingFor.isEmpty { break }
      }
      if waitingFor.isEmpty { return }
      try await Task.sleep(for: .milliseconds(50))
    }
    throw MeshctlFailure("not ready after \(timeout): \(waitingFor)")
  }

  // MARK: - Running in the foreground

  /// Shows every process's new log lines, prefixed with its name, and reports a process that
  /// dies, until SIGINT or SIGTERM — then stops everything. The run file is read again each
  /// second, so instances `meshctl restart` replaced are followed too.
  static func foreground(_ started: ShopRun, logs: LogStream) async {
    signal(SIGINT, SIG_IGN)
    signal(SIGTERM, SIG_IGN)
    let stopRequested = StopFlag()
    let sources = [SIGINT, SIGTERM].map { number in
      let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
      source.setEventHandler { stopRequested.set() }
      source.resume()
      return source
    }
    defer { sources.forEach { $0.cancel() } }

    var run = started
    var reported = Set<Int32>()
    var exits: [pid_t: Int32] = [:]
    var lastReload = ContinuousClock.now
    // `meshctl down` from another terminal marks the run file, stops everything and removes
    // the file: then the stops are not deaths, and this ends once the file is gone.
    var stoppedElsewhere = false
    logs.follow(run.processes)
    while !stopRequested.isSet {
      logs.printNew()
      for (pid, status) in LocalProcesses.reapChildren() { exits[pid] = status }
      if ContinuousClock.now - lastReload > .milliseconds(300) {
        let fresh = ShopRun.load()
        if fresh == nil || fresh?.stopping == true, !stoppedElsewhere {
          stoppedElsewhere = true
          print("\nmeshctl down is stopping the shop…")
        }
        if let fresh {
          run = fresh
          logs.follow(run.processes)
        } else if !run.processes.contains(where: \.isRunning) {
          logs.printNew()
          print("stopped by meshctl down; the data stays in \(ShopRun.folder)/")
          flushStandardOutput()
          return
        }
        lastReload = .now
      }
      for entry in run.processes
      where !stoppedElsewhere && !reported.contains(entry.pid)
        && !LocalProcesses.isRunning(entry.pid)
      {
        // A restart may be replacing it: only a process still in the run file counts.
        guard ShopRun.load()?.processes.contains(where: { $0.pid == entry.pid }) ?? true else {
          continue
        }
        logs.printNew()
        reported.insert(entry.pid)
        // It may have ended after this pass reaped: its status is waiting now.
        if exits[entry.pid] == nil {
          for (pid, status) in LocalProcesses.reapChildren() { exits[pid] = status }
        }
        reportDeath(entry, status: exits[entry.pid])
      }
      flushStandardOutput()
      try? await Task.sleep(for: .milliseconds(150))
    }
    print("\nstopping the shop (gateway and apps, then sidecars, then the control plane)…")
    flushStandardOutput()
    run = ShopRun.load() ?? run
    let stopping = Task {
      while !Task.isCancelled {
        logs.printNew()
        try? await Task.sleep(for: .milliseconds(150))
      }
    }
    let stopped = await stopAll(run)
    stopping.cancel()
    logs.printNew()
    for entry in stopped.killed {
      print("\(entry.name) (pid \(entry.pid)) did not exit within 20 s of SIGTERM: killed")
    }
    guard stopped.remaining.isEmpty else {
      print(
        "still running after SIGKILL: "
          + stopped.remaining.map { "\($0.name) (pid \($0.pid))" }.joined(separator: ", "))
      return
    }
    try? FileManager.default.removeItem(atPath: ShopRun.file)
    print("stopped; the data stays in \(ShopRun.folder)/")
  }

  /// The log lines of the processes of a run, each prefixed with its process's name: from
  /// where each file ended when `up` began, so a second run shows only its own lines.
  final class LogStream: @unchecked Sendable {
    private let lock = NSLock()
    private var followers: [String: LogFollower] = [:]
    private let startOffsets: [String: UInt64]

    init(startOffsets: [String: UInt64]) {
      self.startOffsets = startOffsets
    }

    func follow(_ entries: [ShopRun.Entry]) {
      lock.withLock {
        for entry in entries where followers[entry.log] == nil {
          followers[entry.log] = LogFollower(
            name: entry.name, path: entry.log,
            from: startOffsets[entry.log] ?? Launcher.fileSize(entry.log))
        }
      }
    }

    func printNew() {
      lock.withLock {
        for key in followers.keys.sorted() { followers[key]?.printNew() }
      }
      flushStandardOutput()
    }
  }

  final class StopFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    func set() { lock.withLock { value = true } }
    var isSet: Bool { lock.withLock { value } }
  }

  static func reportDeath(_ entry: ShopRun.Entry, status: Int32?) {
    let how: String
    if let status {
      let signal = status & 0x7f
      how =
        signal == 0
        ? "exited with status \((status >> 8) & 0xff)" : "was killed by signal \(signal)"
    } else {
      how = "is no longer running"
    }
    print("[meshctl] \(entry.name) (pid \(entry.pid)) \(how); its last lines (\(entry.log)):")
    for line in LocalProcesses.tail(entry.log, lines: 15) { print("    \(line)") }
  }

  /// Stops the gateway and the apps, then the sidecars (so calls in flight finish through
  /// them), then the control plane; each group gets `timeout` after SIGTERM before SIGKILL.
  /// Returns once every process has ended, or says which have not.
  @discardableResult
  static func stopAll(
    _ run: ShopRun, timeout: Duration = .seconds(20)
  ) async
    -> LocalProcesses.Stopped
  {
    let apps = run.processes.filter { $0.role == .app }
    var stopped = LocalProcesses.Stopped()
    for group in [
      apps.filter { $0.service == "gateway" } + run.processes.filter { $0.role == .dashboard },
      apps.filter { $0.service != "gateway" },
      run.processes.filter { $0.role == .sidecar },
      run.processes.filter { $0.role == .controlPlane },
      run.processes.filter { $0.role == .etcd },
      run.processes.filter { $0.role == .postgres },
    ] {
      // PostgreSQL's SIGTERM waits for every session to end; SIGINT ends them (its "fast").
      let signal = group.first?.role == .postgres ? SIGINT : SIGTERM
      stopped.add(await LocalProcesses.stop(group, signal: signal, timeout: timeout))
    }
    return stopped
  }

  static func printSummary(_ run: ShopRun) {
    let launcher = Launcher(run: run)
    var rows = [["PROCESS", "PID", "ADDRESS", "LOG"]]
    for entry in run.processes {
      let address: String
      switch entry.role {
      case .sidecar:
        let ports = run.slotPorts(entry.slot ?? 0)
        address = "in :\(ports.inbound) out :\(ports.outbound) admin :\(ports.admin)"
      case .app where entry.service == "gateway", .dashboard: address = "http://\(entry.address)"
      default: address = entry.address
      }
      rows.append([entry.name, "\(entry.pid)", address, entry.log])
    }
    print("")
    printTable(rows)
    if let postgres = run.postgres {
      print(
        """

        The shop's data is in PostgreSQL at \(postgres.host):\(postgres.port): databases \
        \(databaseServices.map { "shop_\($0)" }.joined(separator: ", ")), each with a role of \
        its name\(postgres.folder.map { " (the cluster: \($0))" } ?? "").
        """)
    }
    let gateway = "http://127.0.0.1:\(run.ports.gateway)"
    let dashboard = run.processes.first { $0.role == .dashboard }.map {
      "\nThe dashboard is http://\($0.address)/ (the service graph, services, traces)."
    }
    print(
      """

      The shop is running on the mesh\(run.detached ? " (meshctl down stops it)" : " (Ctrl-C stops it)").\(dashboard ?? "")
      The gateway is \(gateway); its API key is in \(run.apiKeyFile). Try:

        key=\(launcher.apiKey)
        curl -s -H "x-api-key: $key" \(gateway)/v1/users -d '{"email":"ada@example.com","name":"Ada"}'
        curl -s -H "x-api-key: $key" \(gateway)/v1/customers/USER_ID
        curl -s -H "x-api-key: $key" \(gateway)/v1/orders -d '{"userId":"USER_ID","lineItems":[{"sku":"TEA","quantity":2,"unitPrice":{"currencyCode":"EUR","minorUnits":450}}]}'
        meshctl status          meshctl top          meshctl trace list
        meshctl logs orders     meshctl restart orders   meshctl check

      """)
    flushStandardOutput()
  }

  // MARK: - Helpers

  static var ownExecutable: String {
    (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
      ?? CommandLine.arguments[0]
  }

  static func fileSize(_ path: String) -> UInt64 {
    ((try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? NSNumber)?.uint64Value
      ?? 0
  }

  /// Runs a tool to the end; its output (standard output and error together), or shown as it
  /// comes with `echo`.
  static func runTool(
    _ program: String, _ arguments: [String], echo: Bool = false
  ) throws
    -> (status: Int32, output: String)
  {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: program)
    process.arguments = arguments
    let pipe = Pipe()
    if !echo {
      process.standardOutput = pipe
      process.standardError = pipe
    }
    try process.run()
    let data = echo ? Data() : pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self))
  }
}
