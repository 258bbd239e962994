// The console's page: one EventSource (a tick a second from console/hub.py), the tables, the
// charts as plain SVG, and the two forms. No library, nothing from elsewhere.
"use strict";

const token = document.querySelector('meta[name="csrf-token"]').content;
const COLOURS = ["#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"];
const FAULT_COLOURS = {kill: "#d62728", hang: "#9467bd", "redis-stall": "#8c564b", partition: "#17becf",
                       storm: "#ff7f0e"};
const SPAN_S = 180;
const SVG = "http://www.w3.org/2000/svg";
let ticks = [];
let faults = [];

const $ = (id) => document.getElementById(id);
const fmt = (v, digits = 1) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));
const clock = (t) => new Date(t * 1000).toISOString().slice(11, 19);
const after = (t, from) => (t === null || t === undefined ? "–" : `+${(t - from).toFixed(1)} s`);

function showInstances(rows) {
  for (const row of rows) {
    const tr = $(`row-${row.name}`);
    if (!tr) continue;
    tr.className = `state-${row.state}`;
    tr.dataset.state = row.state;
    tr.querySelector(".state").textContent = row.state;
    tr.querySelector(".rps").textContent = fmt(row.rps);
    tr.querySelector(".p50").textContent = fmt(row.p50_ms, 2);
    tr.querySelector(".p99").textContent = fmt(row.p99_ms, 2);
    tr.querySelector(".errors").textContent = fmt(row.errors_per_s);
    tr.querySelector(".hits").textContent =
      row.near_cache_hit_ratio === null ? "–" : `${(row.near_cache_hit_ratio * 100).toFixed(0)} %`;
    tr.querySelector(".pid").textContent = row.pid || "–";
    tr.querySelector(".why").textContent = row.why;
  }
}

function showStore(store) {
  $("primary").textContent = store.primary || "none (the Sentinels disagree or are down)";
  $("live-sessions").textContent = store.live_sessions === null ? "?" : store.live_sessions;
  const body = $("store").querySelector("tbody");
  body.replaceChildren(...store.nodes.map((node) => {
    const tr = document.createElement("tr");
    tr.className = node.role === "not answering" ? "state-down" : "state-serving";
    const mb = node.memory_bytes === null ? "–" : `${(node.memory_bytes / 1048576).toFixed(1)} MB`;
    for (const text of [`${node.name} :${node.port}`, node.role === "master" ? "primary" :
                        node.role === "slave" ? "replica" : node.role, node.ops_per_s ?? "–", mb]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    return tr;
  }));
}

function showFaults(list) {
  const body = $("faults").querySelector("tbody");
  body.replaceChildren(...list.slice().reverse().map((f) => {
    const tr = document.createElement("tr");
    tr.dataset.kind = f.kind;
    tr.dataset.victim = f.name;
    tr.dataset.recovered = f.recovered_at ? "yes" : "no";
    const held = f.lifted_at ? "" : " (under way)";
    for (const [cls, text] of [["kind", f.kind + held], ["victim", f.name], ["by", f.by], ["at", clock(f.at)],
                               ["held", f.hold_s ? `${f.hold_s} s` : "–"], ["detected", after(f.detected_at, f.at)],
                               ["lifted", after(f.lifted_at, f.at)], ["recovered", after(f.recovered_at, f.at)]]) {
      const td = document.createElement("td");
      td.className = cls;
      td.textContent = text;
      tr.append(td);
    }
    return tr;
  }));
}

function showCrowd(crowd) {
  if (!crowd) return;
  $("crowd-running").textContent = crowd.running ? `yes, ${crowd.elapsed_s} of ${crowd.seconds} s, ${crowd.users} users`
                                                 : `ended after ${crowd.elapsed_s} s`;
  $("crowd-requests").textContent = crowd.requests;
  for (const [outcome, count] of Object.entries(crowd.outcomes)) {
    const cell = $(`ledger-${outcome}`);
    if (cell) cell.textContent = count;
  }
  const verdict = $("verdict");
  verdict.textContent = crowd.verdict || (crowd.broken ? "failing" : "so far so good");
  verdict.className = crowd.verdict === "PASS" ? "pass" : crowd.verdict || crowd.broken ? "fail" : "";
}

// -- the charts ----------------------------------------------------------------------------------
function el(name, attrs, text) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function chart(svg, series, now, span) {
  const [w, h] = [900, Number(svg.getAttribute("viewBox").split(" ")[3])];
  const left = 40, bottom = h - 14;
  const x = (t) => left + ((t - (now - span)) / span) * (w - left);
  const max = Math.max(1, ...series.flatMap((s) => s.points.map((p) => p[1])));
  const y = (v) => bottom - (v / max) * (bottom - 6);
  const nodes = [el("line", {x1: left, y1: bottom, x2: w, y2: bottom, stroke: "#aab"}),
                 el("text", {x: 2, y: 12, "font-size": 11}, fmt(max, max < 10 ? 1 : 0)),
                 el("text", {x: 2, y: bottom, "font-size": 11}, "0"),
                 el("text", {x: left, y: h - 2, "font-size": 10}, `-${Math.round(span)} s`),
                 el("text", {x: w - 30, y: h - 2, "font-size": 10}, "now")];
  for (const f of faults) {
    const end = f.lifted_at && f.lifted_at > f.at + 0.5 ? f.lifted_at : null;
    if ((end || f.at) < now - span) continue;
    const colour = FAULT_COLOURS[f.kind] || "#d62728";
    if (end || !f.lifted_at) {
      const x0 = Math.max(left, x(f.at));
      nodes.push(el("rect", {x: x0, y: 0, width: Math.max(2, x(end || now) - x0), height: bottom,
                             fill: colour, "fill-opacity": 0.15}));
    } else {
      nodes.push(el("line", {x1: x(f.at), y1: 0, x2: x(f.at), y2: bottom, stroke: colour, "stroke-width": 2}));
    }
    nodes.push(el("text", {x: Math.max(left, x(f.at)) + 2, y: 10, "font-size": 10, fill: colour}, `${f.kind} ${f.name}`));
  }
  series.forEach((s, i) => {
    const points = s.points.filter((p) => p[0] >= now - span && p[1] !== null);
    if (points.length > 1) {
      nodes.push(el("polyline", {points: points.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" "),
                                 fill: "none", stroke: s.colour || COLOURS[i % COLOURS.length], "stroke-width": 1.5}));
    }
  });
  svg.replaceChildren(...nodes);
}

function drawCharts() {
  if (!ticks.length) return;
  const now = ticks[ticks.length - 1].at;
  // What the console has sampled, up to SPAN_S: it samples only while it is watched.
  const span = Math.min(SPAN_S, Math.max(60, now - ticks[0].at));
  const names = ticks[ticks.length - 1].instances.map((r) => r.name);
  chart($("chart-rps"), names.map((name) => ({
    points: ticks.map((t) => [t.at, (t.instances.find((r) => r.name === name) || {}).rps ?? 0]),
  })), now, span);
  const sum = (t, key) => t.instances.reduce((a, r) => a + (r[key] || 0), 0);
  const top = (t, key) => Math.max(0, ...t.instances.map((r) => r[key] || 0));
  chart($("chart-errors"), [{points: ticks.map((t) => [t.at, sum(t, "errors_per_s")]), colour: "#c62828"}], now, span);
  chart($("chart-p99"), [{points: ticks.map((t) => [t.at, top(t, "p99_ms")]), colour: "#555"}], now, span);
  $("legend").replaceChildren(...names.map((name, i) => {
    const swatch = document.createElement("span");
    swatch.className = `swatch swatch-${i % COLOURS.length}`;
    swatch.textContent = name;
    return swatch;
  }));
}

// -- the stream ----------------------------------------------------------------------------------
function connect() {
  const source = new EventSource("/console/events");
  source.addEventListener("open", () => { $("stream").textContent = "live"; });
  source.addEventListener("error", () => { $("stream").textContent = "reconnecting…"; });
  source.addEventListener("history", (event) => {
    const history = JSON.parse(event.data);
    ticks = history.ticks;
    faults = history.faults;
    showFaults(faults);
    showCrowd(history.crowd);
    drawCharts();
  });
  source.addEventListener("message", (event) => {
    const now = JSON.parse(event.data);
    ticks.push(now.tick);
    while (ticks.length && ticks[0].at < now.tick.at - SPAN_S) ticks.shift();
    for (const f of now.faults) {
      const i = faults.findIndex((g) => g.at === f.at && g.name === f.name);
      if (i >= 0) faults[i] = f; else faults.push(f);
    }
    showInstances(now.tick.instances);
    showStore(now.tick.store);
    showFaults(faults.slice(-20));
    showCrowd(now.crowd);
    drawCharts();
    $("fault-go").disabled = now.fault !== null;
    document.body.dataset.tick = now.tick.at;
  });
}

async function post(path, body, answer, method = "POST") {
  answer.textContent = "…";
  const response = await fetch(path, {method, headers: {"Content-Type": "application/json", "X-CSRF-Token": token},
                                      body: body === null ? undefined : JSON.stringify(body)});
  const reply = await response.json().catch(() => ({}));
  answer.textContent = response.ok ? "done" : `${response.status}: ${reply.detail || response.statusText}`;
  answer.className = response.ok ? "answer" : "answer error";
}

$("fault-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const kind = $("fault-kind").value;
  post("/console/api/faults", {kind, target: $("fault-target").value,
                               seconds: ["hang", "partition", "redis-stall"].includes(kind)
                                 ? Number($("fault-seconds").value) : null}, $("fault-answer"));
});
$("crowd-form").addEventListener("submit", (event) => {
  event.preventDefault();
  post("/console/api/crowd", {users: Number($("crowd-users").value), seconds: Number($("crowd-seconds").value)},
       $("crowd-answer"));
});
$("crowd-stop").addEventListener("click", () => post("/console/api/crowd", null, $("crowd-answer"), "DELETE"));
connect();
