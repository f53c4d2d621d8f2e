// A small line chart drawn as inline SVG: no library, so the pages keep
// their strict Content-Security-Policy and load nothing from outside.
"use strict";

edgeloop.lineChart = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const M = { top: 12, right: 14, bottom: 26, left: 46 };

  function el(name, attrs, ...children) {
    const node = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== undefined && v !== null) node.setAttribute(k, String(v));
    }
    for (const c of children) {
      if (c !== null && c !== undefined) node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    }
    return node;
  }

  // Round numbers for axis ticks: 1, 2 or 5 times a power of ten.
  function ticks(lo, hi, count) {
    if (!(hi > lo)) return [lo];
    const raw = (hi - lo) / Math.max(1, count);
    const mag = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
    return out;
  }

  function extent(values, fixedLo, fixedHi) {
    let lo = fixedLo ?? Math.min(...values);
    let hi = fixedHi ?? Math.max(...values);
    if (!isFinite(lo) || !isFinite(hi)) return [0, 1];
    if (hi - lo < 1e-9) {
      const pad = Math.abs(hi) * 0.1 || 0.5;
      lo = fixedLo ?? lo - pad;
      hi = fixedHi ?? hi + pad;
    } else if (fixedLo === undefined || fixedHi === undefined) {
      const pad = (hi - lo) * 0.08;
      lo = fixedLo ?? lo - pad;
      hi = fixedHi ?? hi + pad;
    }
    return [lo, hi];
  }

  // series: [{name, color, points: [{x, y, label, cls}]}]; opts: xLabel, yFormat, yMin, yMax, xFormat, empty
  function draw(container, series, opts = {}) {
    const width = Math.max(240, container.clientWidth || 560);
    const height = opts.height || 190;
    const pts = series.flatMap((s) => s.points.filter((p) => Number.isFinite(p.y)));
    container.replaceChildren();
    if (!pts.length) {
      container.appendChild(edgeloop.h("div.chart-empty.muted", opts.empty || "No data yet."));
      return null;
    }
    const [x0, x1] = extent(pts.map((p) => p.x), opts.xMin, opts.xMax);
    const [y0, y1] = extent(pts.map((p) => p.y), opts.yMin, opts.yMax);
    const w = width - M.left - M.right;
    const hgt = height - M.top - M.bottom;
    const sx = (x) => M.left + ((x - x0) / (x1 - x0)) * w;
    const sy = (y) => M.top + (1 - (y - y0) / (y1 - y0)) * hgt;
    const yFormat = opts.yFormat || ((v) => String(Number(v.toPrecision(3))));
    const xFormat = opts.xFormat || ((v) => String(v));
    const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, width, height, class: "linechart", role: "img",
      "aria-label": opts.label || "chart" });
    for (const t of ticks(y0, y1, 4)) {
      svg.appendChild(el("line", { x1: M.left, x2: width - M.right, y1: sy(t), y2: sy(t), class: "grid" }));
      svg.appendChild(el("text", { x: M.left - 6, y: sy(t) + 4, "text-anchor": "end", class: "tick" }, yFormat(t)));
    }
    const xTicks = ticks(x0, x1, Math.min(10, Math.max(1, Math.floor(w / 60)))).filter((t) => Number.isInteger(t));
    for (const t of xTicks) {
      svg.appendChild(el("text", { x: sx(t), y: height - 8, "text-anchor": "middle", class: "tick" }, xFormat(t)));
    }
    svg.appendChild(el("line", { x1: M.left, x2: width - M.right, y1: M.top + hgt, y2: M.top + hgt, class: "axis" }));
    if (opts.xLabel) {
      svg.appendChild(el("text", { x: width - M.right, y: height - 8, "text-anchor": "end", class: "axis-label" },
        opts.xLabel));
    }
    series.forEach((s, i) => {
      const good = s.points.filter((p) => Number.isFinite(p.y));
      const g = el("g", { class: "series", "data-series": s.name });
      if (good.length > 1) {
        g.appendChild(el("polyline", { points: good.map((p) => `${sx(p.x)},${sy(p.y)}`).join(" "),
          fill: "none", stroke: s.color, "stroke-width": 2, "stroke-linejoin": "round" }));
      }
      for (const p of good) {
        g.appendChild(el("circle", { cx: sx(p.x), cy: sy(p.y), r: s.radius || 3.5, fill: p.color || s.color,
          class: `pt ${p.cls || ""}`, "data-x": p.x, "data-y": p.y },
        el("title", null, p.label || `${s.name}: ${yFormat(p.y)} at ${xFormat(p.x)}`)));
      }
      svg.appendChild(g);
      if (series.length > 1) {
        const lx = M.left + 8 + i * 90;
        svg.appendChild(el("rect", { x: lx, y: M.top, width: 10, height: 3, fill: s.color }));
        svg.appendChild(el("text", { x: lx + 14, y: M.top + 4, class: "legend-text" }, s.name));
      }
    });
    container.appendChild(svg);
    return svg;
  }

  return draw;
})();
