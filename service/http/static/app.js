// Apprentice dashboard: polls the service's own JSON routes and /metrics; no libraries.
"use strict";

const PERIOD_MS = 2000;
const HISTORY = 120; // probability points per symbol
const $ = (id) => document.getElementById(id);

function fmt(x, digits = 2) {
  return x === null || x === undefined || Number.isNaN(x) ? "–" : Number(x).toFixed(digits);
}
function signed(x, digits = 2) {
  const cls = x > 0 ? "pos" : x < 0 ? "neg" : "";
  return `<span class="${cls}">${x > 0 ? "+" : ""}${fmt(x, digits)}</span>`;
}
function when(ms) {
  return new Date(ms).toISOString().replace("T", " ").slice(0, 16);
}
function us(seconds) {
  if (seconds === null) return "–";
  const u = seconds * 1e6;
  return u < 1000 ? `${u.toFixed(0)} µs` : `${(u / 1000).toFixed(1)} ms`;
}
function esc(s) {
  return String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
}
async function getJSON(path) {
  const r = await fetch(path, { cache: "no-store" });
  return { status: r.status, body: await r.json() };
}

// Line chart on a canvas with a time axis, sized to its CSS box. series: [{points: [[ms, y]],
// color}]; the first series sets nothing special: every series shares the axes.
function chart(canvas, series, { lo, hi, mid, axis = true }) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || canvas.width, h = canvas.clientHeight || canvas.height;
  canvas.width = w * dpr; canvas.height = h * dpr;
  const g = canvas.getContext("2d");
  g.scale(dpr, dpr);
  g.clearRect(0, 0, w, h);
  series = series.filter((s) => s.points.length > 1)
    .map((s) => ({ ...s, points: s.points.slice().sort((a, b) => a[0] - b[0]) }));
  if (!series.length) return;
  const all = series.flatMap((s) => s.points);
  const ys = all.map((p) => p[1]), xs = all.map((p) => p[0]);
  const y0 = lo ?? Math.min(...ys), y1 = hi ?? Math.max(...ys);
  const span = y1 - y0 || 1;
  const x0 = Math.min(...xs), xspan = Math.max(...xs) - x0 || 1;
  const bottom = axis ? 14 : 0; // room for the time labels
  const px = (x) => 4 + ((x - x0) / xspan) * (w - 8);
  const py = (y) => h - bottom - 4 - ((y - y0) / span) * (h - bottom - 8);
  if (mid !== undefined) {
    g.strokeStyle = "#3a4552"; g.setLineDash([4, 4]); g.beginPath();
    g.moveTo(0, py(mid)); g.lineTo(w, py(mid)); g.stroke(); g.setLineDash([]);
  }
  for (const s of series) {
    g.strokeStyle = s.color; g.lineWidth = 1.6; g.beginPath();
    s.points.forEach(([x, y], i) => (i ? g.lineTo(px(x), py(y)) : g.moveTo(px(x), py(y))));
    g.stroke();
  }
  if (axis) { // time axis: first, middle and last candle, UTC
    g.fillStyle = "#8a96a3"; g.font = "10px system-ui, sans-serif";
    const t = (ms) => new Date(ms).toISOString().slice(5, 16).replace("T", " ");
    g.textAlign = "left"; g.fillText(t(x0), 2, h - 2);
    g.textAlign = "center"; g.fillText(t(x0 + xspan / 2), w / 2, h - 2);
    g.textAlign = "right"; g.fillText(`${t(x0 + xspan)} UTC`, w - 2, h - 2);
    g.textAlign = "left"; g.fillText(fmt(y1, 2), 2, 10);
  }
}

function renderSignals(data) {
  const box = $("signals");
  const cards = [];
  for (const s of data.signals) {
    const badge = s.action === "flat" ? "" : s.action;
    cards.push(`<div class="card ${esc(s.action)}" data-symbol="${esc(s.symbol)}" data-action="${esc(s.action)}">
      <div><span class="sym">${esc(s.symbol)}</span><span class="badge ${badge}">${esc(s.action)}</span>
        ${s.stale ? '<span class="badge stale">stale</span>' : ""}</div>
      <div class="prob">${s.direction === "up" ? "▲" : "▼"} ${fmt(s.probability_up * 100, 1)}%</div>
      <div class="muted small">P(up) · confidence ${fmt(s.confidence, 3)} · candle ${when(s.candle_start)} UTC</div>
      <div class="small vol" data-regime="${esc(s.volatility.regime)}">volatility: P(high) ${fmt(s.volatility.probability_high * 100, 1)}% · regime <b>${esc(s.volatility.regime)}</b></div>
      <div class="muted small">features ${fmt(s.latency_us.features, 1)} µs · inference ${fmt(s.latency_us.inference, 1)} µs · age ${fmt(s.age_seconds, 1)} s</div>
      <canvas id="spark-${esc(s.symbol)}" width="260" height="48"></canvas></div>`);
  }
  for (const w of data.warming) {
    cards.push(`<div class="card" data-symbol="${esc(w.symbol)}"><span class="sym">${esc(w.symbol)}</span>
      <span class="badge">warming</span><div class="muted">${w.bars}/${w.needed} closed candles</div></div>`);
  }
  box.innerHTML = cards.join("") || '<p class="muted">no symbols</p>';
  for (const s of data.signals) {
    const pts = (data.history && data.history[s.symbol]) || [];
    chart($(`spark-${s.symbol}`), [{ points: pts, color: "#4c9aff" }], { lo: 0, hi: 1, mid: 0.5 });
  }
}

function pct(x, digits = 2) {
  return x === null || x === undefined ? "–" : signed(x * 100, digits) + "%";
}
function held(ms) {
  const m = Math.round(ms / 60000);
  return m < 120 ? `${m} min` : m < 2880 ? `${(m / 60).toFixed(1)} h` : `${(m / 1440).toFixed(1)} d`;
}

function renderPaper(p) {
  $("paper-account").textContent = `#${p.account} · ${p.currency} · policy ${p.policy}`;
  const bh = p.buy_and_hold_equity - p.initial_usdt;
  $("paper-figures").innerHTML = [
    ["equity", fmt(p.equity)], ["net PnL (after fees)", signed(p.net_pnl)],
    ["realised (before fees)", signed(p.realized_pnl)], ["unrealised", signed(p.unrealized_pnl)],
    ["fees paid", fmt(p.fees)], ["fills", p.fills], ["round trips", p.round_trips],
    ["buy and hold PnL", signed(bh)], ["drawdown", `${fmt(p.drawdown * 100)}%`],
  ].map(([k, v]) => `<div><span class="muted small">${k}</span><b>${v}</b></div>`).join("");
  chart($("equity"), [{ points: p.buy_and_hold_curve, color: "#c9a227" },
    { points: p.equity_curve, color: "#2fbf71" }], { mid: p.initial_usdt });
  $("positions").tBodies[0].innerHTML = p.positions.map((x) => `<tr><td>${esc(x.symbol)}</td>
    <td>${x.side}</td><td>${fmt(x.target, 2)}</td><td>${fmt(x.qty, 5)}</td><td>${fmt(x.avg_entry, 4)}</td>
    <td>${fmt(x.mark, 4)}</td><td>${signed(x.unrealized_pnl)}</td><td>${signed(x.realized_pnl)}</td>
    <td>${fmt(x.fees)}</td><td>${signed(x.net_pnl)}</td></tr>`).join("");
  $("trips").tBodies[0].innerHTML = p.round_trip_list.slice(0, 12).map((t) => `<tr>
    <td>${esc(t.symbol)}</td><td>${t.side}</td><td>${when(t.entry_ms)}</td><td>${when(t.exit_ms)}</td>
    <td>${held(t.exit_ms - t.entry_ms)}</td><td>${fmt(t.entry_price, 4)}</td><td>${fmt(t.exit_price, 4)}</td>
    <td>${pct(t.return)}</td><td>${fmt(t.fees)}</td><td>${signed(t.net_pnl)}</td></tr>`).join("")
    || '<tr><td colspan="10" class="muted">no round trip closed yet</td></tr>';
}

function renderTrades(t) {
  $("trades").tBodies[0].innerHTML = t.trades.map((x) => `<tr><td>${when(x.candle_start)}</td>
    <td>${esc(x.symbol)}</td><td>${x.side}</td><td>${fmt(x.qty, 5)}</td><td>${fmt(x.price, 4)}</td>
    <td>${fmt(x.fee, 4)}</td><td>${signed(x.realized_pnl)}</td><td>${esc(x.action)}</td></tr>`).join("")
    || '<tr><td colspan="8" class="muted">no fills yet</td></tr>';
}

// Prometheus text -> {name: [[le, cumulative count], ...]} for un-labelled histograms.
function histograms(text) {
  const out = {};
  for (const line of text.split("\n")) {
    const m = line.match(/^(apprentice_\w+)_bucket\{le="([^"]+)"\} ([0-9.eE+-]+)$/);
    if (m) (out[m[1]] = out[m[1]] || []).push([parseFloat(m[2]), parseFloat(m[3])]);
  }
  return out;
}
function quantile(buckets, q) {
  if (!buckets || !buckets.length) return null;
  const total = buckets[buckets.length - 1][1];
  if (!total) return null;
  const rank = q * total;
  let prevLe = 0, prevN = 0;
  for (const [le, n] of buckets) {
    if (n >= rank) return le === Infinity ? prevLe : prevLe + ((le - prevLe) * (rank - prevN)) / Math.max(n - prevN, 1e-12);
    prevLe = le; prevN = n;
  }
  return prevLe;
}
function renderLatency(text) {
  const h = histograms(text);
  const rows = [["frame → signal", "apprentice_signal_latency_seconds"],
    ["features", "apprentice_feature_update_seconds"], ["inference", "apprentice_inference_seconds"]];
  $("latency").tBodies[0].innerHTML = rows.map(([label, name]) => {
    const b = h[name];
    const n = b && b.length ? b[b.length - 1][1] : 0;
    return `<tr><td>${label}</td><td>${us(quantile(b, 0.5))}</td><td>${us(quantile(b, 0.9))}</td>
      <td>${us(quantile(b, 0.99))}</td><td>${n}</td></tr>`;
  }).join("");
}

function renderReady(r) {
  const el = $("status");
  el.className = `pill ${r.status === 200 ? "ok" : "bad"}`;
  el.textContent = r.status === 200 ? "ready" : `not ready: ${r.body.reasons[0] || "?"}`;
  el.title = (r.body.reasons || []).join("\n");
}

async function refresh() {
  const jobs = [
    getJSON(`/signals?history=${HISTORY}`).then((r) => renderSignals(r.body)),
    getJSON("/ready").then(renderReady),
    getJSON("/model").then((r) => {
      if (r.status === 200) $("model").textContent = `model: ${r.body.name} ${r.body.version} · interval ${r.body.interval}m · window ${r.body.window}`;
    }),
    getJSON("/paper").then((r) => (r.status === 200 ? renderPaper(r.body) : null)),
    getJSON("/paper/trades?limit=12").then((r) => (r.status === 200 ? renderTrades(r.body) : null)),
    fetch("/metrics", { cache: "no-store" }).then((r) => r.text()).then(renderLatency),
  ];
  const results = await Promise.allSettled(jobs);
  const failed = results.filter((x) => x.status === "rejected").length;
  $("updated").textContent = failed ? `${failed} requests failed at ${new Date().toLocaleTimeString()}`
    : `updated ${new Date().toLocaleTimeString()}`;
}

$("every").textContent = PERIOD_MS / 1000;
refresh();
setInterval(refresh, PERIOD_MS);
