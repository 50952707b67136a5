extension DashboardAssets {
  /// The page: a shell whose views `app.js` draws, by the URL's fragment (`#/service/orders`,
  /// `#/traces?service=payments`, `#/trace/ID`), so every view is a link to share.
  static let index = #"""
    <!doctype html>
    <html lang="en">
    <head>
      <meta charset="utf-8">
      <meta name="viewport" content="width=device-width, initial-scale=1">
      <title>Trellis</title>
      <link rel="stylesheet" href="/style.css">
      <link rel="icon" href="data:,">
      <script type="module" src="/app.js"></script>
    </head>
    <body>
      <header>
        <a class="brand" href="#/">Trellis</a>
        <nav>
          <a href="#/" data-view="graph">Graph</a>
          <a href="#/traces" data-view="traces">Traces</a>
          <a href="#/logs" data-view="logs">Logs</a>
          <a href="#/tap" data-view="tap">Tap</a>
          <a href="#/config" data-view="config">Config</a>
          <a href="#/trust" data-view="trust">Trust</a>
        </nav>
        <span id="updated" class="hint"></span>
      </header>
      <main id="main"><p class="hint">Loading…</p></main>
    </body>
    </html>
    """#
}

/// The dashboard's files, served from the binary.
public enum DashboardAssets {}
