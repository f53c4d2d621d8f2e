// Shared helpers for every page: the REST client (cookie auth + CSRF header),
// a tiny DOM builder and formatting. Plain ES2020, no build step.
"use strict";

const edgeloop = (() => {
  const meta = document.querySelector('meta[name="csrf-token"]');
  const csrf = meta ? meta.content : "";

  class ApiError extends Error {
    constructor(status, detail) {
      super(typeof detail === "string" ? detail : JSON.stringify(detail));
      this.status = status;
      this.detail = detail;
    }
  }

  function toLogin() {
    const next = location.pathname + location.search;
    location.href = "/login?next=" + encodeURIComponent(next);
  }

  // Every POST carries the CSRF token: the session is a cookie, so a form on
  // another site could otherwise make the browser post on the user's behalf.
  async function api(path, { method = "GET", body, params } = {}) {
    let url = path;
    if (params) {
      const q = new URLSearchParams();
      for (const [k, v] of Object.entries(params)) {
        if (v !== undefined && v !== null && v !== "") q.set(k, v);
      }
      const s = q.toString();
      if (s) url += (url.includes("?") ? "&" : "?") + s;
    }
    const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
    if (method !== "GET") init.headers["X-CSRF-Token"] = csrf;
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const res = await fetch(url, init);
    if (res.status === 401) {
      toLogin();
      throw new ApiError(401, "not logged in");
    }
    const text = await res.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = text; }
    if (!res.ok) {
      const detail = data && data.detail !== undefined ? data.detail : data || res.statusText;
      throw new ApiError(res.status, detail);
    }
    return data;
  }

  // h("div.panel", {onclick}, child, "text", [more]); h("table.grid#id") sets the id too
  function h(tag, attrs, ...children) {
    const [spec, id] = tag.split("#");
    const [name, ...classes] = spec.split(".");
    const node = document.createElement(name || "div");
    if (classes.length) node.className = classes.join(" ");
    if (id) node.id = id;
    if (attrs && (typeof attrs !== "object" || attrs instanceof Node || Array.isArray(attrs))) {
      children.unshift(attrs);
      attrs = null;
    }
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (k === "style" && typeof v === "object") Object.assign(node.style, v);
      else if (k === "dataset") Object.assign(node.dataset, v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    append(node, children);
    return node;
  }

  function append(node, children) {
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      node.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function fill(node, ...children) {
    node.replaceChildren();
    return append(node, children);
  }

  function pct(p) {
    return p === null || p === undefined ? "–" : (100 * p).toFixed(p >= 0.995 || p < 0.1 ? 1 : 0) + "%";
  }

  function parseTime(t) {
    if (t === null || t === undefined || t === "") return null;
    const d = typeof t === "number" ? new Date(t * 1000) : new Date(t);
    return isNaN(d.getTime()) ? null : d;
  }

  function ago(t) {
    const d = parseTime(t);
    if (!d) return "never";
    const s = Math.max(0, (Date.now() - d.getTime()) / 1000);
    if (s < 5) return "just now";
    if (s < 90) return Math.round(s) + " s ago";
    if (s < 5400) return Math.round(s / 60) + " min ago";
    if (s < 129600) return Math.round(s / 3600) + " h ago";
    return Math.round(s / 86400) + " d ago";
  }

  function when(t) {
    const d = parseTime(t);
    if (!d) return "–";
    return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
  }

  // Distinct, readable colours for classes on a dark background.
  const PALETTE = ["#4c9aff", "#3ecf8e", "#f2b84b", "#ef5a5a", "#b48cff", "#36c5d6",
                   "#ff8fb1", "#9bd24a", "#ff9f43", "#8fa3ff"];
  function colorFor(index) {
    return PALETTE[((index % PALETTE.length) + PALETTE.length) % PALETTE.length];
  }

  // Keys go to the page unless the user is typing text: a focused slider or
  // button must not swallow the review shortcuts.
  const TEXT_INPUTS = new Set(["text", "search", "number", "password", "email", "url", "tel", ""]);
  function typing(ev) {
    const t = ev.target;
    if (!t) return false;
    if (t.tagName === "INPUT") return TEXT_INPUTS.has((t.getAttribute("type") || "").toLowerCase());
    return t.tagName === "SELECT" || t.tagName === "TEXTAREA" || t.isContentEditable;
  }

  // Corrected examples since the last round against the batch size (review and models pages).
  async function showProgress(node) {
    try {
      const p = await api("/api/progress");
      const n = p.corrected_since_last_round;
      const target = p.batch_size || p.batch_min;
      const scale = Math.max(p.batch_max, n, 1);
      const done = n >= target;
      fill(node,
        h("div.progress-line", h("span", h("b", String(n)), ` of ${target} corrected since the last round`),
          h("span.muted", `batch ${p.batch_min}–${p.batch_max}`)),
        h(`div.bar${done ? ".ok" : ""}`, { title: `${n} corrected; the next round trains on ${target}` },
          h("span.target", { style: { left: `${100 * p.batch_min / scale}%`,
                                      width: `${100 * (p.batch_max - p.batch_min) / scale}%` } }),
          h("i", { style: { width: `${Math.min(100, 100 * n / scale)}%` } })),
        h("div.muted", { style: { fontSize: "12px", marginTop: "6px" } },
          done ? "Enough corrected examples for the next training round." : `${target - n} more before the next round.`));
      return p;
    } catch (err) {
      if (err.status !== 401) fill(node, h("span.muted", "progress unavailable"));
      return null;
    }
  }

  return { api, ApiError, h, fill, append, pct, ago, when, colorFor, typing, toLogin, showProgress };
})();
