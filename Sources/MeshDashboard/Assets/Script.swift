extension DashboardAssets {
  /// The page's views: the live service graph, a service's page, trace search and a trace's
  /// waterfall. Every view keeps itself up to date (the graph by server-sent events, the others
  /// by asking again every two seconds) until another is opened.
  static let script = #"""
    const main = document.getElementById("main");
    const SVG = "http://www.w3.org/2000/svg";
    let stopView = () => {};

    function h(tag, attributes = {}, ...children) {
      const element = document.createElement(tag);
      for (const [key, value] of Object.entries(attributes)) {
        if (key.startsWith("on")) element.addEventListener(key.slice(2), value);
        else if (value !== undefined && value !== null) element.setAttribute(key, value);
      }
      for (const child of children.flat()) {
        if (child !== undefined && child !== null) element.append(child);
      }
      return element;
    }

    function svg(tag, attributes = {}, ...children) {
      const element = document.createElementNS(SVG, tag);
      for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
      for (const child of children) if (child !== undefined && child !== null) element.append(child);
      return element;
    }

    const enc = encodeURIComponent;
    const percent = (x) => (x * 100).toFixed(2) + " %";
    const millis = (x) => (x < 10 ? x.toFixed(2) : x.toFixed(0)) + " ms";
    const perSecond = (x) => x.toFixed(1);
    const clock = (nanos) => new Date(nanos / 1e6).toLocaleTimeString();

    async function getJSON(url) {
      const response = await fetch(url);
      const body = await response.json();
      if (!response.ok) throw new Error(body.error || response.statusText);
      return body;
    }

    function updated() {
      document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
    }

    /// Calls `draw` now and every two seconds until the view changes; a failure is shown, and
    /// the next round tries again.
    function every(draw) {
      let live = true;
      const round = async () => {
        if (!live) return;
        try {
          await draw();
          updated();
        } catch (error) {
          showError(error);
        }
        if (live) timer = setTimeout(round, 2000);
      };
      let timer = null;
      round();
      stopView = () => { live = false; clearTimeout(timer); };
    }

    function showError(error) {
      let line = document.getElementById("failure");
      if (!line) {
        line = h("p", { id: "failure", class: "error" });
        main.prepend(line);
      }
      line.textContent = String(error.message || error);
    }

    function clearError() {
      document.getElementById("failure")?.remove();
    }

    function badge(figures) {
      return h("span", { class: "badge " + figures.health }, figures.health);
    }

    function figureCells(figures) {
      return [
        h("td", {}, perSecond(figures.rps)), h("td", {}, percent(figures.successRate)),
        h("td", {}, millis(figures.p50Ms)), h("td", {}, millis(figures.p99Ms)),
        h("td", {}, String(figures.requests)),
      ];
    }

    function figureHeader(...first) {
      return h("tr", {}, first.map((name) => h("th", { class: "text" }, name)),
        ["calls/s", "success", "p50", "p99", "calls"].map((name) => h("th", {}, name)));
    }

    // MARK: The service graph

    function graphView() {
      main.replaceChildren(
        h("h1", {}, "Service graph"),
        h("p", { class: "hint", id: "graph-status" }, "Connecting…"),
        h("div", { id: "graph" }),
        h("h2", {}, "Calls between services"),
        h("table", { class: "figures", id: "edges" }));
      const source = new EventSource("/api/live");
      source.addEventListener("graph", (event) => {
        clearError();
        drawGraph(JSON.parse(event.data));
        updated();
      });
      source.addEventListener("failure", (event) => showError(new Error(JSON.parse(event.data))));
      source.onerror = () => showError(new Error("the dashboard's server does not answer"));
      stopView = () => source.close();
    }

    function drawGraph(graph) {
      const at = Object.fromEntries(graph.nodes.map((node) => [node.name, node]));
      const canvas = svg("svg", {
        id: "graph-svg", viewBox: `0 0 ${graph.width} ${graph.height}`,
        width: graph.width, height: graph.height,
      });
      canvas.append(svg("defs", {}, svg("marker", {
        id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 9, markerHeight: 9,
        markerUnits: "userSpaceOnUse", orient: "auto-start-reverse",
      }, svg("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#98a2b3" }))));
      for (const edge of graph.edges) {
        const from = at[edge.from], to = at[edge.to];
        if (!from || !to) continue;
        const forward = from.x < to.x;
        const x1 = forward ? from.x + from.width : from.x, y1 = from.y + from.height / 2;
        const x2 = forward ? to.x : to.x + to.width, y2 = to.y + to.height / 2;
        const bend = Math.max(40, Math.abs(x2 - x1) / 2) * (forward ? 1 : -1);
        const d = `M ${x1} ${y1} C ${x1 + bend} ${y1}, ${x2 - bend} ${y2}, ${x2} ${y2}`;
        const f = edge.figures;
        const title = `${edge.from} → ${edge.to}: ${perSecond(f.rps)} calls/s, ` +
          `${percent(f.successRate)} OK, p99 ${millis(f.p99Ms)}`;
        const open = () => { location.hash = edgeLink(edge); };
        const width = 1.5 + Math.min(6, Math.log10(1 + f.rps) * 3);
        canvas.append(
          svg("path", { d, class: "edge " + f.health, "stroke-width": width, "marker-end": "url(#arrow)" }),
          svg("path", { d, class: "edge-hit", id: `edge-${edge.from}-${edge.to}` }, svg("title", {}, title)));
        canvas.lastChild.addEventListener("click", open);
      }
      for (const node of graph.nodes) {
        const f = node.figures;
        const group = svg("g", { class: "node " + f.health, id: `node-${node.name}` },
          svg("title", {}, `${node.name}: ${perSecond(f.rps)} calls/s, ${percent(f.successRate)} OK, p99 ${millis(f.p99Ms)}`),
          svg("rect", { x: node.x, y: node.y, width: node.width, height: node.height }),
          svg("text", { x: node.x + node.width / 2, y: node.y + node.height / 2 + 4, "text-anchor": "middle" }, node.label));
        group.addEventListener("click", () => { location.hash = "#/service/" + enc(node.name); });
        canvas.append(group);
      }
      document.getElementById("graph").replaceChildren(canvas);
      document.getElementById("graph-status").textContent =
        `${graph.nodes.length} services, ${graph.edges.length} edges; the last ${graph.windowSeconds} s`;
      const rows = graph.edges.map((edge) => h("tr", {
        class: "link", onclick: () => { location.hash = edgeLink(edge); },
      }, h("td", { class: "text" }, edge.from), h("td", { class: "text" }, edge.to),
        figureCells(edge.figures), h("td", { class: "text" }, badge(edge.figures))));
      document.getElementById("edges").replaceChildren(figureHeader("caller", "service"), ...rows);
    }

    function edgeLink(edge) {
      return `#/traces?service=${enc(edge.to)}&caller=${enc(edge.from)}`;
    }

    // MARK: A service

    function serviceView(name) {
      main.replaceChildren(h("h1", {}, "Service ", h("span", { id: "service-name" }, name)),
        h("div", { id: "service" }));
      every(async () => {
        const service = await getJSON("/api/services/" + enc(name));
        clearError();
        const f = service.figures;
        document.getElementById("service").replaceChildren(
          h("p", {}, badge(f), ` ${perSecond(f.rps)} calls/s, ${percent(f.successRate)} OK, `,
            `p50 ${millis(f.p50Ms)}, p99 ${millis(f.p99Ms)} over the last ${service.windowSeconds} s `,
            h("a", { href: `#/traces?service=${enc(name)}` }, "traces"), " · ",
            h("a", { href: `#/traces?service=${enc(name)}&errors=1` }, "failed traces"), " · ",
            h("a", { href: `#/tap?service=${enc(name)}` }, "tap")),
          latencyChart(service.history),
          h("h2", {}, "Methods"),
          h("table", { class: "figures", id: "methods" }, figureHeader("method"),
            service.methods.map((row) => h("tr", {
              class: "link",
              onclick: () => { location.hash = `#/traces?service=${enc(name)}&method=${enc(row.method.replace(/^\//, ""))}&slowest=1`; },
            }, h("td", { class: "text" }, row.method), figureCells(row.figures)))),
          h("h2", {}, "Called by"), edgeTable(service.callers, "caller", (edge) => edge.from),
          h("h2", {}, "Calls"), edgeTable(service.callees, "service", (edge) => edge.to),
          h("h2", {}, "Endpoints, as its callers' sidecars see them"), endpointTable(service.endpoints),
          h("h2", {}, "Policies in force"), policyList(service.policies),
          h("h2", {}, "Instances"), instanceTable(service.instances));
      });
    }

    function edgeTable(edges, label, other) {
      if (edges.length === 0) return h("p", { class: "hint" }, "none in the last minute");
      return h("table", { class: "figures" }, figureHeader(label),
        edges.map((edge) => h("tr", { class: "link", onclick: () => { location.hash = edgeLink(edge); } },
          h("td", { class: "text" }, h("a", { href: "#/service/" + enc(other(edge)) }, other(edge))),
          figureCells(edge.figures))));
    }

    function endpointTable(endpoints) {
      if (endpoints.length === 0) return h("p", { class: "hint" }, "no caller has reported its endpoints");
      return h("table", { class: "figures", id: "endpoints" },
        h("tr", {}, ["endpoint", "seen by", "state"].map((n) => h("th", { class: "text" }, n)),
          ["in flight", "latency estimate", "ejections", "calls", "failures"].map((n) => h("th", {}, n))),
        endpoints.map((e) => h("tr", {},
          h("td", { class: "text" }, e.address), h("td", { class: "text" }, `${e.caller} (${e.callerInstance})`),
          h("td", { class: "text" }, h("span", { class: "badge " + (e.state === "active" ? "ok" : "bad") },
            e.state === "active" ? "active" : `ejected ${e.ejectedForSeconds.toFixed(0)} s`)),
          h("td", {}, String(e.inFlight)), h("td", {}, millis(e.latencyMs)), h("td", {}, String(e.ejections)),
          h("td", {}, String(e.calls)), h("td", {}, String(e.failures)))));
    }

    function policyList(policies) {
      if (!policies) return h("p", { class: "hint" }, "no config is running");
      return h("div", { id: "policies" },
        h("ul", {}, h("li", {}, "balancing: " + policies.balancing),
          h("li", {}, "outlier detection: " + policies.outlierDetection),
          h("li", {}, "circuit breaker: " + policies.circuitBreaker),
          h("li", {}, "retry budget: " + policies.retryBudget),
          policies.routes.map((route) => h("li", { class: "route" }, "route " + route))),
        h("h2", {}, "Who may call it"),
        h("ul", { id: "callers" }, policies.callers.map((caller) => h("li", {}, caller))));
    }

    function instanceTable(instances) {
      if (instances.length === 0) return h("p", { class: "hint" }, "no sidecar of it is known");
      return h("table", { class: "figures", id: "instances" },
        h("tr", {}, ["sidecar", "connected", "registered", "config", "trust", "certificate", "expires"]
          .map((n) => h("th", { class: "text" }, n))),
        instances.map((i) => h("tr", {},
          h("td", { class: "text" }, i.node), h("td", { class: "text" }, i.connected ? "yes" : "no"),
          h("td", { class: "text" }, i.registered ? "yes" : "no"), h("td", { class: "text" }, `v${i.configVersion}`),
          h("td", { class: "text" }, String(i.trustGeneration)), h("td", { class: "text" }, i.certificateSerial.slice(0, 16)),
          h("td", { class: "text" }, i.certificateNotAfter ? new Date(i.certificateNotAfter * 1000).toLocaleString() : "-"))));
    }

    /// p50 and p99 in 10-second steps over the last 15 minutes, on a time axis (steps without
    /// calls are gaps in the lines).
    function latencyChart(history) {
      const width = 640, height = 120, span = 900, step = 10;
      const now = Date.now() / 1000, start = now - span;
      const top = Math.max(1, ...history.map((p) => p.p99Ms));
      const x = (t) => Math.max(0, ((t - start) / span) * width);
      const y = (ms) => height - (ms / top) * (height - 24);
      // Lines break where a step had no calls.
      const runs = [];
      for (const point of history) {
        const run = runs[runs.length - 1];
        if (run && point.startUnix - run[run.length - 1].startUnix <= step) run.push(point);
        else runs.push([point]);
      }
      const lines = (key, cls) => runs.map((run) => svg("polyline", {
        class: cls,
        points: (run.length === 1 ? [run[0], { ...run[0], startUnix: run[0].startUnix + step }] : run)
          .map((p) => `${x(p.startUnix)},${y(p[key])}`).join(" "),
      }));
      const label = history.length === 0
        ? "no calls in the last 15 minutes"
        : `p50 (blue), p99 (red), the last 15 minutes in 10 s steps; top ${millis(top)}`;
      return svg("svg", { class: "chart", id: "latency-chart", width, height, viewBox: `0 0 ${width} ${height}` },
        svg("title", {}, label),
        svg("text", { x: 8, y: 14, class: "legend" }, label),
        svg("text", { x: 8, y: height - 4, class: "legend" }, "15 min ago"),
        svg("text", { x: width - 8, y: height - 4, class: "legend", "text-anchor": "end" }, "now"),
        ...lines("p99Ms", "p99"), ...lines("p50Ms", "p50"));
    }

    // MARK: Traces

    function tracesView(params) {
      const field = (name, label, attributes = {}) => h("label", {}, label,
        h("input", { name, value: params.get(name) ?? "", ...attributes }));
      const form = h("form", { class: "filters", id: "trace-filters" },
        field("service", "service"), field("method", "method (package.Service/Method)"),
        field("minMs", "at least (ms)", { size: 6 }), field("sinceSeconds", "in the last (s)", { size: 6 }),
        h("label", {}, "errors only", h("input", { type: "checkbox", name: "errors", value: "1",
          ...(params.get("errors") === "1" ? { checked: "" } : {}) })),
        h("label", {}, "slowest first", h("input", { type: "checkbox", name: "slowest", value: "1",
          ...(params.get("slowest") === "1" ? { checked: "" } : {}) })),
        h("button", { type: "submit" }, "Search"));
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        const query = new URLSearchParams();
        for (const [key, value] of new FormData(form)) if (value) query.set(key, value);
        if (params.get("caller")) query.set("caller", params.get("caller"));
        location.hash = "#/traces?" + query.toString();
      });
      const caller = params.get("caller");
      main.replaceChildren(
        h("h1", {}, caller ? `Traces: ${caller} → ${params.get("service")}` : "Traces"), form,
        h("table", { class: "figures", id: "traces" }));
      const query = new URLSearchParams();
      for (const key of ["service", "method", "minMs", "sinceSeconds", "errors"]) {
        if (params.get(key)) query.set(key, params.get(key));
      }
      query.set("limit", "50");
      every(async () => {
        let traces = await getJSON("/api/traces?" + query.toString());
        clearError();
        if (params.get("slowest") === "1") traces = [...traces].sort((a, b) => b.durationMs - a.durationMs);
        document.getElementById("traces").replaceChildren(
          h("tr", {}, ["started", "root", "trace"].map((n) => h("th", { class: "text" }, n)),
            ["duration", "spans"].map((n) => h("th", {}, n)), h("th", { class: "text" }, "status")),
          ...traces.map((trace) => h("tr", { class: "link trace-row", onclick: () => { location.hash = "#/trace/" + trace.traceId; } },
            h("td", { class: "text" }, clock(trace.startUnixNano)),
            h("td", { class: "text" }, `${trace.rootService} ${trace.rootName}`),
            h("td", { class: "text" }, h("a", { href: "#/trace/" + trace.traceId }, trace.traceId.slice(0, 16))),
            h("td", {}, millis(trace.durationMs)), h("td", {}, String(trace.spans)),
            h("td", { class: "text" + (trace.error ? " error" : "") }, trace.error ? "error" : (trace.status || "-")))));
      });
    }

    function traceView(id) {
      main.replaceChildren(h("h1", {}, "Trace ", h("code", {}, id)), h("div", { id: "trace" }));
      const open = new Set();
      let trace = null;
      const render = () => {
        const total = Math.max(trace.durationMs, 0.001);
        const rows = [];
        for (const span of trace.spans) {
          const bar = h("div", { class: "bar" + (span.error ? " error" : ""),
            style: `left: ${(span.startMs / total) * 100}%; width: ${Math.max(0.3, (span.durationMs / total) * 100)}%` });
          rows.push(h("tr", { class: "span", "data-span": span.spanId, onclick: () => {
            open.has(span.spanId) ? open.delete(span.spanId) : open.add(span.spanId);
            render();
          } }, h("td", { class: "name", style: `padding-left: ${6 + span.depth * 16}px` },
            span.name, h("br"), h("span", { class: "hint" }, `${span.origin} · ${span.kind}`)),
            h("td", {}, millis(span.durationMs)),
            h("td", { class: span.error ? "error" : "" }, span.status, span.attempts ? ` (${span.attempts})` : ""),
            h("td", { class: "bar-cell" }, bar)));
          if (open.has(span.spanId)) {
            rows.push(h("tr", { class: "details" }, h("td", { colspan: 4 },
              span.statusMessage ? h("div", {}, "status: " + span.statusMessage) : null,
              span.attributes.map((a) => h("div", {}, `${a.key} = ${a.value}`)),
              span.events.map((e) => h("div", {}, `event at ${millis(e.atMs)}: ${e.name} `,
                e.attributes.map((a) => `${a.key}=${a.value}`).join(" "))))));
          }
        }
        document.getElementById("trace").replaceChildren(
          h("p", { class: "hint" }, `${trace.spans.length} spans, ${millis(trace.durationMs)}, started ${clock(trace.startUnixNano)}`),
          h("table", { class: "waterfall" }, rows),
          h("h2", {}, "Log lines with this trace id"), logTable(lines, "trace-logs"));
      };
      let lines = null;
      every(async () => {
        trace = await getJSON("/api/traces/" + enc(id));
        lines = await getJSON("/api/logs?trace=" + enc(id)).catch((error) => error);
        clearError();
        render();
      });
    }

    /// Log lines in time order, each named by its process; an error (no logs on this host)
    /// is said instead.
    function logTable(lines, id) {
      if (lines instanceof Error) return h("p", { class: "hint" }, lines.message);
      if (!lines || lines.length === 0) return h("p", { class: "hint" }, "none");
      return h("table", { class: "figures log-lines", id },
        h("tr", {}, ["time", "process", "level", "line"].map((n) => h("th", { class: "text" }, n))),
        lines.map((line) => h("tr", { class: "log-line" },
          h("td", { class: "text" }, new Date(line.unixNano / 1e6).toLocaleTimeString([], { hour12: false }) +
            "." + String(Math.floor(line.unixNano / 1e6) % 1000).padStart(3, "0")),
          h("td", { class: "text" }, line.process),
          h("td", { class: "text" + (line.level === "error" ? " error" : "") }, line.level),
          h("td", { class: "text line" }, line.text))));
    }

    function logsView(params) {
      const field = (name, label) => h("label", {}, label, h("input", { name, value: params.get(name) ?? "" }));
      const form = h("form", { class: "filters", id: "log-filters" },
        field("service", "service or process"), field("level", "level"), field("q", "text"),
        h("button", { type: "submit" }, "Search"));
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        const query = new URLSearchParams();
        for (const [key, value] of new FormData(form)) if (value) query.set(key, value);
        location.hash = "#/logs?" + query.toString();
      });
      main.replaceChildren(h("h1", {}, "Logs"), form, h("div", { id: "logs" }));
      const query = new URLSearchParams({ limit: "300" });
      for (const key of ["service", "level", "q"]) if (params.get(key)) query.set(key, params.get(key));
      every(async () => {
        const lines = await getJSON("/api/logs?" + query.toString());
        clearError();
        document.getElementById("logs").replaceChildren(logTable(lines, "log-results"));
      });
    }

    // MARK: Tap

    function tapView(params) {
      const service = params.get("service") || "";
      const method = params.get("method") || "";
      const form = h("form", { class: "filters", id: "tap-form" },
        h("label", {}, "service", h("input", { name: "service", value: service })),
        h("label", {}, "method (package.Service/Method or package.Service/*)", h("input", { name: "method", value: method })),
        h("label", {}, "at most, per sidecar and second", h("input", { name: "maxPerSecond", value: params.get("maxPerSecond") || "20", size: 4 })),
        h("button", { type: "submit" }, "Tap"));
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        const query = new URLSearchParams();
        for (const [key, value] of new FormData(form)) if (value) query.set(key, value);
        location.hash = "#/tap?" + query.toString();
      });
      const rows = h("table", { class: "figures", id: "tap-calls" },
        h("tr", {}, ["time", "direction", "method", "peer", "status", "instance", "trace"].map((n) => h("th", { class: "text" }, n)),
          h("th", {}, "duration")));
      main.replaceChildren(h("h1", {}, "Tap"), form, h("p", { class: "hint", id: "tap-status" },
        service ? "tapping…" : "Name a service to see its calls as they end."), rows);
      if (!service) return;
      const query = new URLSearchParams({ service, maxPerSecond: params.get("maxPerSecond") || "20" });
      if (method) query.set("method", method);
      const source = new EventSource("/api/tap?" + query.toString());
      let count = 0;
      source.addEventListener("call", (event) => {
        const call = JSON.parse(event.data);
        count += 1;
        document.getElementById("tap-status").textContent = `${count} calls so far`;
        const row = h("tr", { class: "tap-call" }, h("td", { class: "text" }, clock(call.time)),
          h("td", { class: "text" }, call.direction), h("td", { class: "text" }, call.method),
          h("td", { class: "text" }, call.peer), h("td", { class: "text" + (call.status === "OK" ? "" : " error") }, call.status),
          h("td", { class: "text" }, call.instance),
          h("td", { class: "text" }, call.traceId ? h("a", { href: "#/trace/" + call.traceId }, call.traceId.slice(0, 16)) : "-"),
          h("td", {}, millis(call.durationMs)));
        rows.firstChild.after(row);
        while (rows.children.length > 201) rows.lastChild.remove();
        updated();
      });
      source.addEventListener("failure", (event) => showError(new Error(JSON.parse(event.data))));
      stopView = () => source.close();
    }

    // MARK: Config

    function configView(params) {
      main.replaceChildren(h("h1", {}, "Config"), h("div", { id: "config" }), h("pre", { id: "diff" }));
      let chosen = { from: params.get("from"), to: params.get("to") };
      const showDiff = async () => {
        if (!chosen.from || !chosen.to) return;
        const diff = await getJSON(`/api/config/diff?from=${enc(chosen.from)}&to=${enc(chosen.to)}`);
        document.getElementById("diff").textContent =
          diff.diff || `versions ${diff.from} and ${diff.to} are the same`;
      };
      every(async () => {
        const config = await getJSON("/api/config");
        clearError();
        if (!chosen.from && config.versions.length > 1) {
          chosen = { from: String(config.versions[1].version), to: String(config.versions[0].version) };
        }
        const pick = (name) => h("select", { name, onchange: (event) => {
          chosen[name] = event.target.value;
          location.hash = `#/config?from=${enc(chosen.from)}&to=${enc(chosen.to)}`;
        } }, config.versions.map((v) => h("option", { value: v.version,
          ...(String(v.version) === chosen[name] ? { selected: "" } : {}) }, `version ${v.version}`)));
        document.getElementById("config").replaceChildren(
          h("p", {}, `The control plane runs version ${config.currentVersion}.`),
          h("h2", {}, "Versions"),
          h("table", { class: "figures", id: "versions" },
            h("tr", {}, ["version", "applied", "by", ""].map((n) => h("th", { class: "text" }, n))),
            config.versions.map((v) => h("tr", {}, h("td", { class: "text" }, String(v.version)),
              h("td", { class: "text" }, new Date(v.createdAt * 1000).toLocaleString()),
              h("td", { class: "text" }, v.createdBy),
              h("td", { class: "text" }, v.rolledBackFrom ? `rollback to ${v.rolledBackFrom}` : "")))),
          h("h2", {}, "Difference"), h("form", { class: "filters", id: "diff-form" },
            h("label", {}, "from", pick("from")), h("label", {}, "to", pick("to"))),
          h("h2", {}, "Sidecars"),
          h("table", { class: "figures", id: "config-sidecars" },
            h("tr", {}, ["sidecar", "service", "connected", "runs", "refused"].map((n) => h("th", { class: "text" }, n))),
            config.sidecars.map((s) => h("tr", {}, h("td", { class: "text" }, s.node),
              h("td", { class: "text" }, s.service), h("td", { class: "text" }, s.connected ? "yes" : "no"),
              h("td", { class: "text" + (s.version === config.currentVersion ? "" : " error") }, `v${s.version} (ACK)`),
              h("td", { class: "text error" }, s.nackVersion ? `v${s.nackVersion} (NACK): ${s.nackError}` : "")))),
          h("h2", {}, "Endpoints"),
          h("table", { class: "figures", id: "config-endpoints" },
            h("tr", {}, ["service", "address", "labels", "source"].map((n) => h("th", { class: "text" }, n))),
            config.endpoints.map((e) => h("tr", {}, h("td", { class: "text" }, e.service),
              h("td", { class: "text" }, e.address),
              h("td", { class: "text" }, Object.entries(e.labels).map(([k, v]) => `${k}=${v}`).join(" ")),
              h("td", { class: "text" }, e.source)))));
        await showDiff();
      });
    }

    // MARK: Trust

    function trustView() {
      main.replaceChildren(h("h1", {}, "Trust"), h("div", { id: "trust" }));
      every(async () => {
        const trust = await getJSON("/api/trust");
        clearError();
        document.getElementById("trust").replaceChildren(
          h("p", {}, `Trust generation ${trust.trustGeneration}: ${trust.current} of ${trust.connected} ` +
            "connected sidecars run it."),
          h("h2", {}, "Rotation"), rotationList(trust.rotations),
          h("h2", {}, "Roots"), h("ul", {}, trust.roots.map((root) => h("li", {}, root))),
          h("h2", {}, "Issuer"), h("p", {}, trust.issuer),
          h("h2", {}, "Sidecars"),
          h("table", { class: "figures", id: "trust-sidecars" },
            h("tr", {}, ["sidecar", "identity", "serial", "expires", "issuer", "generation"].map((n) => h("th", { class: "text" }, n))),
            trust.sidecars.map((s) => h("tr", {}, h("td", { class: "text" }, s.node),
              h("td", { class: "text" }, s.spiffeId), h("td", { class: "text" }, s.serial.slice(0, 16)),
              h("td", { class: "text" }, s.notAfter ? new Date(s.notAfter * 1000).toLocaleString() : "-"),
              h("td", { class: "text" }, s.issuer),
              h("td", { class: "text" + (s.trustGeneration < trust.trustGeneration ? " error" : "") }, String(s.trustGeneration))))));
      });
    }

    function rotationList(rotations) {
      if (rotations.length === 0) return h("p", { class: "hint", id: "rotations" }, "no rotation step is running");
      return h("ul", { id: "rotations" }, rotations.map((r) => h("li", { class: "rotation" },
        `${r.step} (since ${new Date(r.startedUnix * 1000).toLocaleTimeString()}): ${r.done} of ${r.total} done`,
        h("progress", { max: String(Math.max(1, r.total)), value: String(r.done) }),
        r.waitingFor.length ? ` waiting for ${r.waitingFor.join(", ")}` : "",
        r.disconnected.length ? `; ${r.disconnected.join(", ")} not connected (they do it when they return)` : "")));
    }

    // MARK: Routing

    function route() {
      stopView();
      stopView = () => {};
      const [path, query] = (location.hash.slice(1) || "/").split("?");
      const params = new URLSearchParams(query || "");
      const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
      const view = parts[0] || "graph";
      for (const link of document.querySelectorAll("nav a")) {
        link.classList.toggle("active", link.dataset.view === (view === "trace" ? "traces" : view));
      }
      if (view === "service" && parts[1]) serviceView(parts[1]);
      else if (view === "traces") tracesView(params);
      else if (view === "tap") tapView(params);
      else if (view === "logs") logsView(params);
      else if (view === "config") configView(params);
      else if (view === "trust") trustView();
      else if (view === "trace" && parts[1]) traceView(parts[1]);
      else graphView();
    }

    window.addEventListener("hashchange", route);
    route();
    """#
}
