// The watch page: draws the state the server pushes (server-sent events) with Plotly.
"use strict";
const cell = new URLSearchParams(location.search).get("cell") || "";
const query = cell ? "?cell=" + encodeURIComponent(cell) : "";
const CONFIG = { responsive: true, displaylogo: false };
const MARGIN = { l: 60, r: 20, t: 10, b: 45 };
let updates = 0;
const ticked = new Set();

function $(id) { return document.getElementById(id); }
function fmt(x, digits) { return x === null || x === undefined ? "-" : Number(x).toFixed(digits); }
function show(id, on) { $(id).classList.toggle("hidden", !on); }
function axes(x, y, extra) {
  return Object.assign({ margin: MARGIN, xaxis: { title: { text: x } },
                         yaxis: { title: { text: y } }, legend: { font: { size: 10 } } }, extra || {});
}
function draw(id, traces, layout) { Plotly.react($(id), traces, layout, CONFIG); }
function rows(id, list, cells) {
  const body = $(id).querySelector("tbody");
  body.innerHTML = list.map(r => "<tr" + (r.account ? ' data-account="' + r.account + '"' : "")
    + ">" + cells(r).map(c => "<td>" + c + "</td>").join("") + "</tr>").join("");
}

function header(s) {
  $("title").textContent = "market watch: " + s.name + (cell ? " / " + cell : "");
  $("events").textContent = s.events.toLocaleString("en");
  $("committed").textContent = (s.committed === undefined ? s.events : s.committed).toLocaleString("en");
  $("rate").textContent = Math.round(s.events_per_s || 0).toLocaleString("en");
  $("updates").textContent = updates;
  $("error").textContent = s.error || "";
  const a = s.audit;
  if (a) {
    const el = $("audit");
    el.className = a.ok ? "ok" : "bad";
    el.textContent = a.ok
      ? "audit: clean so far, every rule on " + a.events.toLocaleString("en") + " events ("
        + a.segments + " committed segments)"
      : "audit: FAILED " + a.violation;
  }
}

function drawRun(s) {
  show("run", true);
  const w = s.wealth, names = Object.keys(w.members);
  const last = n => w.members[n][w.members[n].length - 1] || 0;
  const rich = new Set(names.slice().sort((a, b) => last(b) - last(a)).slice(0, 8));
  const traces = names.map(n => ({ x: w.env_steps, y: w.members[n], name: n, mode: "lines",
    line: rich.has(n) ? {} : { color: "#bbb", width: 1 }, showlegend: rich.has(n) }));
  for (const n of Object.keys(w.market)) {
    traces.push({ x: w.env_steps, y: w.market[n], name: n, mode: "lines", yaxis: "y2",
                  line: { dash: "dot" } });
  }
  draw("wealth", traces, axes("env steps", "members' credit",
    { yaxis2: { title: { text: "market accounts" }, overlaying: "y", side: "right" },
      legend: { x: 1.08, font: { size: 10 } }, margin: { l: 60, r: 160, t: 10, b: 45 } }));
  $("gini-all").textContent = fmt(s.gini.all, 6);
  $("gini-living").textContent = fmt(s.gini.living, 6);
  $("agents").textContent = s.gini.agents;
  $("alive").textContent = s.gini.alive;
  const undrawn = s.lorenz.all.wealth_share.every(v => v === null);
  $("lorenz-note").textContent = undrawn ? "no Lorenz curve: the agents' total wealth is not positive" : "";
  draw("lorenz", [
    { x: [0, 1], y: [0, 1], name: "equality", mode: "lines", line: { color: "#ccc", dash: "dash" } },
    { x: s.lorenz.all.population_share, y: s.lorenz.all.wealth_share, mode: "lines",
      name: "all accounts ever opened (Gini " + fmt(s.gini.all, 3) + ")" },
    { x: s.lorenz.living.population_share, y: s.lorenz.living.wealth_share, mode: "lines",
      name: "living members (Gini " + fmt(s.gini.living, 3) + ")", line: { dash: "dot" } },
  ], axes("share of agents, poorest first", "share of wealth"));
  draw("gini", [
    { x: s.gini_series.env_steps, y: s.gini_series.all, name: "all accounts ever opened" },
    { x: s.gini_series.env_steps, y: s.gini_series.living, name: "living members" },
  ], axes("env steps", "Gini"));
  $("window").textContent = s.flows.segments;
  draw("flows", [{ type: "heatmap", x: s.flows.accounts, y: s.flows.accounts, z: s.flows.credit,
    colorscale: "Viridis", hovertemplate: "%{y} paid %{x}: %{z:.4f} credit<extra></extra>" }],
    axes("to (payee)", "from (payer)", { margin: { l: 90, r: 20, t: 10, b: 90 } }));
  rows("wealth-table", s.final_wealth, r => [r.account, fmt(r.credit, 6), r.closed ? "yes" : ""]);
  const p = s.population;
  show("population-box", p.env_steps.length > 0 && (p.births.some(b => b > 0) || p.deaths.some(d => d > 0)));
  draw("population", ["alive", "births", "deaths"].map(k => ({ x: p.env_steps, y: p[k], name: k,
    line: { shape: "hv" } })), axes("env steps", "members"));
  const r = s.returns, e = s.episode_returns;
  show("returns-box", r.mean.length > 0);
  draw("returns", [
    { x: e.episode, y: e.credit, name: "an episode's return", mode: "markers",
      marker: { size: 3, color: "#9ca3af" } },
    { x: r.episodes, y: r.mean, name: "mean per segment", mode: "lines+markers" },
  ], axes("episodes finished", "return (credit)"));
  const ag = s.agent_returns, agents = Object.keys(ag.agents);
  show("agents-box", agents.length > 0);
  draw("agent-returns", agents.map(a => ({ x: ag.episodes, y: ag.agents[a], name: a })),
    axes("episodes finished", "mean return (credit)"));
  const tr = s.trajectory;
  show("trajectory-box", tr && tr.step !== undefined);
  if (tr && tr.step !== undefined) {
    $("trajectory-episode").textContent = tr.episode;
    const lines = tr.x.map((xs, d) => ({ x: tr.step, y: xs, name: "x[" + d + "]", mode: "lines" }));
    lines.push({ x: tr.step, y: tr.control, name: "control (sum)", mode: "lines", yaxis: "y2",
                 line: { dash: "dot" } });
    draw("trajectory", lines, axes("step", "state", { yaxis2: { title: { text: "control" },
      overlaying: "y", side: "right" } }));
  }
  const states = Object.keys(s.prices.states);
  show("prices-box", states.length > 0);
  draw("prices", states.map(st => ({ x: s.prices.env_steps, y: s.prices.states[st],
    name: st === "all" ? "every state" : "state " + st })),
    axes("env steps", "mean price (credit)"));
  show("bids-box", s.bids.length > 0);
  // a state of null: every state at once (a task whose states do not recur)
  const labels = s.bids.map(b => b.state === null ? b.name : "s" + b.state + " " + b.name);
  const bidTraces = [{ type: "bar", x: labels, y: s.bids.map(b => b.mean_bid), name: "mean bid" }];
  if (s.bids.length && s.bids[0].q_star !== undefined) {
    bidTraces.push({ type: "bar", x: labels, y: s.bids.map(b => b.q_star), name: "Q*(state, primitive)" });
  }
  draw("bids", bidTraces, axes("state, primitive", "credit", { barmode: "group" }));
  show("winners-box", s.winners.length > 0);
  rows("winners", s.winners, w => [w.state === null ? "all" : w.state, w.name,
                                   w.wins.toLocaleString("en"), fmt(w.share, 3)]);
  const m = s.metrics, keys = Object.keys(m).filter(k => k !== "update");
  show("metrics-box", keys.length > 0 && m.update !== undefined);
  const select = $("metric");
  if (select.options.length !== keys.length) {
    const chosen = select.value;
    select.innerHTML = keys.map(k => "<option>" + k + "</option>").join("");
    if (keys.includes(chosen)) select.value = chosen;
    else if (keys.includes("policy_loss")) select.value = "policy_loss";
  }
  if (keys.length && m.update !== undefined) {
    draw("metrics", [{ x: m.update, y: m[select.value], name: select.value, mode: "lines" }],
      axes("update", select.value));
  }
  const c = s.config;
  $("footer").innerHTML = "<b>config</b> " + Object.keys(c).map(k => k + "=<code>" + c[k] + "</code>").join(", ")
    + "<br><b>head</b> <code>" + (s.head || "none yet") + "</code> &middot; " + s.segments
    + " segments, " + s.env_steps.toLocaleString("en") + " env steps, " + s.episodes.toLocaleString("en")
    + " episodes" + (s.torn.length ? " &middot; torn tail: " + s.torn.join("; ") : "");
}

function drawSweep(s) {
  show("sweep", true);
  if (updates === 1) s.cells.slice(0, 4).forEach(c => ticked.add(c.name));
  rows("cells", s.cells, c => [
    '<a href="?cell=' + encodeURIComponent(c.name) + '">' + c.name + "</a>",
    '<input type="checkbox" data-cell="' + c.name + '"' + (ticked.has(c.name) ? " checked" : "") + ">",
    c.events.toLocaleString("en"), c.episodes.toLocaleString("en"), c.env_steps.toLocaleString("en"),
    fmt(c.last_return, 4),
    c.audit.ok ? '<span class="ok">clean so far</span>' : '<span class="bad">' + c.audit.violation + "</span>",
  ]);
  const chosen = s.cells.filter(c => ticked.has(c.name));
  draw("compare", chosen.map(c => ({ x: c.returns.env_steps, y: c.returns.mean, name: c.name })),
    axes("env steps", "mean return (credit)"));
  $("footer").textContent = s.cells.length + " cells";
}

let latest = null;
function render(s) {
  latest = s;
  updates += 1;
  header(s);
  if (s.kind === "sweep") drawSweep(s); else drawRun(s);
  document.body.dataset.updates = updates;
}

document.addEventListener("change", ev => {
  const name = ev.target.dataset ? ev.target.dataset.cell : undefined;
  if (name !== undefined) { if (ev.target.checked) ticked.add(name); else ticked.delete(name); }
  if (latest) { updates -= 1; render(latest); }
});

function poll() {  // without EventSource (or while it reconnects): plain requests
  fetch("/state" + query).then(r => r.json()).then(render).catch(() => {});
}

if (window.EventSource) {
  const source = new EventSource("/stream" + query);
  source.onmessage = ev => render(JSON.parse(ev.data));
} else {
  poll();
  setInterval(poll, 1500);
}
