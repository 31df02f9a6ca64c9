// Apprentice dashboard, part two: the price chart with the served actions (inline SVG, no
// libraries) and "is the model still working" (/model/health). Uses $, esc, fmt from app.js.
"use strict";

const CHART_POINTS = 120; // candles per symbol
const SVG_W = 360, SVG_H = 200, PRICE_TOP = 14, PRICE_BOTTOM = 128, VOL_TOP = 140, VOL_BOTTOM = 186;

function svgEl(tag, attrs, text) {
  const a = Object.entries(attrs).map(([k, v]) => `${k}="${esc(v)}"`).join(" ");
  return text === undefined ? `<${tag} ${a}/>` : `<${tag} ${a}>${text}</${tag}>`;
}

// One symbol: closes as a line, a marker where the served action changed, P(high vol) below.
// points: [{candle_start, close, action, probability_high_vol}, ...] oldest first.
function priceChart(symbol, objs, threshold) {
  const points = objs.map((p) => [p.candle_start, p.close, p.action, p.probability_high_vol]);
  const n = points.length;
  const closes = points.map((p) => p[1]);
  const lo = Math.min(...closes), hi = Math.max(...closes), span = hi - lo || 1;
  const x = (i) => 4 + (i / Math.max(n - 1, 1)) * (SVG_W - 8);
  const yp = (c) => PRICE_BOTTOM - ((c - lo) / span) * (PRICE_BOTTOM - PRICE_TOP);
  const yv = (p) => VOL_BOTTOM - p * (VOL_BOTTOM - VOL_TOP);
  const line = points.map((p, i) => `${x(i).toFixed(1)},${yp(p[1]).toFixed(1)}`).join(" ");
  const area = `${x(0).toFixed(1)},${VOL_BOTTOM} ` +
    points.map((p, i) => `${x(i).toFixed(1)},${yv(p[3]).toFixed(1)}`).join(" ") +
    ` ${x(n - 1).toFixed(1)},${VOL_BOTTOM}`;
  const marks = [];
  points.forEach((p, i) => {
    if (i > 0 && p[2] === points[i - 1][2]) return; // only where the action changed
    const cx = x(i), cy = yp(p[1]), cls = `act-${p[2]}`;
    const title = svgEl("title", {}, `${when(p[0])} ${esc(p[2])} at ${fmt(p[1], 4)}`);
    if (p[2] === "long") {
      marks.push(svgEl("path", { class: cls, d: `M${cx - 4},${cy + 9} L${cx + 4},${cy + 9} L${cx},${cy + 2} Z` }, title));
    } else if (p[2] === "short") {
      marks.push(svgEl("path", { class: cls, d: `M${cx - 4},${cy - 9} L${cx + 4},${cy - 9} L${cx},${cy - 2} Z` }, title));
    } else {
      marks.push(svgEl("circle", { class: cls, cx: cx.toFixed(1), cy: cy.toFixed(1), r: 2.5 }, title));
    }
  });
  const last = points[n - 1];
  return `<div class="chart" data-chart="${esc(symbol)}" data-points="${n}" data-changes="${marks.length}">
    <div><b>${esc(symbol)}</b> <span class="muted small">close ${fmt(last[1], 4)} · ${esc(last[2])} ·
      P(high vol) ${fmt(last[3] * 100, 0)}%</span></div>
    <svg viewBox="0 0 ${SVG_W} ${SVG_H}" preserveAspectRatio="none" role="img"
      aria-label="${esc(symbol)} closes with actions and volatility probability">
      ${svgEl("text", { class: "axis", x: 4, y: 10 }, fmt(hi, 2))}
      ${svgEl("text", { class: "axis", x: 4, y: PRICE_BOTTOM + 10 }, fmt(lo, 2))}
      ${svgEl("polyline", { class: "price", points: line })}
      ${marks.join("")}
      ${svgEl("polygon", { class: "vol", points: area })}
      ${svgEl("line", { class: "thr", x1: 0, x2: SVG_W, y1: yv(threshold).toFixed(1), y2: yv(threshold).toFixed(1) })}
      ${svgEl("text", { class: "axis", x: SVG_W - 70, y: VOL_TOP - 2 }, "P(high vol)")}
      ${svgEl("text", { class: "axis", x: 4, y: SVG_H - 1 }, when(points[0][0]))}
      ${svgEl("text", { class: "axis", x: SVG_W - 4, y: SVG_H - 1, "text-anchor": "end" }, `${when(last[0])} UTC`)}
    </svg></div>`;
}

function renderCharts(c) {
  const html = Object.entries(c.points).filter(([, pts]) => pts.length > 1)
    .map(([sym, pts]) => priceChart(sym, pts, c.regime_threshold));
  $("charts").innerHTML = html.join("") || '<p class="muted">waiting for signals…</p>';
}

function psiClass(v) {
  return v === null ? "" : v > 0.25 ? "psi-bad" : v > 0.1 ? "psi-warn" : "";
}

function renderHealth(h) {
  $("health-n").textContent = `last N = ${h.n} scored candles (at most ${h.window}) per symbol and head`;
  const period = $("period");
  period.dataset.sample = h.period.in_sample === null ? "unknown" : h.period.in_sample ? "in" : "out";
  period.textContent = h.period.statement;
  $("policy").textContent = h.policy.statement;
  $("drift-note").textContent = h.drift.explanation || "";
  const rows = [];
  for (const [sym, heads] of Object.entries(h.symbols)) {
    for (const [head, x] of Object.entries(heads)) {
      const live = x.live, base = x.no_skill, test = x.test || {};
      const better = x.beats_no_skill === null ? "" : x.beats_no_skill ? "pos" : "neg";
      rows.push(`<tr data-head="${esc(sym)}-${esc(head)}"><td>${esc(sym)}</td><td>${esc(head)}</td>
        <td>${x.n}</td><td class="${better}">${live ? fmt(live.log_loss, 4) : "–"}</td>
        <td>${base ? fmt(base.log_loss, 4) : "–"}</td><td>${fmt(test.log_loss, 4)}</td>
        <td>${live ? fmt(live.accuracy * 100, 1) + "%" : "–"}</td><td>${live ? fmt(live.auc, 3) : "–"}</td>
        <td>${live ? fmt(live.brier, 4) : "–"}</td></tr>`);
    }
  }
  $("health").tBodies[0].innerHTML = rows.join("");
  const d = h.drift;
  $("drift-n").textContent = `${d.n} live vectors · alert above ${d.alert_above}`;
  $("drift").tBodies[0].innerHTML = d.note && !Object.keys(d.features).length
    ? `<tr><td colspan="2" class="muted">${esc(d.note)}</td></tr>`
    : Object.entries(d.features).map(([f, v]) =>
      `<tr><td>${esc(f)}</td><td class="${psiClass(v)}">${v === null ? "–" : fmt(v, 3)}</td></tr>`).join("");
}

async function refreshHealth() {
  await Promise.allSettled([
    getJSON(`/chart?limit=${CHART_POINTS}`).then((r) => (r.status === 200 ? renderCharts(r.body) : null)),
    getJSON("/model/health").then((r) => (r.status === 200 ? renderHealth(r.body) : null)),
  ]);
}

refreshHealth();
setInterval(refreshHealth, PERIOD_MS);
