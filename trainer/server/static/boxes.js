// The detection box editor: an SVG overlay over the image. Boxes are kept in
// normalized [0, 1] image coordinates (the API's unit) and drawn in pixels, so
// a window resize only needs a redraw.
"use strict";

class BoxEditor {
  constructor(svg, labels, onChange) {
    this.svg = svg;
    this.labels = labels;
    this.onChange = onChange || (() => {});
    this.boxes = [];
    this.original = "[]";
    this.selected = -1;
    this.drag = null;
    this.currentLabel = labels[0] || "";
    this.loaded = false; // until the pre-labels are placed on the loaded image
    svg.addEventListener("pointerdown", (e) => this._down(e));
    svg.addEventListener("pointermove", (e) => this._move(e));
    svg.addEventListener("pointerup", (e) => this._up(e));
    svg.addEventListener("pointercancel", () => { this.drag = null; this.render(); });
  }

  // Pre-labels: the model's boxes whose score reaches the threshold.
  load(boxes) {
    this.boxes = boxes.map((b) => ({
      x1: b.x1, y1: b.y1, x2: b.x2, y2: b.y2, label: b.label,
      score: b.score === undefined ? null : b.score, model: b.score !== undefined,
    }));
    this.original = this._signature();
    this.loaded = true;
    this.selected = this.boxes.length ? 0 : -1;
    this.render();
    this.onChange();
  }

  changed() { return this._signature() !== this.original; }

  result() {
    return this.boxes.map((b) => ({
      x1: round(b.x1), y1: round(b.y1), x2: round(b.x2), y2: round(b.y2), label: b.label,
    }));
  }

  cycle(step) {
    if (!this.boxes.length) return;
    const n = this.boxes.length;
    this.selected = this.selected < 0 ? (step > 0 ? 0 : n - 1) : (this.selected + step + n) % n;
    this.render();
    this.onChange();
  }

  select(i) {
    this.selected = i;
    this.render();
    this.onChange();
  }

  deleteSelected() {
    if (this.selected < 0) return false;
    this.boxes.splice(this.selected, 1);
    this.selected = Math.min(this.selected, this.boxes.length - 1);
    this._touched();
    return true;
  }

  // Number keys and [ ] set the selected box's class; with no box selected
  // they choose the class the next drawn box gets.
  setLabel(label) {
    this.currentLabel = label;
    const b = this.boxes[this.selected];
    if (b) { b.label = label; b.model = false; this._touched(); } else this.onChange();
  }

  shiftLabel(step) {
    const b = this.boxes[this.selected];
    const now = b ? b.label : this.currentLabel;
    const n = this.labels.length;
    if (!n) return;
    const i = this.labels.indexOf(now);
    this.setLabel(this.labels[((i < 0 ? 0 : i + step) % n + n) % n]);
  }

  _signature() {
    return JSON.stringify(this.boxes.map((b) => [round(b.x1), round(b.y1), round(b.x2), round(b.y2), b.label]));
  }

  _touched() {
    this.render();
    this.onChange();
  }

  _point(e) {
    const r = this.svg.getBoundingClientRect();
    return {
      x: clamp((e.clientX - r.left) / Math.max(r.width, 1)),
      y: clamp((e.clientY - r.top) / Math.max(r.height, 1)),
    };
  }

  _down(e) {
    if (e.button !== 0) return;
    e.preventDefault();
    const p = this._point(e);
    const role = e.target.dataset ? e.target.dataset.role : undefined;
    const index = e.target.dataset && e.target.dataset.index !== undefined ? Number(e.target.dataset.index) : -1;
    if (role === "handle" || role === "body") {
      this.selected = index;
      const b = this.boxes[index];
      this.drag = { mode: role === "handle" ? "resize" : "move", corner: e.target.dataset.corner,
                    start: p, orig: { ...b }, moved: false };
    } else {
      this.drag = { mode: "draw", start: p, now: p };
    }
    this.svg.setPointerCapture(e.pointerId);
    this.render();
    this.onChange();
  }

  _move(e) {
    if (!this.drag) return;
    const p = this._point(e);
    const d = this.drag;
    if (d.mode === "draw") {
      d.now = p;
    } else if (d.mode === "move") {
      const b = this.boxes[this.selected];
      const w = d.orig.x2 - d.orig.x1, hgt = d.orig.y2 - d.orig.y1;
      const x1 = Math.min(Math.max(0, d.orig.x1 + p.x - d.start.x), 1 - w);
      const y1 = Math.min(Math.max(0, d.orig.y1 + p.y - d.start.y), 1 - hgt);
      Object.assign(b, { x1, y1, x2: x1 + w, y2: y1 + hgt });
      d.moved = true;
    } else {
      const b = this.boxes[this.selected];
      if (d.corner.includes("w")) b.x1 = p.x; else b.x2 = p.x;
      if (d.corner.includes("n")) b.y1 = p.y; else b.y2 = p.y;
      d.moved = true;
    }
    this.render();
  }

  _up(e) {
    const d = this.drag;
    this.drag = null;
    if (!d) return;
    if (d.mode === "draw") {
      const r = this.svg.getBoundingClientRect();
      const w = Math.abs(d.now.x - d.start.x) * r.width, hgt = Math.abs(d.now.y - d.start.y) * r.height;
      if (w >= 4 && hgt >= 4) {
        this.boxes.push({
          x1: Math.min(d.start.x, d.now.x), y1: Math.min(d.start.y, d.now.y),
          x2: Math.max(d.start.x, d.now.x), y2: Math.max(d.start.y, d.now.y),
          label: this.currentLabel, score: null, model: false,
        });
        this.selected = this.boxes.length - 1;
      } else {
        this.selected = -1; // a click on empty space deselects
      }
    } else if (d.moved) {
      const b = this.boxes[this.selected];
      [b.x1, b.x2] = [Math.min(b.x1, b.x2), Math.max(b.x1, b.x2)];
      [b.y1, b.y2] = [Math.min(b.y1, b.y2), Math.max(b.y1, b.y2)];
      // A corner dragged onto its opposite would leave an empty box, which
      // the API refuses: keep a minimal extent inside the image.
      [b.x1, b.x2] = minExtent(b.x1, b.x2);
      [b.y1, b.y2] = minExtent(b.y1, b.y2);
      b.model = false;
    }
    this._touched();
  }

  render() {
    const svg = this.svg;
    const r = svg.getBoundingClientRect();
    const W = r.width, H = r.height;
    svg.replaceChildren();
    this.boxes.forEach((b, i) => svg.appendChild(this._boxNode(b, i, W, H)));
    const d = this.drag;
    if (d && d.mode === "draw") {
      const g = svgEl("g", { class: "drawing" });
      g.appendChild(svgEl("rect", {
        x: Math.min(d.start.x, d.now.x) * W, y: Math.min(d.start.y, d.now.y) * H,
        width: Math.abs(d.now.x - d.start.x) * W, height: Math.abs(d.now.y - d.start.y) * H,
      }));
      svg.appendChild(g);
    }
  }

  _boxNode(b, i, W, H) {
    const color = edgeloop.colorFor(Math.max(0, this.labels.indexOf(b.label)));
    const x = Math.min(b.x1, b.x2) * W, y = Math.min(b.y1, b.y2) * H;
    const w = Math.abs(b.x2 - b.x1) * W, hgt = Math.abs(b.y2 - b.y1) * H;
    const cls = ["box", i === this.selected ? "selected" : "", b.model ? "prelabel" : ""].join(" ").trim();
    const g = svgEl("g", { class: cls });
    g.appendChild(svgEl("rect", { class: "body", x, y, width: w, height: hgt, stroke: color,
                                  "data-role": "body", "data-index": i }));
    const text = b.model && b.score !== null ? `${b.label} ${Math.round(b.score * 100)}%` : b.label;
    const tw = 7 * text.length + 10;
    const ty = y >= 16 ? y - 16 : y;
    g.appendChild(svgEl("rect", { class: "tag", x, y: ty, width: tw, height: 16, fill: color }));
    const t = svgEl("text", { x: x + 5, y: ty + 12 });
    t.textContent = text;
    g.appendChild(t);
    for (const [corner, cx, cy] of [["nw", x, y], ["ne", x + w, y], ["sw", x, y + hgt], ["se", x + w, y + hgt]]) {
      g.appendChild(svgEl("rect", { class: "handle " + corner, x: cx - 5, y: cy - 5, width: 10, height: 10,
                                    stroke: color, "data-role": "handle", "data-corner": corner, "data-index": i }));
    }
    return g;
  }
}

function svgEl(name, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", name);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

const MIN_EXTENT = 0.005;
function minExtent(a, b) {
  if (b - a >= MIN_EXTENT) return [a, b];
  const lo = Math.min(Math.max(0, a), 1 - MIN_EXTENT);
  return [lo, lo + MIN_EXTENT];
}

function clamp(v) { return Math.min(1, Math.max(0, v)); }
function round(v) { return Math.round(v * 1e5) / 1e5; }
