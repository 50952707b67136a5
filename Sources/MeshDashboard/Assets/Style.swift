extension DashboardAssets {
  static let style = #"""
    :root {
      --ink: #1d2330; --muted: #667085; --line: #d0d5dd; --panel: #f7f8fa; --accent: #2f6fde;
      --ok: #2e9e5b; --warn: #d99a06; --bad: #d93d3d; --idle: #98a2b3;
      font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
    }
    body { margin: 0; background: #fff; }
    header {
      display: flex; align-items: center; gap: 24px; padding: 10px 20px;
      border-bottom: 1px solid var(--line); background: var(--panel);
    }
    .brand { font-weight: 700; color: var(--ink); text-decoration: none; }
    nav a { color: var(--muted); text-decoration: none; margin-right: 14px; }
    nav a.active { color: var(--accent); font-weight: 600; }
    #updated { margin-left: auto; }
    main { padding: 16px 20px; }
    h1 { font-size: 20px; margin: 4px 0 12px; }
    h2 { font-size: 16px; margin: 20px 0 8px; }
    a { color: var(--accent); }
    .hint { color: var(--muted); }
    .error { color: var(--bad); }
    #graph svg { display: block; border: 1px solid var(--line); border-radius: 6px; background: #fff; max-width: 100%; height: auto; }
    .node rect { fill: #fff; stroke-width: 2; rx: 6; }
    .node text { font: 12px ui-monospace, "DejaVu Sans Mono", monospace; fill: var(--ink); pointer-events: none; }
    .node { cursor: pointer; }
    .node.ok rect { stroke: var(--ok); } .node.warn rect { stroke: var(--warn); }
    .node.bad rect { stroke: var(--bad); fill: #fdecec; } .node.idle rect { stroke: var(--idle); }
    .edge { fill: none; stroke: var(--idle); }
    .edge.ok { stroke: var(--ok); } .edge.warn { stroke: var(--warn); }
    .edge.bad { stroke: var(--bad); stroke-dasharray: 6 3; }
    .edge-hit { fill: none; stroke: transparent; stroke-width: 14; cursor: pointer; }
    table.figures { border-collapse: collapse; margin: 8px 0; min-width: 640px; }
    table.figures th, table.figures td { padding: 4px 10px; border-bottom: 1px solid var(--line); text-align: right; }
    table.figures th:first-child, table.figures td:first-child,
    table.figures th.text, table.figures td.text { text-align: left; }
    table.figures tr.link { cursor: pointer; }
    table.figures tr.link:hover { background: var(--panel); }
    .badge { display: inline-block; padding: 0 6px; border-radius: 8px; font-size: 12px; color: #fff; }
    .badge.ok { background: var(--ok); } .badge.warn { background: var(--warn); }
    .badge.bad { background: var(--bad); } .badge.idle { background: var(--idle); }
    form.filters { display: flex; flex-wrap: wrap; gap: 10px; align-items: end; margin-bottom: 10px; }
    form.filters label { display: flex; flex-direction: column; font-size: 12px; color: var(--muted); }
    form.filters input { font: inherit; padding: 3px 6px; border: 1px solid var(--line); border-radius: 4px; }
    .waterfall { width: 100%; border-collapse: collapse; }
    .waterfall td { padding: 3px 6px; border-bottom: 1px solid var(--line); vertical-align: top; }
    .waterfall .name { white-space: nowrap; font: 12px ui-monospace, monospace; }
    .waterfall .bar-cell { width: 55%; position: relative; }
    .waterfall .bar { position: relative; height: 14px; background: var(--accent); border-radius: 3px; min-width: 2px; }
    .waterfall .bar.error { background: var(--bad); }
    .waterfall tr.span { cursor: pointer; }
    .waterfall tr.details td { background: var(--panel); font: 12px ui-monospace, monospace; }
    .chart { border: 1px solid var(--line); border-radius: 6px; }
    .chart .p99 { fill: none; stroke: var(--bad); stroke-width: 1.5; }
    .chart .p50 { fill: none; stroke: var(--accent); stroke-width: 1.5; }
    table.log-lines td.line { font: 12px ui-monospace, monospace; white-space: pre-wrap; word-break: break-all; max-width: 820px; }
    .chart .legend { font-size: 11px; fill: var(--muted); }
    """#
}
