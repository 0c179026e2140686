// Plain SVG charts for the dashboard: no library, no build step.
// Every chart is built with DOM calls (never innerHTML), so no value can inject markup.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

function svgEl(tag, attrs, text) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) el.setAttribute(key, String(value));
  if (text !== undefined) el.textContent = text;
  return el;
}

// One limit as a bar: used (solid), held (lighter), the warn and block lines, the cap at the
// right edge. `state` ("allow" | "warn" | "deny") colours the used part; the caller writes
// the state as text beside it.
function limitBar({ used, held, max, warnAt, blockAt, state, label }) {
  const svg = svgEl("svg", { class: "bar", viewBox: "0 0 1000 26", preserveAspectRatio: "none", role: "img" });
  svg.appendChild(svgEl("title", {}, label || ""));
  const scale = (v) => (max > 0 ? Math.max(0, Math.min(1000, (v / max) * 1000)) : 0);
  svg.appendChild(svgEl("rect", { x: 0, y: 4, width: 1000, height: 18, fill: "#e8ecf0" }));
  const u = scale(used);
  const h = Math.min(1000 - u, scale(held));
  svg.appendChild(svgEl("rect", { x: 0, y: 4, width: u, height: 18, fill: `var(--${state || "allow"})` }));
  if (h > 0) svg.appendChild(svgEl("rect", { x: u, y: 4, width: h, height: 18, fill: "var(--held)" }));
  for (const [fraction, colour] of [[warnAt, "var(--warn)"], [blockAt, "var(--deny)"]]) {
    if (fraction > 0 && fraction < 1) {
      const x = fraction * 1000;
      svg.appendChild(svgEl("line", { x1: x, x2: x, y1: 0, y2: 26, stroke: colour, "stroke-width": 4, "stroke-dasharray": "4 2" }));
    }
  }
  return svg;
}

// Stacked columns: `series` is [{key, colour}], `rows` [{start, <key>: n}], one column a row.
function stackedColumns(rows, series, { height = 180, width = 600, yLabel = "" } = {}) {
  const pad = { l: 36, r: 6, t: 8, b: 20 };
  const svg = svgEl("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", role: "img" });
  svg.appendChild(svgEl("title", {}, yLabel));
  const totals = rows.map((r) => series.reduce((sum, s) => sum + (r[s.key] || 0), 0));
  const top = niceMax(Math.max(2, ...totals));
  axes(svg, { width, height, pad, top, rows, format: (v) => (Number.isInteger(v) ? String(v) : v.toFixed(1)) });
  const step = (width - pad.l - pad.r) / Math.max(1, rows.length);
  rows.forEach((row, i) => {
    let y = height - pad.b;
    for (const s of series) {
      const value = row[s.key] || 0;
      if (!value) continue;
      const h = (value / top) * (height - pad.t - pad.b);
      y -= h;
      const rect = svgEl("rect", { x: pad.l + i * step + 0.5, y, width: Math.max(1, step - 1), height: h, fill: s.colour });
      rect.appendChild(svgEl("title", {}, `${new Date(row.start * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })} ${s.key.toUpperCase()} ${value}`));
      svg.appendChild(rect);
    }
  });
  return svg;
}

// One series of columns; `floor` is the smallest top of the y axis.
function columns(rows, key, colour, format, { height = 180, width = 600, yLabel = "", floor = 1e-6 } = {}) {
  const pad = { l: 52, r: 6, t: 8, b: 20 };
  const svg = svgEl("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", role: "img" });
  svg.appendChild(svgEl("title", {}, yLabel));
  const top = niceMax(Math.max(floor, ...rows.map((r) => r[key] || 0)));
  axes(svg, { width, height, pad, top, rows, format });
  const step = (width - pad.l - pad.r) / Math.max(1, rows.length);
  rows.forEach((row, i) => {
    const value = row[key] || 0;
    if (!value) return;
    const h = (value / top) * (height - pad.t - pad.b);
    const rect = svgEl("rect", { x: pad.l + i * step + 0.5, y: height - pad.b - h, width: Math.max(1, step - 1), height: h, fill: colour });
    rect.appendChild(svgEl("title", {}, `${new Date(row.start * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })} ${format(value)}`));
    svg.appendChild(rect);
  });
  return svg;
}

function niceMax(value) {
  const exp = Math.pow(10, Math.floor(Math.log10(value)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * exp >= value) return m * exp;
  return 10 * exp;
}

function axes(svg, { width, height, pad, top, rows, format }) {
  for (const f of [0, 0.5, 1]) {
    const y = height - pad.b - f * (height - pad.t - pad.b);
    svg.appendChild(svgEl("line", { x1: pad.l, x2: width - pad.r, y1: y, y2: y, stroke: "#d9dee5" }));
    svg.appendChild(svgEl("text", { x: pad.l - 4, y: y + 4, "text-anchor": "end", "font-size": 11, fill: "#5b6675" }, format(top * f)));
  }
  if (rows.length) {
    const label = (r) => new Date(r.start * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    svg.appendChild(svgEl("text", { x: pad.l, y: height - 4, "font-size": 11, fill: "#5b6675" }, label(rows[0])));
    svg.appendChild(svgEl("text", { x: width - pad.r, y: height - 4, "text-anchor": "end", "font-size": 11, fill: "#5b6675" }, label(rows[rows.length - 1])));
  }
}

window.QuotaCharts = { limitBar, stackedColumns, columns };
