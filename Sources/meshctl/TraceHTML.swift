import Foundation
import MeshDashboard

/// A self-contained HTML page of traces: no network needed to open it. Each trace is a
/// waterfall — one row per span, indented by parent, a bar on the trace's time axis, markers
/// where events happened — and a click on a row shows the span's details: ids, attributes,
/// events, status.
enum TraceHTML {
  static func page(_ trees: [TraceTree], title: String) -> String {
    var body = ""
    for tree in trees { body += section(tree) }
    return """
      <!doctype html>
      <html lang="en">
      <head>
      <meta charset="utf-8">
      <meta name="viewport" content="width=device-width, initial-scale=1">
      <title>\(escape(title))</title>
      <style>
      body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #1d2330; background: #fafbfc; }
      h1 { font-size: 20px; margin: 0 0 16px; }
      h2 { font-size: 15px; margin: 28px 0 8px; font-weight: 600; }
      code, .mono { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; }
      .trace { background: #fff; border: 1px solid #dde1e7; border-radius: 6px; padding: 8px 12px 12px; margin-bottom: 20px; }
      .row { display: grid; grid-template-columns: minmax(280px, 34%) 1fr 90px 150px; gap: 8px; align-items: center;
             padding: 3px 4px; border-radius: 4px; cursor: pointer; }
      .row:hover, .row.open { background: #eef3fb; }
      .head { font-weight: 600; color: #5b6576; cursor: default; }
      .head:hover { background: none; }
      .label { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
      .origin { color: #5b6576; font-size: 12px; margin-left: 6px; }
      .track { position: relative; height: 14px; background: #f1f3f6; border-radius: 3px; }
      .bar { position: absolute; top: 2px; height: 10px; min-width: 2px; border-radius: 2px; background: #4f7fd9; }
      .bar.server { background: #37a169; }
      .bar.internal { background: #8d6bd6; }
      .row.error .bar { background: #d64545; }
      .mark { position: absolute; top: 0; width: 2px; height: 14px; background: #e09b1a; }
      .status.error { color: #c22f2f; font-weight: 600; }
      .dur { text-align: right; }
      .details { margin: 2px 0 8px 24px; padding: 8px 12px; background: #f6f8fa; border-left: 3px solid #4f7fd9; }
      .details table { border-collapse: collapse; }
      .details td { padding: 1px 12px 1px 0; vertical-align: top; }
      .details td:first-child { color: #5b6576; }
      </style>
      </head>
      <body>
      <h1>\(escape(title))</h1>
      \(body)
      <script>
      for (const row of document.querySelectorAll('.row[data-span]')) {
        row.addEventListener('click', () => {
          const details = document.getElementById('details-' + row.dataset.trace + '-' + row.dataset.span);
          details.hidden = !details.hidden;
          row.classList.toggle('open', !details.hidden);
        });
      }
      </script>
      </body>
      </html>

      """
  }

  private static func section(_ tree: TraceTree) -> String {
    let total = Double(max(tree.duration, 1))
    func percent(_ time: UInt64) -> String {
      String(format: "%.3f", Double(time >= tree.start ? time - tree.start : 0) / total * 100)
    }
    var out = "<section class=\"trace\" id=\"trace-\(tree.traceID)\">\n"
    out += "<h2>trace <code>\(tree.traceID)</code>"
    if let root = tree.root { out += " · \(escape(root.origin)) · \(escape(root.name))" }
    out += " · \(escape(formatNanos(tree.duration))) · \(tree.rows.count) spans</h2>\n"
    out +=
      "<div class=\"row head\"><div>span</div><div>0 – \(escape(formatNanos(tree.duration)))</div>"
    out += "<div class=\"dur\">duration</div><div>status</div></div>\n"
    for row in tree.rows {
      let span = row.span
      let left = percent(span.start)
      let width = String(
        format: "%.3f", max(Double(span.duration) / total * 100, 0.2))
      out +=
        "<div class=\"row\(span.isError ? " error" : "")\" data-trace=\"\(tree.traceID)\" data-span=\"\(span.spanID)\">"
      out += "<div class=\"label\" style=\"padding-left:\(row.depth * 18)px\">"
      out +=
        """
        <span class=\"name\">\(escape(span.name))</span><span \
        class=\"origin\">\(escape(span.origin)) · \(span.kind)</span></div>
        """
      out +=
        """
        <div class=\"track\"><div class=\"bar \(span.kind)\" \
        style=\"left:\(left)%;width:\(width)%\"></div>
        """
      for event in span.events {
        out +=
          """
          <div class=\"mark\" title=\"\(escape(event.name))\" \
          style=\"left:\(percent(event.time))%\"></div>
          """
      }
      out += "</div><div class=\"dur mono\">\(escape(formatNanos(span.duration)))</div>"
      let attempts = span.attempts.isEmpty ? "" : " · \(span.attempts)"
      out +=
        "<div class=\"status\(span.isError ? " error" : "")\">\(escape(span.status + attempts))</div></div>\n"
      out += details(span, tree)
    }
    return out + "</section>\n"
  }

  private static func details(_ span: SpanView, _ tree: TraceTree) -> String {
    var rows: [(String, String)] = [
      ("span id", span.spanID), ("parent", span.parentID ?? "none (root)"),
      ("service", span.origin), ("kind", span.kind),
      ("start", "+" + formatNanos(span.start - tree.start)),
      ("duration", formatNanos(span.duration)),
    ]
    if span.isError { rows.append(("error", span.statusMessage)) }
    rows += span.attributes
    var out = "<div class=\"details\" id=\"details-\(tree.traceID)-\(span.spanID)\" hidden><table>"
    for (key, value) in rows {
      out += "<tr><td>\(escape(key))</td><td class=\"mono\">\(escape(value))</td></tr>"
    }
    out += "</table>"
    if !span.events.isEmpty {
      out += "<p>events</p><table>"
      for event in span.events {
        let at = "+" + formatNanos(event.time >= tree.start ? event.time - tree.start : 0)
        let attributes = event.attributes.map { "\($0.0)=\($0.1)" }.joined(separator: " ")
        out +=
          """
          <tr><td>\(escape(at))</td><td>\(escape(event.name))</td><td \
          class=\"mono\">\(escape(attributes))</td></tr>
          """
      }
      out += "</table>"
    }
    return out + "</div>\n"
  }

  static func escape(_ text: String) -> String {
    var out = ""
    for character in text {
      switch character {
      case "&": out += "&amp;"
      case "<": out += "&lt;"
      case ">": out += "&gt;"
      case "\"": out += "&quot;"
      case "'": out += "&#39;"
      default: out.append(character)
      }
    }
    return out
  }
}
