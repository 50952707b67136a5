import ArgumentParser
import EtcdAPI
import Foundation
import Logging
import MeshIdentity
import MeshProtos
import PostgresNIO
import ShopSupport
import X509

/// `meshctl check`: a preflight of the local mesh, each check with what to do when it fails.
struct Check: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Check the local mesh: the CA, the ports, each process, each sidecar, the config.",
    usage: "meshctl check [<options>]",
    discussion: """
      Before `meshctl up`: the CA and the ports it needs. While the shop runs: every process it \
      started, the control plane, each sidecar's readiness, certificate and config (synced, not \
      NACKed), and the gateway. Each problem is printed with how to fix it; the exit status is \
      1 when there is one.
      """)

  @OptionGroup var ports: PortOptions
  @Option(help: "Warn about a CA certificate that expires within this many days.")
  var expiryWarningDays = 30

  struct Report {
    var failures = 0
    mutating func pass(_ what: String) { print("√ \(what)") }
    mutating func fail(_ what: String, fix: String) {
      failures += 1
      print("× \(what)\n    fix: \(fix)")
    }
    func warn(_ what: String, fix: String) { print("‼ \(what)\n    fix: \(fix)") }
  }

  func run() async throws {
    var report = Report()
    checkCA(&report)
    let run = ShopRun.load()
    let alive = run?.running ?? []
    if let run, !alive.isEmpty {
      await checkRunning(run, &report)
    } else {
      print("the shop is not running here; checking what meshctl up needs")
      let chosen = ports.chosen
      let plan = ShopRun(bin: "", ports: chosen, detached: false, apiKeyFile: "", processes: [])
      let wanted =
        [chosen.gateway]
        + chosen.replicaPorts.flatMap { [$0.api, $0.join] }
        + chosen.etcdPorts.flatMap { [$0.client, $0.peer] }
        + (0..<ShopLayout.services.count).flatMap { slot -> [Int] in
          let p = plan.slotPorts(slot)
          return [p.inbound, p.outbound, p.admin, p.app]
        }
      let taken = wanted.filter { !LocalProcesses.isFree($0) }
      if taken.isEmpty {
        report.pass(
          """
          the ports meshctl up uses are free (\(wanted.count) from \(chosen.base), \
          \(chosen.gateway), \(chosen.controlPlane))
          """
        )
      } else {
        report.fail(
          "ports taken: " + taken.map { "127.0.0.1:\($0)" }.joined(separator: ", "),
          fix:
            """
            stop what holds them (ss -ltnp shows it), or pass --base-port, --gateway-port, \
            --control-plane-port
            """
        )
      }
    }
    print(report.failures == 0 ? "\nall checks passed" : "\n\(report.failures) check(s) failed")
    if report.failures > 0 { throw ExitCode.failure }
  }

  func checkCA(_ report: inout Report) {
    let files = CAFiles(dir: "certs")
    guard FileManager.default.fileExists(atPath: files.root) else {
      report.fail(
        "no CA in certs/", fix: "meshctl certs init (meshctl up makes one when there is none)")
      return
    }
    for (name, path) in [
      ("root", files.root), ("issuer", files.issuer), ("operator", files.operatorCertificate),
    ] {
      guard let text = try? String(contentsOfFile: path, encoding: .utf8),
        let end = text.range(of: "-----END CERTIFICATE-----"),
        let certificate = try? Certificate(pemEncoded: String(text[..<end.upperBound]))
      else {
        report.fail(
          "certs/: the \(name) certificate (\(path)) cannot be read",
          fix: "meshctl certs init --force makes a new CA")
        continue
      }
      let left = certificate.notValidAfter.timeIntervalSinceNow
      if left <= 0 {
        report.fail(
          "the \(name) certificate expired on \(certificate.notValidAfter)",
          fix: name == "operator"
            ? "meshctl certs init --force"
            : "meshctl certs rotate-ca\(name == "root" ? " --root" : "")")
      } else if left < Double(expiryWarningDays) * 86400 {
        report.warn(
          """
          the \(name) certificate expires in \(Int(left / 86400)) days \
          (\(certificate.notValidAfter))
          """,
          fix: name == "operator"
            ? "meshctl certs init --force"
            : "meshctl certs rotate-ca\(name == "root" ? " --root" : "")")
      } else {
        report.pass("the \(name) certificate is valid until \(certificate.notValidAfter)")
      }
    }
  }

  /// Each etcd member (several replicas only) answers, and they agree on a leader.
  func checkEtcd(_ run: ShopRun, _ report: inout Report) async {
    var leaders = Set<UInt64>()
    for (index, ports) in run.ports.etcdPorts.enumerated() {
      let name = "etcd-\(index + 1)"
      do {
        let client = try EtcdClient(endpoints: [.init(host: "127.0.0.1", port: ports.client)])
        let connections = Task { try await client.run() }
        defer {
          client.close()
          connections.cancel()
        }
        let status = try await withThrowingTaskGroup(of: Etcdserverpb_StatusResponse?.self) {
          group in
          group.addTask { try await client.status() }
          group.addTask {
            try await Task.sleep(for: .seconds(3))
            return nil
          }
          defer { group.cancelAll() }
          guard let first = try await group.next(), let status = first else {
            throw MeshctlFailure("no answer within 3 s")
          }
          return status
        }
        leaders.insert(status.leader)
        report.pass(
          "\(name) serves at 127.0.0.1:\(ports.client) (version \(status.version), database \(status.dbSize / 1024) KiB\(status.leader == status.header.memberID ? ", leader" : ""))"
        )
      } catch {
        report.fail(
          "\(name) does not answer at 127.0.0.1:\(ports.client): \(error)",
          fix: "meshctl logs \(name)")
      }
    }
    if leaders.count > 1 || leaders.contains(0) {
      report.fail(
        "the etcd members do not agree on a leader", fix: "meshctl logs etcd-1 (and the others)")
    }
  }

  /// On PostgreSQL: each service's database answers a query made as that service's role.
  func checkDatabases(_ run: ShopRun, _ report: inout Report) async {
    guard let postgres = run.postgres else { return }
    for (service, url) in postgres.urls.sorted(by: { $0.key < $1.key }) {
      do {
        let location = try PostgresLocation(url)
        let connection = try await PostgresConnection.connect(
          configuration: .init(
            host: location.host, port: location.port, username: location.user,
            password: try location.password(), database: location.database, tls: .disable),
          id: 1, logger: Logger(label: "meshctl"))
        do {
          _ = try await connection.query("SELECT 1", logger: Logger(label: "meshctl")).collect()
          try? await connection.close()
        } catch {
          try? await connection.close()
          throw error
        }
        report.pass("the \(service) database answers (\(location))")
      } catch {
        report.fail(
          "the \(service) database does not answer at \(postgres.host):\(postgres.port): "
            + "\(String(reflecting: error).prefix(300))",
          fix: postgres.folder == nil ? "check the PostgreSQL server" : "meshctl logs postgres")
      }
    }
  }

  func checkRunning(_ run: ShopRun, _ report: inout Report) async {
    for entry in run.processes {
      if LocalProcesses.isRunning(entry.pid) {
        report.pass("\(entry.name) runs (pid \(entry.pid))")
      } else {
        let last = LocalProcesses.tail(entry.log, lines: 3).joined(separator: "\n      ")
        report.fail(
          "\(entry.name) (pid \(entry.pid)) is not running; its last lines:\n      \(last)",
          fix: "meshctl logs \(entry.name); then meshctl down && meshctl up")
      }
    }
    let launcher = Launcher(run: run)
    await checkDatabases(run, &report)
    await checkEtcd(run, &report)
    var unanswered: [Trellis_Mesh_V1_Replica] = []
    guard
      let (status, _, replicas) = try? await launcher.controlPlane.mergedStatus(unanswered: {
        replica, _ in unanswered.append(replica)
      })
    else {
      report.fail(
        "the control plane does not answer at \(run.ports.controlPlaneList)",
        fix: "meshctl logs control-plane")
      return
    }
    for replica in unanswered {
      report.fail(
        "control plane replica \(replica.name) does not answer at \(replica.address)",
        fix: "meshctl logs \(replica.name)")
    }
    if replicas < run.ports.replicas {
      report.fail(
        "\(replicas) of \(run.ports.replicas) control plane replicas are announced in etcd",
        fix: "meshctl logs control-plane-N for the missing ones; meshctl restart control-plane")
    }
    report.pass(
      """
      \(run.ports.replicas == 1 ? "the control plane answers" : "\(replicas - unanswered.count) control plane replicas answer"); \
      config version \(status.currentVersion) is running
      """)
    for entry in run.processes where entry.role == .sidecar {
      let ports = run.slotPorts(entry.slot ?? 0)
      let ready = LocalProcesses.httpRequest(port: ports.admin, path: "/ready", timeout: 2)
      if ready?.status == 200 {
        report.pass("\(entry.name) is ready")
      } else {
        report.fail(
          "\(entry.name) is not ready (\(ready.map { "\($0.status): \($0.body.trimmingCharacters(in: .whitespacesAndNewlines))" } ?? "no answer at 127.0.0.1:\(ports.admin)"))",
          fix: "meshctl logs \(entry.name)")
      }
      guard
        let sidecar = status.sidecars.first(where: {
          $0.registeredAddress == "127.0.0.1:\(ports.inbound)"
            || $0.node.hasSuffix("@127.0.0.1:\(ports.inbound)")
        })
      else {
        report.fail(
          "\(entry.name) is not subscribed to the control plane", fix: "meshctl logs \(entry.name)")
        continue
      }
      if sidecar.lastNackVersion != 0, sidecar.lastNackVersion >= sidecar.version {
        report.fail(
          """
          \(entry.name) NACKed config version \(sidecar.lastNackVersion): \(sidecar.lastNackError)
          """,
          fix:
            "fix .trellis/mesh.yaml and meshctl apply -f .trellis/mesh.yaml (or meshctl rollback)")
      } else if sidecar.version != status.currentVersion {
        report.fail(
          "\(entry.name) runs config version \(sidecar.version), not \(status.currentVersion)",
          fix: "wait a moment; if it stays, meshctl logs \(entry.name)")
      } else {
        report.pass("\(entry.name) runs config version \(sidecar.version)")
      }
      if !sidecar.registered {
        report.fail(
          "\(entry.name)'s endpoint is not registered (its app is not SERVING)",
          fix: "meshctl logs \(entry.instance)")
      }
      let expires = Date(timeIntervalSince1970: TimeInterval(sidecar.certificateNotAfterUnix))
      if sidecar.certificateNotAfterUnix != 0, expires.timeIntervalSinceNow < 3600 {
        report.fail(
          "\(entry.name)'s certificate expires at \(expires)",
          fix: "meshctl certs rotate --service \(entry.service)")
      }
    }
    let answer = LocalProcesses.httpRequest(
      port: run.ports.gateway, path: "/v1/users/usr_check", headers: ["x-api-key": launcher.apiKey])
    if answer?.status == 404 {
      report.pass("the gateway answers at http://127.0.0.1:\(run.ports.gateway) through the mesh")
    } else {
      report.fail(
        "the gateway does not answer through the mesh (\(answer.map { "HTTP \($0.status)" } ?? "no answer"))",
        fix: "meshctl logs gateway; meshctl logs gateway-sidecar")
    }
  }
}
