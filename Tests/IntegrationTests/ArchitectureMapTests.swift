import Foundation
import TestSupport
import Testing

/// `docs/architecture.md` is the map of the code: every path it names exists, its table of
/// targets is the package's (each target with the package targets it depends on), and no
/// target imports a package target it does not declare.
@Suite struct ArchitectureMapTests {
  static func read(_ path: String) throws -> String {
    try String(contentsOf: repositoryRoot.appendingPathComponent(path), encoding: .utf8)
  }

  /// The package's targets and the package targets each depends on, read from Package.swift:
  /// each `.target(`, `.executableTarget(` or `.testTarget(` with its name and the names in its
  /// `dependencies: [...]` that are targets of this package (products of others are not).
  static func declaredTargets() throws -> [String: Set<String>] {
    let manifest = try read("Package.swift")
    var targets: [String: [String]] = [:]
    let starts = manifest.ranges(of: /\.(target|executableTarget|testTarget)\(/)
    for (index, start) in starts.enumerated() {
      let end = index + 1 < starts.count ? starts[index + 1].lowerBound : manifest.endIndex
      let block = manifest[start.upperBound..<end]
      guard let name = block.firstMatch(of: /name: "([A-Za-z0-9-]+)"/)?.output.1 else { continue }
      var names: [String] = []
      if let list = block.firstMatch(of: /dependencies: \[([^\]]*)\]/)?.output.1 {
        names = list.matches(of: /"([A-Za-z0-9-]+)"/).map { String($0.output.1) }
      }
      targets[String(name)] = names
    }
    let local = Set(targets.keys)
    return targets.mapValues { Set($0.filter(local.contains)) }
  }

  @Test func everyPathTheMapNamesExists() throws {
    let map = try Self.read("docs/architecture.md")
    let roots = ["Sources/", "Tests/", "scripts/", "docs/", "proto/", "certs/", ".ci/"]
    var named: Set<String> = []
    for match in map.matches(of: /`([^`\s]+)`/) {
      let text = String(match.output.1)
      if roots.contains(where: text.hasPrefix) || ["Package.swift", "README.md"].contains(text) {
        named.insert(text)
      }
    }
    #expect(named.count > 50, "the map names only \(named.count) paths")
    for path in named.sorted() {
      #expect(
        FileManager.default.fileExists(atPath: repositoryRoot.appendingPathComponent(path).path),
        "docs/architecture.md names \(path), which does not exist")
    }
  }

  @Test func theTableOfTargetsIsThePackages() throws {
    let declared = try Self.declaredTargets()
    #expect(declared.count > 30, "found only \(declared.count) targets in Package.swift")
    var mapped: [String: Set<String>] = [:]
    // The rows of the section on targets (other tables name processes, some alike).
    let map = try Self.read("docs/architecture.md")
    let section = try #require(map.firstRange(of: "## Targets and what each imports"))
    let rest = map[section.upperBound...]
    let table = rest[..<(rest.firstRange(of: "\n## ")?.lowerBound ?? rest.endIndex)]
    for line in table.split(separator: "\n") {
      let cells = line.split(separator: "|", omittingEmptySubsequences: false).map {
        $0.trimmingCharacters(in: .whitespaces)
      }
      guard cells.count >= 4, let name = cells[1].firstMatch(of: /^`([A-Za-z0-9-]+)`$/)?.output.1,
        declared[String(name)] != nil
      else { continue }
      mapped[String(name)] = Set(
        cells[2].matches(of: /`([A-Za-z0-9-]+)`/).map { String($0.output.1) })
    }
    for (target, dependencies) in declared.sorted(by: { $0.key < $1.key }) {
      guard let shown = mapped[target] else {
        Issue.record("docs/architecture.md has no row for the target \(target)")
        continue
      }
      #expect(
        shown == dependencies,
        "\(target): the map says it imports \(shown.sorted()), Package.swift \(dependencies.sorted())"
      )
    }
  }

  @Test func noTargetImportsAPackageTargetItDoesNotDeclare() throws {
    let declared = try Self.declaredTargets()
    for (target, dependencies) in declared.sorted(by: { $0.key < $1.key }) {
      var folder = "Sources/\(target)"
      if !FileManager.default.fileExists(
        atPath: repositoryRoot.appendingPathComponent(folder).path)
      {
        folder = "Tests/\(target)"
      }
      let root = repositoryRoot.appendingPathComponent(folder)
      let files = FileManager.default.enumerator(atPath: root.path)?.compactMap { $0 as? String }
      for file in files ?? [] where file.hasSuffix(".swift") {
        let text = try String(contentsOf: root.appendingPathComponent(file), encoding: .utf8)
        for match in text.matches(of: /(?m)^\s*(?:@\S+\s+)*import\s+(\w+)/) {
          let module = String(match.output.1)
          guard declared[module] != nil, module != target else { continue }
          #expect(
            dependencies.contains(module),
            "\(folder)/\(file) imports \(module), which \(target) does not declare in Package.swift"
          )
        }
      }
    }
  }
}
