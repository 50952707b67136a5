import Foundation
import TestSupport
import Testing

/// Opens a `meshctl trace view --html` page in headless Chromium (Debian's `chromium`) with no
/// network: the rendered DOM must hold the waterfall's rows, and a screenshot is kept beside
/// the page.
enum TraceViewPage {
  static func chromium() throws -> String {
    for name in ["chromium", "chromium-browser"] {
      if let path = try? resolve(name) { return path }
    }
    throw HarnessError("chromium is not installed (apt-get install chromium); .ci/run installs it")
  }

  static func check(_ html: String, rows: Int, traceID: String) throws {
    let browser = try chromium()
    let profile = try makeTemporaryDirectory("chromium-profile")
    let common = [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
      "--user-data-dir=\(profile.path)", "--no-first-run", "--disable-extensions",
      // Nothing leaves the machine: the page must need no network.
      "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND",
    ]
    let dom = try run(browser, common + ["--dump-dom", "file://\(html)"])
    #expect(dom.status == 0, "\(dom.stderr)")
    let rendered = dom.stdout
    let spanRows = rendered.components(separatedBy: "data-span=\"").count - 1
    #expect(spanRows == rows, "the rendered page has \(spanRows) span rows")
    #expect(rendered.contains("id=\"trace-\(traceID)\""))
    #expect(rendered.contains("class=\"bar client\"") && rendered.contains("class=\"bar server\""))
    let screenshot = html.replacingOccurrences(of: ".html", with: ".png")
    let shot = try run(
      browser, common + ["--screenshot=\(screenshot)", "--window-size=1400,900", "file://\(html)"])
    #expect(shot.status == 0, "\(shot.stderr)")
    let size = (try? FileManager.default.attributesOfItem(atPath: screenshot)[.size] as? Int) ?? 0
    #expect(size > 10_000, "screenshot of \(size) bytes")
    print("trace view: \(spanRows) rows rendered by Chromium; screenshot \(screenshot)")

    // A click on a row shows the span's details; another hides them.
    let clicked = try run(
      try resolve("python3"),
      [PythonInteropTests.python.appendingPathComponent("trace_page.py").path, html])
    let result = try #require(try jsonObjects(clicked.stdout).first, "\(clicked.stderr)")
    #expect(result["rows"] as? Int == rows)
    #expect(result["hidden_before"] as? Bool == true)
    #expect(result["shown_after_click"] as? Bool == true, "\(result)")
    #expect(result["hidden_after_second_click"] as? Bool == true)
    let details = result["details"] as? String ?? ""
    #expect(details.contains("span id") && details.contains("duration"), "\(details)")
  }
}
