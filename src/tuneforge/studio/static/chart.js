// A small hand-written SVG line chart: lineChart(element, [{name, color, points: [[x, y], ...]}], {xLabel, yLabel}).
// Every point is drawn (no sampling), so a curve never silently drops steps.
"use strict";

function niceTicks(lo, hi, n) {
  if (!isFinite(lo) || !isFinite(hi)) return [];
  if (hi === lo) { hi = lo + 1; }
  const raw = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map(m => m * mag).find(s => s >= raw) || raw;
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-12; v += step) ticks.push(+v.toPrecision(6));
  return ticks;
}

function lineChart(el, series, opts) {
  opts = opts || {};
  const W = opts.width || 640, H = opts.height || 280, L = 56, R = 12, T = 12, B = 36;
  const all = series.flatMap(s => s.points).filter(p => isFinite(p[1]));
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("class", "chart");
  svg.setAttribute("data-points", String(all.length));
  const add = (tag, attrs, text) => {
    const e = document.createElementNS(ns, tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    svg.appendChild(e);
    return e;
  };
  if (!all.length) {
    add("text", {x: W / 2, y: H / 2, "text-anchor": "middle", class: "axis"}, "no steps logged yet");
    el.replaceChildren(svg);
    return svg;
  }
  let x0 = Math.min(...all.map(p => p[0])), x1 = Math.max(...all.map(p => p[0]));
  let y0 = Math.min(...all.map(p => p[1])), y1 = Math.max(...all.map(p => p[1]));
  if (x1 === x0) x1 = x0 + 1;
  const pad = (y1 - y0) * 0.05 || 0.5; y0 -= pad; y1 += pad;
  const sx = x => L + (x - x0) / (x1 - x0) * (W - L - R), sy = y => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  for (const t of niceTicks(y0, y1, 5)) {
    add("line", {x1: L, x2: W - R, y1: sy(t), y2: sy(t), class: "grid"});
    add("text", {x: L - 6, y: sy(t) + 4, "text-anchor": "end", class: "axis"}, String(t));
  }
  for (const t of niceTicks(x0, x1, 6)) {
    add("text", {x: sx(t), y: H - B + 16, "text-anchor": "middle", class: "axis"}, String(t));
  }
  add("text", {x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle", class: "axis"}, opts.xLabel || "step");
  add("text", {x: 12, y: T + 8, class: "axis"}, opts.yLabel || "loss");
  series.forEach((s, i) => {
    const pts = s.points.filter(p => isFinite(p[1]));
    if (!pts.length) return;
    const d = pts.map((p, j) => `${j ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ");
    add("path", {d, class: "line", stroke: s.color, "data-series": s.name, "data-n": pts.length});
    if (pts.length < 120) for (const p of pts) add("circle", {cx: sx(p[0]), cy: sy(p[1]), r: 2, fill: s.color});
    add("text", {x: W - R - 4, y: T + 14 + 14 * i, "text-anchor": "end", fill: s.color, class: "legend"}, s.name);
  });
  el.replaceChildren(svg);
  return svg;
}
