// The two charts, in SVG with axes and legends: a training's loss and accuracy, drift by window.

import { fmt } from "./dom.js";

// The trend, oldest window on the left: OOD share against its expected share, label and embedding shift.
export function driftChart(windows) {
  const points = [...windows].reverse();
  if (points.length < 2) return "";
  const width = 560, height = 150, pad = 26;
  const top = Math.max(0.05, ...points.map((w) => Math.max(w.ood.share ?? 0, w.ood.expected ?? 0)));
  const x = (i) => pad + (i * (width - 2 * pad)) / (points.length - 1);
  const y = (v, scale = 1) => height - pad - (Math.min(v / scale, 1) * (height - 2 * pad));
  const line = (values, color, scale, dash = "") =>
    `<polyline fill="none" stroke="${color}" stroke-width="2" ${dash} points="${values
      .map((v, i) => (v === null || v === undefined ? null : `${x(i)},${y(v, scale)}`))
      .filter(Boolean)
      .join(" ")}"/>`;
  const marks = points
    .map((w, i) => (w.verdict === "drift" ? `<circle cx="${x(i)}" cy="${pad / 2}" r="4" fill="#c2372f"><title>drift</title></circle>` : ""))
    .join("");
  return `<svg class="chart" id="drift-chart" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" role="img" aria-label="drift by window">
      ${line(points.map((w) => w.ood.expected), "#9aa3b5", top, 'stroke-dasharray="4 4"')}
      ${line(points.map((w) => w.ood.share), "#c2372f", top)}
      ${line(points.map((w) => w.labels.js_distance ?? null), "#2f6fde", 1)}
      ${line(points.map((w) => w.embedding.ks_max ?? null), "#1f8a4c", 1)}${marks}</svg>
    <div class="legend"><span style="color:#c2372f">■ OOD share (0–${(100 * top).toFixed(0)}%)</span><span style="color:#9aa3b5">■ expected</span>
      <span style="color:#2f6fde">■ label JS distance</span><span style="color:#1f8a4c">■ embedding KS</span><span class="muted">● drift</span></div>`;
}

// Loss and accuracy by epoch, with axes: accuracy 0-1 on the left, loss 0-max on the right, epochs below.
export function chart(history) {
  if (history.length < 2) return "";
  const width = 520, height = 180, left = 38, right = 44, top = 12, bottom = 30;
  const series = [
    ["loss", "#c2372f"],
    ["accuracy", "#2f6fde"],
    ["val_accuracy", "#1f8a4c"],
  ].filter(([key]) => key in history[0]);
  const lossTop = Math.max(1, ...history.map((h) => h.loss || 0));
  const x = (i) => left + (i * (width - left - right)) / (history.length - 1);
  const y = (v, key) => height - bottom - ((key === "loss" ? v / lossTop : v) * (height - top - bottom));
  const lines = series
    .map(([key, color]) => `<polyline fill="none" stroke="${color}" stroke-width="2" points="${history.map((h, i) => `${x(i)},${y(h[key], key)}`).join(" ")}"/>`)
    .join("");
  const ticks = [0, 0.5, 1]
    .map((t) => `<line x1="${left}" x2="${width - right}" y1="${y(t)}" y2="${y(t)}" class="grid"/>
      <text x="${left - 6}" y="${y(t) + 4}" text-anchor="end">${t}</text>
      <text x="${width - right + 6}" y="${y(t) + 4}">${fmt(t * lossTop, 1)}</text>`)
    .join("");
  const step = Math.max(1, Math.ceil(history.length / 8));
  const epochs = history
    .map((h, i) => (i % step === 0 || i === history.length - 1 ? `<text x="${x(i)}" y="${height - bottom + 16}" text-anchor="middle">${h.epoch ?? i + 1}</text>` : ""))
    .join("");
  const axes = `<g class="axis" id="accuracy-axis">${ticks}</g><g class="axis" id="epoch-axis">${epochs}
      <text x="${(left + width - right) / 2}" y="${height - 2}" text-anchor="middle">epoch</text></g>`;
  const legend = series.map(([key, color]) => `<span style="color:${color}">■ ${key}${key === "loss" ? " (right axis)" : ""}</span>`).join("");
  return `<figure class="chart-figure"><div class="legend">${legend}</div>
    <svg class="chart" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" role="img" aria-label="loss and accuracy by epoch">${axes}${lines}</svg></figure>`;
}
