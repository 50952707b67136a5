import ArgumentParser
import Foundation
import LocalPostgres
import MeshDashboard
import MeshIdentity
import MeshProtos
import ShopSupport

#if canImport(Glibc)
  import Glibc
#endif

/// `meshctl up`: the whole shop on the mesh, on loopback, in one command.
struct Up: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Start the shop on a local mesh: control plane, services, sidecars and gateway.",
    usage: "meshctl up [<options>]",
    discussion: """
      Builds what is needed (release), creates the CA in certs/ if there is none, starts the \
      control plane, applies .trellis/mesh.yaml (written with the shop's defaults the first \
      time), and starts events, payments, users, orders and the gateway, each beside its \
      sidecar, joined with a fresh token. It waits until every one is ready, then prints what \
      is where. Run state lives in .trellis/; a second `up` reuses the data.

      In the foreground (the default) each process's log lines are shown prefixed with its \
      name, and Ctrl-C stops everything gracefully. With --detach it returns once the shop is \
      ready; `meshctl down` stops it.
      """)

  @Flag(help: "Return once everything is ready; stop it with `meshctl down`.") var detach = false
  @Flag(
    help: "Use the executables already built (beside meshctl, or in --bin) instead of building.")
  var noBuild = false
  @Option(help: "The folder of the executables (default: built with swift build -c release).")
  var bin: String?
  @Option(
    help: "Instances per service, SERVICE=N (repeatable): --replicas orders=3.",
    transform: Replicas.parse)
  var replicas: [Replicas] = []
  @OptionGroup var ports: PortOptions
  @Flag(
    help: """
      Keep the shop's data in PostgreSQL: a local cluster (initdb, the server, a database and a \
      role per service) in .trellis/postgres/ (as root: run as the postgres user, under \
      /var/lib/trellis/). Without it, each service has a SQLite file.
      """)
  var postgres = false
  @Option(
    help: """
      Keep the shop's data on an existing PostgreSQL server, reached as an admin that may \
      create roles and databases: postgres://ADMIN@HOST:PORT/DB?password_file=FILE.
      """)
  var postgresURL: String?
  @Option(help: "The local PostgreSQL cluster's port (default: the control plane port + 30).")
  var postgresPort: Int?

  func validate() throws {
    if postgres, postgresURL != nil {
      throw ValidationError("--postgres starts a local cluster; --postgres-url uses a server: one")
    }
    if let postgresURL {
      do {
        _ = try PostgresLocation(postgresURL)
      } catch {
        throw ValidationError("--postgres-url: \(error)")
      }
    }
  }

  func run() async throws {
    if let previous = ShopRun.load(), !previous.running.isEmpty {
      throw MeshctlFailure(
        "the shop is already running (\(previous.running.count) processes, from \(ShopRun.file)); "
          + "run `meshctl down` first, or `meshctl status`")
    }
    let counts = try Replicas.counts(replicas)
    let binFolder = try resolveBin()
    let chosen = ports.chosen
    var plan = ShopRun(
      bin: binFolder, ports: chosen, detached: detach,
      apiKeyFile: ShopRun.folder + "/api-keys", processes: [])
    let instances = ShopLayout.services.flatMap { service in
      let count = counts[service.name] ?? 1
      return (1...count).map { count == 1 ? service.name : "\(service.name)-\($0)" }
        .map { (service, $0) }
    }
    try preflight(plan, instances: instances.count)

    var launcher = Launcher(run: plan)
    try FileManager.default.createDirectory(
      atPath: ShopRun.folder + "/logs", withIntermediateDirectories: true)
    // In the foreground, every process's lines are shown from its start.
    let planes =
      chosen.replicas == 1
      ? ["control-plane"]
      : (1...chosen.replicas).flatMap { ["etcd-\($0)", "control-plane-\($0)"] }
    let logNames =
      (postgres ? ["postgres"] : []) + planes + ["dashboard"]
      + instances.flatMap { [$0.1, $0.1 + "-sidecar"] }
    let logs = Launcher.LogStream(
      startOffsets: Dictionary(
        uniqueKeysWithValues: logNames.map {
          let path = ShopRun.folder + "/logs/\($0).log"
          return (path, Launcher.fileSize(path))
        }))
    let streaming =
      detach
      ? nil
      : Task {
        while !Task.isCancelled {
          logs.follow(ShopRun.load()?.processes ?? [])
          logs.printNew()
          try? await Task.sleep(for: .milliseconds(150))
        }
      }
    try launcher.ensureCA()
    try launcher.ensureAPIKey()
    var failure: (any Error)?
    do {
      if postgres {
        let (run, entry) = try await launcher.startLocalPostgres(
          port: postgresPort ?? chosen.controlPlane + 30)
        plan.postgres = run
        plan.processes.append(entry)
        try plan.save()
      } else if let postgresURL {
        plan.postgres = try await launcher.useExistingPostgres(try PostgresLocation(postgresURL))
        try plan.save()
      }
      // The services' databases are known now.
      launcher = Launcher(run: plan)
      plan.processes += try launcher.startEtcd()
      try plan.save()
      for replica in 0..<chosen.replicas {
        plan.processes.append(try await launcher.startControlPlane(replica: replica))
        try plan.save()
      }
      try await launcher.applyMeshConfig()
      plan.processes.append(try launcher.startDashboard())
      try plan.save()
      for (slot, (service, instance)) in instances.enumerated() {
        plan.processes += try await launcher.startInstance(service, instance: instance, slot: slot)
        try plan.save()
      }
      try await launcher.waitUntilReady(plan)
    } catch {
      failure = error
    }
    streaming?.cancel()
    logs.printNew()
    if let failure {
      print("meshctl up: \(failure)")
      for entry in plan.processes where !LocalProcesses.isRunning(entry.pid) {
        Launcher.reportDeath(entry, status: nil)
      }
      print("stopping what was started…")
      await Launcher.stopAll(plan)
      try? FileManager.default.removeItem(atPath: ShopRun.file)
      throw ExitCode.failure
    }
    Launcher.printSummary(plan)
    if detach { return }
    await Launcher.foreground(plan, logs: logs)
  }

  func resolveBin() throws -> String {
    if let bin { return URL(fileURLWithPath: bin).standardizedFileURL.path }
    if noBuild {
      // Beside this meshctl.
      let me =
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
        ?? CommandLine.arguments[0]
      return URL(fileURLWithPath: me).deletingLastPathComponent().standardizedFileURL.path
    }
    guard FileManager.default.fileExists(atPath: "Package.swift") else {
      throw MeshctlFailure(
        """
        no Package.swift here: run meshctl up in the repository's folder, or pass --no-build / \
        --bin
        """
      )
    }
    print("building the mesh and the shop (swift build -c release; the first build takes minutes)…")
    let build = try Launcher.runTool(
      "/usr/bin/env", ["swift", "build", "-c", "release"], echo: true)
    guard build.status == 0 else {
      throw MeshctlFailure("swift build failed (exit \(build.status))")
    }
    let path = try Launcher.runTool(
      "/usr/bin/env", ["swift", "build", "-c", "release", "--show-bin-path"])
    return path.output.trimmingCharacters(in: .whitespacesAndNewlines)
  }

  func preflight(_ plan: ShopRun, instances: Int) throws {
    for executable in ShopLayout.executables {
      let path = plan.bin + "/" + executable
      guard FileManager.default.isExecutableFile(atPath: path) else {
        throw MeshctlFailure(
          """
          \(path) is missing: build first (swift build -c release), or run meshctl up without \
          --no-build
          """
        )
      }
    }
    if plan.ports.replicas > 1 {
      _ = try Launcher.locate("etcd", hint: "apt-get install etcd-server")
    }
    if postgres {
      do {
        _ = try LocalPostgres.binaries()
      } catch {
        throw MeshctlFailure("\(error)")
      }
    }
    var taken: [String] = []
    let wanted =
      [("the gateway", plan.ports.gateway)]
      + plan.ports.replicaPorts.flatMap {
        [("the control plane", $0.api), ("the control plane's join listener", $0.join)]
      }
      + plan.ports.etcdPorts.flatMap { [("etcd", $0.client), ("etcd's peers", $0.peer)] }
      + (postgres ? [("PostgreSQL", postgresPort ?? plan.ports.controlPlane + 30)] : [])
      + (0..<instances).flatMap { slot in
        let p = plan.slotPorts(slot)
        return [p.inbound, p.outbound, p.admin, p.app].map { ("slot \(slot)", $0) }
      }
    let dashboard: [(String, Int)] = plan.ports.dashboard.map { [("the dashboard", $0)] } ?? []
    for (what, port) in wanted + dashboard where !LocalProcesses.isFree(port) {
      taken.append("127.0.0.1:\(port) (\(what))")
    }
    if !taken.isEmpty {
      throw MeshctlFailure(
        "ports already in use: \(taken.joined(separator: ", ")). Stop what holds them, or move "
          + "the shop with --base-port, --gateway-port and --control-plane-port")
    }
  }
}

/// The ports a local mesh uses.
struct PortOptions: ParsableArguments {
  @Option(help: "The first port of the sidecars and apps (each instance takes the next 10).")
  var basePort = 16000
  @Option(help: "The gateway's HTTP port.") var gatewayPort = 8080
  @Option(help: "The control plane's API port (its join listener takes the next).")
  var controlPlanePort = 15000
  @Option(
    help: """
      Control plane replicas. One keeps its state in SQLite; several (3 or 5) share a local etcd \
      cluster of as many members (data in .trellis/etcd/; replica N takes the control plane \
      ports + 2N, etcd member N the ports from the control plane port + 20 + 2N).
      """)
  var controlPlanes = 1
  @Option(help: "The dashboard's port (default: the control plane port + 80).")
  var dashboardPort: Int?

  var chosen: ShopRun.Ports {
    .init(
      base: basePort, gateway: gatewayPort, controlPlane: controlPlanePort,
      controlPlanes: controlPlanes == 1 ? nil : controlPlanes,
      dashboard: dashboardPort ?? controlPlanePort + 80)
  }

  func validate() throws {
    guard [1, 3, 5].contains(controlPlanes) else {
      throw ValidationError(
        "--control-planes \(controlPlanes): 1 (SQLite), or 3 or 5 (an etcd cluster keeps a majority)"
      )
    }
  }
}

struct Replicas {
  let service: String
  let count: Int

  static func parse(_ text: String) throws -> Replicas {
    let parts = text.split(separator: "=", maxSplits: 1).map(String.init)
    guard parts.count == 2, let count = Int(parts[1]), (1...9).contains(count) else {
      throw ValidationError("--replicas \(text): expected SERVICE=N with N from 1 to 9")
    }
    return Replicas(service: parts[0], count: count)
  }

  static func counts(_ list: [Replicas]) throws -> [String: Int] {
    var counts: [String: Int] = [:]
    for replicas in list {
      guard ShopLayout.services.contains(where: { $0.name == replicas.service }) else {
        throw ValidationError(
          "--replicas \(replicas.service)=\(replicas.count): no such service; the shop has "
            + ShopLayout.services.map(\.name).joined(separator: ", "))
      }
      if replicas.service == "gateway", replicas.count > 1 {
        throw ValidationError(
          "--replicas gateway=\(replicas.count): the gateway holds one HTTP port")
      }
      counts[replicas.service] = replicas.count
    }
    return counts
  }
}

/// `meshctl down`
struct Down: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract:
      "Stop what `meshctl up` started, gracefully (gateway and apps, sidecars, control plane).",
    discussion: """
      Each group is sent SIGTERM and given --timeout to finish its calls and exit; what is \
      still running then is sent SIGKILL. It returns once every process has exited, and \
      names those it had to kill; a process that outlives even SIGKILL is named and the exit \
      status is 1.
      """)

  @Option(help: "Seconds each group may take to exit after SIGTERM, before SIGKILL.")
  var timeout: Double = 20

  func run() async throws {
    guard var run = ShopRun.load() else {
      print("nothing to stop: no \(ShopRun.file) here")
      return
    }
    guard timeout > 0 else { throw ValidationError("--timeout must be more than 0 seconds") }
    run.stopping = true
    try? run.save()
    let running = run.running
    let stopped = await Launcher.stopAll(run, timeout: .milliseconds(Int64(timeout * 1000)))
    let seconds = timeout == timeout.rounded() ? String(Int(timeout)) : String(timeout)
    for entry in stopped.killed {
      print(
        "\(entry.name) (pid \(entry.pid)) did not exit within \(seconds) s of SIGTERM: "
          + "killed")
    }
    guard stopped.remaining.isEmpty else {
      throw MeshctlFailure(
        "still running after SIGKILL: "
          + stopped.remaining.map { "\($0.name) (pid \($0.pid))" }.joined(separator: ", ")
          + "; \(ShopRun.file) is kept, so meshctl down can be run again")
    }
    try? FileManager.default.removeItem(atPath: ShopRun.file)
    let data =
      run.postgres.map { postgres in
        postgres.folder.map { "\(ShopRun.folder)/ and \($0)/" }
          ?? "\(ShopRun.folder)/ and on \(postgres.host):\(postgres.port)"
      } ?? "\(ShopRun.folder)/"
    print("stopped \(running.count) processes; the data stays in \(data)")
  }
}

/// `meshctl logs SERVICE [--follow]`
struct Logs: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Show the log of a process `meshctl up` started.",
    discussion: """
      NAME is a process (users, users-sidecar, orders-2, control-plane) or a service, which \
      shows each of its instances' apps.
      """)

  @Argument(help: "A process or a service.") var name: String?
  @Option(
    help: """
      Instead: every line of every process that carries this trace id, in time order, each \
      named by its process.
      """)
  var trace: String?
  @Flag(name: .shortAndLong, help: "Keep printing lines as they are written.") var follow = false
  @Option(name: [.customShort("n"), .long], help: "Lines from the end to start with.")
  var lines = 100

  func run() async throws {
    guard let run = ShopRun.load() else {
      throw MeshctlFailure("no \(ShopRun.file) here: start the shop with meshctl up")
    }
    if let trace {
      let id = trace.lowercased()
      guard id.count == 32, id.allSatisfy(\.isHexDigit) else {
        throw ValidationError("--trace '\(trace)': a trace id is 32 hex digits")
      }
      let lines = LogCollector(capacity: 1_000_000, firstRead: .max) { run.logSources }
        .search(trace: id, limit: 100_000)
      guard !lines.isEmpty else { throw MeshctlFailure("no log line carries trace \(id)") }
      let width = lines.map(\.process.count).max() ?? 0
      for line in lines {
        print("\(line.process.padding(toLength: width, withPad: " ", startingAt: 0))  \(line.text)")
      }
      return
    }
    guard let name else {
      throw ValidationError("name a process or a service, or give --trace ID")
    }
    var chosen = run.processes.filter { $0.name == name }
    if chosen.isEmpty { chosen = run.processes.filter { $0.service == name && $0.role == .app } }
    guard !chosen.isEmpty else {
      throw MeshctlFailure(
        "no process or service \(name); there are "
          + run.processes.map(\.name).joined(separator: ", "))
    }
    let prefix = chosen.count > 1
    var offsets: [String: UInt64] = [:]
    for entry in chosen {
      for line in LocalProcesses.tail(entry.log, lines: lines) {
        print(prefix ? "[\(entry.name)] \(line)" : line)
      }
      offsets[entry.log] = Launcher.fileSize(entry.log)
    }
    guard follow else { return }
    var followers = chosen.map {
      LogFollower(name: prefix ? $0.name : nil, path: $0.log, from: offsets[$0.log] ?? 0)
    }
    while !Task.isCancelled {
      for index in followers.indices { followers[index].printNew() }
      flushStandardOutput()
      try await Task.sleep(for: .milliseconds(200))
    }
  }
}

/// `meshctl restart SERVICE`
struct Restart: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Roll a service's instances one at a time, without failing a call.",
    discussion: """
      For each instance: a new one is started (with its sidecar) and waited for until it is \
      registered, then the old app reports NOT_SERVING, its sidecar withdraws it, and only then \
      do the old app and sidecar stop, finishing their calls. The control plane is stopped \
      and started again on its ports and data (sidecars serve on meanwhile, then subscribe \
      again). The local PostgreSQL (`up --postgres`) is stopped, ending its sessions, and \
      started again: calls that need it fail with UNAVAILABLE meanwhile, and the services' \
      pools connect again by themselves. The gateway holds one port: the \
      new gateway starts beside its new sidecar and waits for the port, the old one closes its \
      listener and finishes its requests, and the new one takes the port at once.
      """)

  @Argument(
    help: """
      The service: users, orders, payments, events, gateway, control-plane, dashboard or \
      postgres.
      """)
  var service: String

  func run() async throws {
    guard var run = ShopRun.load(), !run.running.isEmpty else {
      throw MeshctlFailure("the shop is not running here (no live \(ShopRun.file)): meshctl up")
    }
    if service == "control-plane" {
      try await restartControlPlane(&run)
      return
    }
    if service == "postgres" {
      try await restartPostgres(&run)
      return
    }
    if service == "dashboard" {
      let old = run.processes.filter { $0.role == .dashboard }
      await LocalProcesses.stop(old)
      run.processes.removeAll { $0.role == .dashboard }
      let fresh = try Launcher(run: run).startDashboard()
      run.processes.append(fresh)
      try run.save()
      try await Launcher(run: run).waitUntilReady(run, only: [fresh])
      print("restarted dashboard: now pid \(fresh.pid)")
      return
    }
    guard let layout = ShopLayout.services.first(where: { $0.name == service }) else {
      throw MeshctlFailure(
        "no service \(service); restart one of "
          + (ShopLayout.services.map(\.name) + ["control-plane", "dashboard", "postgres"])
          .joined(separator: ", "))
    }
    let instances = Array(Set(run.processes.filter { $0.service == service }.map(\.instance)))
      .sorted()
    let launcher = Launcher(run: run)
    for instance in instances {
      let old = run.processes.filter { $0.instance == instance }
      let slot = run.freeSlot
      if service == "gateway" {
        // One HTTP port, handed over: the new gateway starts beside its new sidecar and waits
        // for the port; the old one closes its listener on SIGTERM (its requests in flight
        // finish) and the new one takes the port at once (the port is without a listener for
        // milliseconds; stopping and starting left it without one for half a second).
        let fresh = try await launcher.startInstance(
          layout, instance: instance, slot: slot, takingOverPort: true)
        run.processes += fresh
        try run.save()
        try await launcher.waitUntilWaitingForThePort(run, fresh)
        await LocalProcesses.stop(old.filter { $0.role == .app })
        try await launcher.waitUntilReady(run, only: fresh)
        await LocalProcesses.stop(old.filter { $0.role == .sidecar })
        let oldPIDs = Set(old.map(\.pid))
        run.processes.removeAll { oldPIDs.contains($0.pid) }
        try run.save()
        print("restarted \(instance): now pid \(fresh.first { $0.role == .app }?.pid ?? 0)")
        continue
      }
      let fresh = try await launcher.startInstance(layout, instance: instance, slot: slot)
      run.processes += fresh
      try run.save()
      try await launcher.waitUntilReady(run, only: fresh)
      // The old app reports NOT_SERVING (its --shutdown-delay), its sidecar withdraws the
      // endpoint and the control plane pushes that; the app then finishes its calls and ends.
      await LocalProcesses.stop(old.filter { $0.role == .app })
      await LocalProcesses.stop(old.filter { $0.role == .sidecar })
      let oldPIDs = Set(old.map(\.pid))
      run.processes.removeAll { oldPIDs.contains($0.pid) }
      try run.save()
      print("restarted \(instance): now pid \(fresh.first { $0.role == .app }?.pid ?? 0)")
    }
  }
}

extension Restart {
  /// The local PostgreSQL: stopped "fast" (sessions ended) and started again on its port and
  /// data.
  private func restartPostgres(_ run: inout ShopRun) async throws {
    guard let postgres = run.postgres, postgres.folder != nil,
      let old = run.processes.first(where: { $0.role == .postgres })
    else {
      throw MeshctlFailure("the shop's PostgreSQL is not one meshctl up --postgres started")
    }
    let stopped = await LocalProcesses.stop([old], signal: SIGINT, timeout: .seconds(30))
    guard stopped.remaining.isEmpty else {
      throw MeshctlFailure("postgres (pid \(old.pid)) did not stop")
    }
    let position = run.processes.firstIndex { $0.pid == old.pid } ?? 0
    run.processes.removeAll { $0.pid == old.pid }
    let (_, fresh) = try await Launcher(run: run).startLocalPostgres(port: postgres.port)
    run.processes.insert(fresh, at: position)
    try run.save()
    print("restarted postgres: now pid \(fresh.pid)")
  }

  /// The control plane on SIGTERM ends its streams and exits; meanwhile the sidecars serve on
  /// with the config they run. The new one starts on the same ports and data, and every
  /// sidecar subscribes again (within its backoff), registers, and runs the current version.
  /// With several replicas, one at a time: the sidecars of the one restarting move to the
  /// others meanwhile.
  private func restartControlPlane(_ run: inout ShopRun) async throws {
    let replicas = run.processes.filter { $0.role == .controlPlane }
    for (index, old) in replicas.enumerated() {
      await LocalProcesses.stop([old])
      let position = run.processes.firstIndex { $0.pid == old.pid } ?? 0
      run.processes.removeAll { $0.pid == old.pid }
      let fresh = try await Launcher(run: run).startControlPlane(replica: index)
      run.processes.insert(fresh, at: position)
      try run.save()
      // The replicas not restarted yet may be down (why one restarts them): not waited for.
      try await Launcher(run: run).waitUntilReady(
        run, only: run.processes.filter { $0.role != .controlPlane || $0.pid == fresh.pid })
      print("restarted \(fresh.name): now pid \(fresh.pid)")
    }
  }
}

/// Follows a log file from an offset, printing complete new lines.
struct LogFollower {
  let name: String?
  let path: String
  var offset: UInt64
  var partial = ""

  init(name: String?, path: String, from offset: UInt64) {
    self.name = name
    self.path = path
    self.offset = offset
  }

  mutating func printNew() {
    guard let handle = FileHandle(forReadingAtPath: path) else { return }
    defer { try? handle.close() }
    let size = (try? handle.seekToEnd()) ?? 0
    if size < offset { offset = 0 }
    guard size > offset else { return }
    try? handle.seek(toOffset: offset)
    let data = handle.readData(ofLength: Int(size - offset))
    offset += UInt64(data.count)
    partial += String(decoding: data, as: UTF8.self)
    while let newline = partial.firstIndex(of: "\n") {
      let line = partial[..<newline]
      print(name.map { "[\($0)] \(line)" } ?? String(line))
      partial = String(partial[partial.index(after: newline)...])
    }
  }
}
