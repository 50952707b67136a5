import Foundation
import MeshDashboard

/// The terminal waterfall: one row per span, indented by parent, with its service, duration,
/// status and attempts, and a bar on the trace's time axis; then what happened on the way
/// (retries, ejections, deadlines, faults) under the span it happened in.
enum TerminalWaterfall {
  static let barWidth = 40

  static func render(_ tree: TraceTree) -> String {
    var out = "trace \(tree.traceID)"
    if let root = tree.root {
      out += "  \(root.origin)  \(root.name)"
    }
    out +=
      "  \(formatNanos(tree.duration))  \(tree.rows.count) span\(tree.rows.count == 1 ? "" : "s")\n\n"
    var table = [["SPAN", "SERVICE", "KIND", "DURATION", "STATUS", "ATTEMPTS", "TIMELINE"]]
    var notes: [Int: [String]] = [:]
    for (index, row) in tree.rows.enumerated() {
      let span = row.span
      table.append([
        String(repeating: "  ", count: row.depth) + span.name, span.origin, span.kind,
        formatNanos(span.duration), span.status, span.attempts.isEmpty ? "-" : span.attempts,
        bar(span, tree),
      ])
      var lines: [String] = []
      for event in span.events {
        let at = formatNanos(event.time >= tree.start ? event.time - tree.start : 0)
        let details = event.attributes.map { "\($0.0)=\($0.1)" }.joined(separator: " ")
        lines.append("\(event.name) at +\(at)\(details.isEmpty ? "" : ": \(details)")")
      }
      if span.isError, !span.statusMessage.isEmpty { lines.append("error: \(span.statusMessage)") }
      if !lines.isEmpty { notes[index + 1] = lines }
    }
    let widths = table[0].indices.map { column in table.map { $0[column].count }.max() ?? 0 }
    for (index, row) in table.enumerated() {
      out +=
        row.enumerated().map { column, cell in
          column == row.count - 1
            ? cell : cell.padding(toLength: widths[column] + 2, withPad: " ", startingAt: 0)
        }.joined() + "\n"
      let depth = index == 0 ? 0 : tree.rows[index - 1].depth
      for note in notes[index] ?? [] {
        out += String(repeating: "  ", count: depth + 1) + "↳ " + note + "\n"
      }
    }
    return out
  }

  /// `|   ████████      |`: where the span lies in the trace.
  static func bar(_ span: SpanView, _ tree: TraceTree) -> String {
    let total = Double(max(tree.duration, 1))
    let from = Int((Double(span.start - tree.start) / total * Double(barWidth)).rounded(.down))
    let to = Int((Double(span.end - tree.start) / total * Double(barWidth)).rounded(.up))
    let first = min(max(from, 0), barWidth - 1)
    let last = min(max(to, first + 1), barWidth)
    return "|" + String(repeating: " ", count: first) + String(repeating: "█", count: last - first)
      + String(repeating: " ", count: barWidth - last) + "|"
  }
}
