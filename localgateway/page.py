"""The live view page served at ``/_gateway/``: one self-contained HTML document (no external
scripts or styles) that polls ``/_gateway/stats`` every second and renders it with
``textContent`` only (nothing the app or a client sent is ever parsed as HTML)."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Local gateway: live view</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 1rem 2rem; color: #1b1b1b; }
  h1 { font-size: 1.4rem; margin: 0 0 .25rem; }
  h2 { font-size: 1.1rem; margin: 1.2rem 0 .4rem; }
  table { border-collapse: collapse; margin-bottom: .5rem; }
  th, td { border: 1px solid #bbb; padding: .2rem .5rem; text-align: left; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  caption { text-align: left; font-style: italic; color: #444; }
  .alert { background: #ffe3e0; color: #8a1200; font-weight: 600; }
  .empty { color: #555; font-style: italic; }
  code, .mono { font-family: ui-monospace, monospace; font-size: 13px; }
  #status { color: #444; }
  .grid { display: flex; flex-wrap: wrap; gap: 0 2.5rem; }
</style>
</head>
<body>
<header>
  <h1>Local gateway: live view</h1>
  <p id="status" role="status" aria-live="polite">Loading...</p>
  <p>Updated <span id="updated">never</span> (every second).</p>
</header>
<main>
  <div class="grid">
    <section aria-labelledby="h-mgmt">
      <h2 id="h-mgmt">@connections calls by status</h2>
      <table id="management">
        <caption>Management API calls the app made (410 = gone, 403 = forbidden,
          429 = throttled)</caption>
        <thead><tr><th scope="col">Status</th><th scope="col">Method</th>
          <th scope="col">Calls</th></tr></thead>
        <tbody></tbody>
      </table>
    </section>
    <section aria-labelledby="h-metrics">
      <h2 id="h-metrics">App metrics (EMF, summed)</h2>
      <table id="metrics">
        <caption>Every metric the app emitted since the gateway started</caption>
        <thead><tr><th scope="col">Metric</th><th scope="col">Sum</th></tr></thead>
        <tbody></tbody>
      </table>
    </section>
    <section aria-labelledby="h-queues">
      <h2 id="h-queues">Queues</h2>
      <table id="queues">
        <caption>Messages waiting (visible), in flight, and dead letters</caption>
        <thead><tr><th scope="col">Queue</th><th scope="col">Visible</th>
          <th scope="col">In flight</th><th scope="col">Delayed</th></tr></thead>
        <tbody></tbody>
      </table>
    </section>
  </div>
  <section aria-labelledby="h-functions">
    <h2 id="h-functions">Invocations per function</h2>
    <table id="functions">
      <caption>From the containers' REPORT data (durations in ms)</caption>
      <thead><tr><th scope="col">Function</th><th scope="col">Invocations</th>
        <th scope="col">Errors</th><th scope="col">Timeouts</th><th scope="col">Throttles</th>
        <th scope="col">Cold starts</th><th scope="col">Avg</th><th scope="col">p50</th>
        <th scope="col">p99</th><th scope="col">Max</th></tr></thead>
      <tbody></tbody>
    </table>
  </section>
  <section aria-labelledby="h-connections">
    <h2 id="h-connections">Open connections</h2>
    <table id="connections">
      <caption>Rooms are the app's own: see the last frames below for who talks where</caption>
      <thead><tr><th scope="col">Connection</th><th scope="col">State</th>
        <th scope="col">Age (s)</th><th scope="col">Idle (s)</th><th scope="col">Frames in</th>
        <th scope="col">Frames out</th><th scope="col">User agent</th></tr></thead>
      <tbody></tbody>
    </table>
  </section>
  <section aria-labelledby="h-problems">
    <h2 id="h-problems">Recent warnings and errors from the app</h2>
    <ol id="problems" class="mono"></ol>
  </section>
  <section aria-labelledby="h-frames">
    <h2 id="h-frames">Last frames</h2>
    <table id="frames">
      <caption>in = client to gateway, out = delivered through @connections</caption>
      <thead><tr><th scope="col">Time</th><th scope="col">Connection</th>
        <th scope="col">Direction</th><th scope="col">Frame</th></tr></thead>
      <tbody></tbody>
    </table>
  </section>
</main>
<script>
"use strict";
const ALERT_STATUSES = new Set([403, 410, 413, 429, 500]);
const ALERT_METRICS = new Set(["Gone", "Forbidden", "Throttled", "DeliveryFailures",
  "RateLimited", "AuthRefused"]);

function cell(row, text, opts) {
  const td = document.createElement(opts && opts.header ? "th" : "td");
  if (opts && opts.header) td.scope = "row";
  td.textContent = String(text);
  if (opts && opts.num) td.className = "num";
  row.appendChild(td);
  return td;
}

function fill(id, rows, columns, emptyText, decorate) {
  const body = document.querySelector("#" + id + " tbody");
  const fresh = document.createElement("tbody");
  if (rows.length === 0) {
    const tr = fresh.insertRow();
    const td = cell(tr, emptyText);
    td.colSpan = columns;
    td.className = "empty";
  }
  for (const r of rows) {
    const tr = fresh.insertRow();
    decorate(tr, r);
  }
  body.replaceWith(fresh);
}

function render(s) {
  fill("management", s.management, 3, "No calls yet", (tr, r) => {
    tr.dataset.status = r.status;
    tr.dataset.method = r.method;
    if (ALERT_STATUSES.has(r.status)) tr.className = "alert";
    cell(tr, r.status, {header: true});
    cell(tr, r.method);
    cell(tr, r.count, {num: true});
  });
  const metrics = Object.entries(s.metrics);
  fill("metrics", metrics, 2, "No metrics yet", (tr, [name, value]) => {
    tr.dataset.metric = name;
    if (ALERT_METRICS.has(name) && value > 0) tr.className = "alert";
    cell(tr, name, {header: true});
    cell(tr, Math.round(value * 100) / 100, {num: true});
  });
  const queues = s.queues || [];
  fill("queues", queues, 4, s.queue_error ? "Unavailable: " + s.queue_error : "No queues",
    (tr, q) => {
      tr.dataset.queue = q.name;
      if (q.dead_letter && q.visible + q.in_flight > 0) tr.className = "alert";
      cell(tr, q.name + (q.dead_letter ? " (dead letters)" : ""), {header: true});
      cell(tr, q.visible, {num: true});
      cell(tr, q.in_flight, {num: true});
      cell(tr, q.delayed, {num: true});
    });
  fill("functions", Object.entries(s.functions), 10, "No invocations yet", (tr, [name, f]) => {
    tr.dataset.function = name;
    if (f.errors + f.timeouts + f.throttles > 0) tr.className = "alert";
    cell(tr, name, {header: true});
    for (const k of ["invocations", "errors", "timeouts", "throttles", "cold_starts",
                     "avg_ms", "p50_ms", "p99_ms", "max_ms"]) {
      cell(tr, f[k], {num: true});
    }
  });
  fill("connections", s.connections, 7, "No connections", (tr, c) => {
    tr.dataset.connection = c.connection_id;
    cell(tr, c.connection_id, {header: true});
    cell(tr, c.state);
    cell(tr, c.age_s, {num: true});
    cell(tr, c.idle_s, {num: true});
    cell(tr, c.frames_in, {num: true});
    cell(tr, c.frames_out, {num: true});
    cell(tr, c.user_agent);
  });
  const frames = s.recent_frames.slice().reverse();
  fill("frames", frames, 4, "No frames yet", (tr, f) => {
    cell(tr, new Date(f.time * 1000).toLocaleTimeString());
    cell(tr, f.connection_id);
    cell(tr, f.direction);
    cell(tr, f.data).className = "mono";
  });
  const list = document.getElementById("problems");
  const items = document.createElement("ol");
  items.id = "problems";
  items.className = "mono";
  for (const p of s.problems.slice().reverse()) {
    const li = document.createElement("li");
    li.textContent = p.text;
    if (p.level !== "WARNING") li.className = "alert";
    items.appendChild(li);
  }
  if (s.problems.length === 0) {
    const li = document.createElement("li");
    li.className = "empty";
    li.textContent = "None";
    items.appendChild(li);
  }
  list.replaceWith(items);
  document.getElementById("status").textContent =
    "Stage " + s.stage + ": " + s.connections.length + " connection(s), up " +
    Math.round(s.uptime_s / 60) + " min.";
  document.getElementById("updated").textContent = new Date().toLocaleTimeString();
}

async function poll() {
  try {
    const response = await fetch("/_gateway/stats", {cache: "no-store"});
    if (!response.ok) throw new Error("HTTP " + response.status);
    render(await response.json());
  } catch (err) {
    document.getElementById("status").textContent = "Gateway unreachable (" + err.message +
      "); retrying.";
  }
  setTimeout(poll, 1000);
}
poll();
</script>
</body>
</html>
"""
