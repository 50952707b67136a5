import Foundation
import TestSupport
import Testing

/// Every executable's `--help`, and every subcommand's, read on an 80-column terminal: no line
/// wider than the terminal, and no help string that breaks its own lines (ArgumentParser wraps
/// each paragraph to the terminal; a hard line break inside one is wrapped a second time into
/// a ragged short line).
@Suite struct HelpTextTests {
  static let width = 80

  /// The package's executables, as Package.swift declares them (so a new one is covered).
  static let executables: [String] = {
    let manifest =
      (try? String(
        contentsOf: repositoryRoot.appendingPathComponent("Package.swift"), encoding: .utf8))
      ?? ""
    let pattern = /\.executable\(name: "([a-z0-9-]+)"/
    return manifest.matches(of: pattern).map { String($0.output.1) }
  }()

  /// A command and its subcommands, as `--experimental-dump-help` describes them.
  struct Command {
    var path: [String]
    var info: [String: Any]
  }

  static func commands(in info: [String: Any], path: [String]) -> [Command] {
    let here = Command(path: path, info: info)
    let children = (info["subcommands"] as? [[String: Any]]) ?? []
    return [here]
      + children.flatMap { child in
        commands(in: child, path: path + [child["commandName"] as? String ?? "?"])
      }
  }

  /// Every `abstract` and `discussion` in a command's description (its own and its
  /// arguments'), with where it was found.
  static func helpStrings(_ info: [String: Any], path: [String]) -> [(String, String)] {
    var found: [(String, String)] = []
    for key in ["abstract", "discussion"] {
      if let text = info[key] as? String {
        found.append(("\(path.joined(separator: " ")) \(key)", text))
      }
    }
    for argument in (info["arguments"] as? [[String: Any]]) ?? [] {
      let name =
        (argument["preferredName"] as? [String: Any])?["name"] as? String
        ?? argument["valueName"] as? String ?? "?"
      for key in ["abstract", "discussion"] {
        if let text = argument[key] as? String {
          found.append(("\(path.joined(separator: " ")) \(name) \(key)", text))
        }
      }
    }
    return found
  }

  /// Whether a text carries a line break that is not part of a paragraph break.
  static func hasSingleLineBreak(_ text: String) -> Bool {
    let characters = Array(text)
    for (index, character) in characters.enumerated() where character == "\n" {
      let before = index > 0 && characters[index - 1] == "\n"
      let after = index + 1 < characters.count && characters[index + 1] == "\n"
      if !before && !after { return true }
    }
    return false
  }

  static func overlongLines(_ text: String) -> [String] {
    text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
      .filter { $0.count > width }
  }

  @Test func theExecutablesAreFound() {
    #expect(Self.executables.count >= 10, "\(Self.executables)")
    #expect(Self.executables.contains("meshctl") && Self.executables.contains("bench-relay"))
  }

  @Test(arguments: executables)
  func everyHelpFitsEightyColumnsAndLetsTheParserWrap(_ executable: String) throws {
    let environment = ["COLUMNS": "\(Self.width)"]
    let dump = try run(binary(executable), ["--experimental-dump-help"], environment: environment)
    guard dump.status == 0 else {
      // Not an ArgumentParser command (bench-relay is C): its --help is checked as it is.
      let help = try run(binary(executable), ["--help"], environment: environment)
      #expect(help.status == 0, "\(executable) --help: \(help.stderr)")
      #expect(help.stdout.hasPrefix("USAGE: "), "\(executable) --help: \(help.stdout)")
      #expect(Self.overlongLines(help.stdout).isEmpty, "\(executable) --help:\n\(help.stdout)")
      return
    }
    let tool = try #require(
      try JSONSerialization.jsonObject(with: dump.stdoutData) as? [String: Any])
    let root = try #require(tool["command"] as? [String: Any])
    let commands = Self.commands(in: root, path: [executable])
    for command in commands {
      for (place, text) in Self.helpStrings(command.info, path: command.path)
      where Self.hasSingleLineBreak(text) {
        Issue.record("\(place) breaks a line inside a paragraph: \(text.debugDescription)")
      }
      let arguments = Array(command.path.dropFirst()) + ["--help"]
      let help = try run(binary(executable), arguments, environment: environment)
      let shown = command.path.joined(separator: " ") + " --help"
      #expect(help.status == 0, "\(shown): \(help.stderr)")
      #expect(help.stdout.contains("USAGE: "), "\(shown):\n\(help.stdout)")
      for line in Self.overlongLines(help.stdout) {
        Issue.record("\(shown): a line of \(line.count) columns: \(line)")
      }
    }
  }
}
