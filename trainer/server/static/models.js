// The models page, part 1: the registry's history (table and metric chart),
// comparing two versions, and lineage (a version's examples, an example's
// models). Everything comes from /api/models...; rounds.js drives the round
// and rollout panels and calls edgeloopModels.refresh() when they change.
"use strict";

(() => {
  const { api, h, fill, when, ago } = edgeloop;
  const $ = (id) => document.getElementById(id);
  const root = $("models-page");
  const MAX_DETAILS = 40; // dataset sizes are fetched per version: only for the newest ones
  const MAX_EXAMPLES = 300;
  const STATE_BADGE = { fleet: "ok", published: "ok", canary: "warn", candidate: "", rejected: "bad",
                        halted: "bad", rolled_back: "" };
  const STATE_COLOR = { fleet: "#3ecf8e", published: "#3ecf8e", canary: "#f2b84b", candidate: "#4c9aff",
                        rejected: "#ef5a5a", halted: "#ef5a5a", rolled_back: "#8a94a3" };
  const METRIC_TITLE = { accuracy: "accuracy", map_50: "mAP@0.5", map: "mAP@0.5:0.95" };

  const state = {
    name: root.dataset.model || "", models: [], details: new Map(), selected: [], metric: "accuracy",
    loaded: false, lineageVersion: null, refresh: null,
  };
  window.edgeloopModels = state;

  function showError(err) {
    const box = $("models-error");
    if (!err) { box.classList.add("hidden"); return; }
    box.textContent = err.message || String(err);
    box.classList.remove("hidden");
  }

  function headline(models) {
    for (const key of ["accuracy", "map_50", "map"]) {
      if (models.some((m) => typeof m.metrics[key] === "number")) return key;
    }
    return "accuracy";
  }

  const fmtMetric = (v) => (typeof v === "number" ? (100 * v).toFixed(1) + "%" : "–");

  function fmtBytes(n) {
    if (n === null || n === undefined) return "–";
    if (n < 1024) return `${n} B`;
    if (n < 1024 ** 2) return `${(n / 1024).toFixed(1)} KiB`;
    return `${(n / 1024 ** 2).toFixed(1)} MiB`;
  }

  function examplesOf(detail) {
    const counts = detail && detail.config && detail.config.split_counts;
    if (!counts || typeof counts !== "object") return null;
    const total = Object.values(counts).reduce((s, v) => s + (typeof v === "number" ? v : 0), 0);
    return { total, title: Object.entries(counts).map(([k, v]) => `${k} ${v}`).join(" · ") };
  }

  function stateCell(m) {
    const cls = STATE_BADGE[m.state];
    return h("td.state",
      h(`span.badge${cls ? "." + cls : ""}`, { dataset: { state: m.state } }, m.state.replace("_", " ")),
      m.note ? h("span.note", m.note) : null,
      m.reason ? h("div.reason.muted", { title: m.reason }, m.reason) : null);
  }

  function row(m) {
    const ex = examplesOf(state.details.get(m.version));
    const ticked = state.selected.includes(m.version);
    const publishable = (m.state === "candidate" || m.state === "rejected") && root.dataset.publish === "on";
    return h(`tr${state.lineageVersion === m.version ? ".active" : ""}`, { dataset: { version: m.version } },
      h("td", h("input", { type: "checkbox", class: "pick", checked: ticked, "aria-label": `compare v${m.version}`,
        onchange: (e) => pick(m.version, e.target.checked) })),
      h("td", h("button.linkish.version", { type: "button", title: "list the examples it was trained on",
        onclick: () => showExamples(m.version) }, `v${m.version}`)),
      h("td.muted", m.parent_version ? `v${m.parent_version}` : "–"),
      stateCell(m),
      h("td.num.metric", { title: m.overfit ? "the round ended in overfitting" : null },
        fmtMetric(m.metrics[state.metric]), m.overfit ? h("span.badge.warn.tiny", "overfit") : null),
      h("td.num.examples", { title: ex ? ex.title : null }, ex ? String(ex.total) : "–"),
      h("td", { title: when(m.created) }, ago(m.created)),
      h("td.num", fmtBytes(m.size)),
      h("td.mono", { title: m.sha256 }, (m.sha256 || "").slice(0, 12)),
      h("td", publishable ? h("button.publish", { type: "button", onclick: () => publish(m) }, "Publish") : null));
  }

  function renderHistory() {
    const models = state.models;
    $("metric-head").textContent = METRIC_TITLE[state.metric] || state.metric;
    $("metric-name").textContent = `${METRIC_TITLE[state.metric] || state.metric} on the frozen test split`;
    fill($("history-body"), models.length ? models.map(row)
      : h("tr", h("td.muted", { colspan: 10 }, "No model registered yet: start a round, or register the fleet's first"
        + " model with edgeloop publish --register.")));
    renderChart();
  }

  function renderChart() {
    const points = [...state.models].reverse().map((m) => ({
      x: m.version, y: m.metrics[state.metric], color: STATE_COLOR[m.state],
      cls: `state-${m.state}`, label: `v${m.version} · ${m.state} · ${fmtMetric(m.metrics[state.metric])}`,
    }));
    const svg = edgeloop.lineChart($("metric-chart"), [{ name: METRIC_TITLE[state.metric] || state.metric,
      color: "#4c9aff", points }], { yMin: 0, yMax: 1, yFormat: (v) => `${Math.round(100 * v)}%`,
      xFormat: (v) => `v${v}`, xLabel: "version", label: "test metric per version",
      empty: "No model with a test metric yet." });
    if (!svg) return;
    const states = [...new Set(state.models.map((m) => m.state))];
    $("metric-chart").appendChild(h("div.legend", states.map((st) =>
      h("span", h("i", { style: { background: STATE_COLOR[st] } }), st.replace("_", " ")))));
  }

  async function loadDetails() {
    const missing = state.models.slice(0, MAX_DETAILS).filter((m) => !state.details.has(m.version));
    const got = await Promise.all(missing.map((m) =>
      api(`/api/models/${encodeURIComponent(state.name)}/${m.version}`).catch(() => null)));
    got.forEach((d, i) => { if (d) state.details.set(missing[i].version, d); });
    if (missing.length) renderHistory();
  }

  async function chooseName() {
    if (state.name) return;
    const all = await api("/api/models");
    const names = [...new Set(all.map((m) => m.name))];
    state.name = names[0] || "";
    const select = $("model-select");
    if (names.length > 1) {
      fill(select, names.map((n) => h("option", { value: n }, n)));
      select.classList.remove("hidden");
      select.onchange = () => { state.name = select.value; state.details.clear(); state.selected = []; refresh(); };
    }
    $("model-name").textContent = state.name || "–";
  }

  async function refresh() {
    try {
      await chooseName();
      state.models = state.name ? await api("/api/models", { params: { name: state.name } }) : [];
      state.metric = headline(state.models);
      state.loaded = true;
      renderHistory();
      document.dispatchEvent(new CustomEvent("models-changed", { detail: state.models }));
      showError(null);
      await loadDetails();
    } catch (err) {
      if (err.status === 404) {  // no registry on this server: the page's notices say why
        fill($("history-body"), h("tr", h("td.muted", { colspan: 10 }, err.message)));
        edgeloop.lineChart($("metric-chart"), [], { empty: "No model registry." });
      } else if (err.status !== 401) {
        showError(new Error(`Could not load the models: ${err.message}`));
      }
    }
  }
  state.refresh = refresh;

  async function publish(m) {
    const why = m.state === "rejected" ? `\n\nThe gate rejected it: ${m.reason}` : "";
    if (!window.confirm(`Publish ${state.name} v${m.version}? It goes to the canaries first and then to the`
      + ` whole fleet if they stay healthy.${why}`)) return;
    try {
      await api(`/api/models/${encodeURIComponent(state.name)}/${m.version}/publish`,
        { method: "POST", body: { staged: true } });
      document.dispatchEvent(new CustomEvent("rollout-poke"));
      await refresh();
    } catch (err) {
      showError(new Error(`Could not publish v${m.version}: ${err.message}`));
    }
  }

  // ---------- compare ----------
  function pick(version, on) {
    state.selected = state.selected.filter((v) => v !== version);
    if (on) state.selected.push(version);
    if (state.selected.length > 2) state.selected = state.selected.slice(-2);
    renderHistory();
    if (state.selected.length === 2) compare(...state.selected);
    else $("compare-panel").classList.add("hidden");
  }

  function delta(a, b, neutral = false) {
    if (typeof a !== "number" || typeof b !== "number") return h("td.num.delta", "–");
    const d = b - a;
    const cls = neutral || Math.abs(d) < 1e-9 ? "" : d > 0 ? ".up" : ".down";
    const text = neutral ? (d > 0 ? "+" : "") + String(d) : (d > 0 ? "+" : "") + (100 * d).toFixed(1) + " pt";
    return h(`td.num.delta${cls}`, text);
  }

  function metricsTable(a, b) {
    const keys = [...new Set([...Object.keys(a.metrics), ...Object.keys(b.metrics)])]
      .filter((k) => typeof a.metrics[k] === "number" || typeof b.metrics[k] === "number");
    return h("table.grid.compare#compare-metrics",
      h("thead", h("tr", h("th", "metric"), h("th.num", `v${a.version}`), h("th.num", `v${b.version}`), h("th.num", "Δ"))),
      h("tbody", keys.map((k) => {
        const count = k === "n";
        const f = (v) => (count ? (v ?? "–") : fmtMetric(v));
        return h("tr", { dataset: { metric: k } }, h("td", count ? "test examples" : METRIC_TITLE[k] || k),
          h("td.num", String(f(a.metrics[k]))), h("td.num", String(f(b.metrics[k]))),
          delta(a.metrics[k], b.metrics[k], count));
      })));
  }

  function perClassTable(a, b) {
    const classes = [...new Set([...Object.keys(a.per_class || {}), ...Object.keys(b.per_class || {})])];
    if (!classes.length) return h("div.muted", "No per-class metrics.");
    const sample = { ...Object.values(a.per_class || {})[0], ...Object.values(b.per_class || {})[0] };
    const fields = ["recall", "precision", "ap_50", "ap"].filter((f) => f in sample);
    const val = (m, c, f) => ((m.per_class || {})[c] || {})[f];
    return h("table.grid.compare#compare-classes",
      h("thead", h("tr", h("th", "class"), fields.map((f) => [h("th.num", `${f} v${a.version}`),
        h("th.num", `v${b.version}`), h("th.num", "Δ")]), h("th.num", "support"))),
      h("tbody", classes.map((c) => h("tr", { dataset: { cls: c } }, h("td", c),
        fields.map((f) => [h("td.num", fmtMetric(val(a, c, f))), h("td.num", fmtMetric(val(b, c, f))),
          delta(val(a, c, f), val(b, c, f))]),
        h("td.num", String(val(b, c, "support") ?? val(a, c, "support") ?? "–"))))));
  }

  // Nested config as dotted keys, so a difference deep in the training config shows as one row.
  function flatten(obj, prefix = "", out = {}) {
    for (const [k, v] of Object.entries(obj || {})) {
      const key = prefix ? `${prefix}.${k}` : k;
      if (v && typeof v === "object" && !Array.isArray(v)) flatten(v, key, out);
      else out[key] = JSON.stringify(v);
    }
    return out;
  }

  // How each round went, side by side (present for both, whether equal or not).
  function runTable(a, b) {
    const fit = (m) => (m.config && m.config.fit) || {};
    const splits = (m) => (m.config && m.config.split_counts) || {};
    const num = (v, d = 3) => (typeof v === "number" ? Number(v.toFixed(d)).toString() : v ?? "–");
    const rows = [
      ["train / val / test", (m) => ["train", "val", "test"].map((k) => splits(m)[k] ?? "–").join(" / ")],
      ["dataset version", (m) => m.dataset_version || "–"],
      ["parent", (m) => (m.parent_version ? `v${m.parent_version}` : "–")],
      ["stop reason", (m) => fit(m).stop_reason || "–"],
      ["best epoch", (m) => (typeof fit(m).best_epoch === "number" ? fit(m).best_epoch + 1 : "–")],
      ["best val loss", (m) => num(fit(m).best_val_loss)],
      ["overfit", (m) => (m.overfit ? "yes" : "no")],
      ["training time", (m) => (typeof m.config.seconds === "number" ? `${m.config.seconds.toFixed(1)} s` : "–")],
      ["sha256", (m) => (m.sha256 || "").slice(0, 16)],
    ];
    return h("table.grid.compare#compare-run",
      h("thead", h("tr", h("th", ""), h("th", `v${a.version}`), h("th", `v${b.version}`))),
      h("tbody", rows.map(([k, f]) => {
        const [x, y] = [String(f(a)), String(f(b))];
        return h(`tr${x !== y ? ".differs" : ""}`, h("td", k), h("td.mono", x), h("td.mono", y));
      })));
  }

  function configDiff(a, b) {
    const fa = flatten((a.config || {}).train);
    const fb = flatten((b.config || {}).train);
    const keys = [...new Set([...Object.keys(fa), ...Object.keys(fb)])].filter((k) => fa[k] !== fb[k]).sort();
    if (!keys.length) return h("div.muted#compare-config", "Same training configuration.");
    return h("table.grid.compare#compare-config",
      h("thead", h("tr", h("th", "setting"), h("th", `v${a.version}`), h("th", `v${b.version}`))),
      h("tbody", keys.map((k) => h("tr", { dataset: { key: k } }, h("td.mono", k),
        h("td.mono.wrap", fa[k] ?? "–"), h("td.mono.wrap", fb[k] ?? "–")))));
  }

  async function compare(v1, v2) {
    const [a, b] = [Math.min(v1, v2), Math.max(v1, v2)];
    try {
      const c = await api(`/api/models/${encodeURIComponent(state.name)}/compare`, { params: { a, b } });
      fill($("compare"),
        h("div.compare-grid",
          h("div", h("h3", "Metrics on the frozen test split"), metricsTable(c.a, c.b),
            h("h3", "Training run"), runTable(c.a, c.b)),
          h("div", h("h3", "Per class"), perClassTable(c.a, c.b),
            h("h3", "Training configuration differences"), configDiff(c.a, c.b))));
      $("compare-title").firstChild.textContent = `Compare v${a} and v${b}`;
      $("compare-panel").classList.remove("hidden");
      $("compare-panel").scrollIntoView({ block: "nearest" });
    } catch (err) {
      showError(new Error(`Could not compare v${a} and v${b}: ${err.message}`));
    }
  }

  // ---------- lineage ----------
  async function showExamples(version) {
    try {
      const examples = await api(`/api/models/${encodeURIComponent(state.name)}/${version}/examples`);
      state.lineageVersion = version;
      renderHistory();
      const ids = Object.keys(examples).sort((x, y) => examples[x].localeCompare(examples[y]) || Number(x) - Number(y));
      const counts = {};
      for (const id of ids) counts[examples[id]] = (counts[examples[id]] || 0) + 1;
      $("lineage-heading").textContent = `Examples of v${version}`;
      fill($("lineage"),
        h("p.flush", h("b#lineage-count", String(ids.length)), " examples: ",
          Object.entries(counts).map(([s, n]) => `${s} ${n}`).join(" · ")),
        ids.length ? h("table.grid.examples#lineage-examples",
          h("thead", h("tr", h("th", "example"), h("th", "split"), h("th", ""))),
          h("tbody", ids.slice(0, MAX_EXAMPLES).map((id) => h("tr", { dataset: { example: id } },
            h("td", h("a.mono", { href: `/api/images/${encodeURIComponent(id)}`, target: "_blank", rel: "noopener" }, id)),
            h("td", h(`span.badge.split-${examples[id]}`, examples[id])),
            h("td", h("button.linkish", { type: "button", onclick: () => showExample(id) }, "where it came from")))))) : null,
        ids.length > MAX_EXAMPLES ? h("p.muted", `First ${MAX_EXAMPLES} of ${ids.length} shown.`) : null,
        h("div#example-lineage"));
      $("lineage-panel").classList.remove("hidden");
    } catch (err) {
      showError(new Error(`Could not list the examples of v${version}: ${err.message}`));
    }
  }

  function kv(pairs) {
    return h("dl.kv", pairs.flatMap(([k, v]) => [h("dt", k), h("dd", v === null || v === undefined || v === "" ? "–" : v)]));
  }

  async function showExample(id) {
    try {
      const l = await api(`/api/models/by-example/${encodeURIComponent(id)}`);
      const p = l.provenance || {};
      let target = $("example-lineage");
      if (!target) {
        $("lineage-heading").textContent = `Lineage of example ${id}`;
        fill($("lineage"), h("div#example-lineage"));
        $("lineage-panel").classList.remove("hidden");
        target = $("example-lineage");
      }
      fill(target, h("div.example-lineage",
        h("img", { src: `/api/images/${encodeURIComponent(id)}`, alt: `example ${id}` }),
        h("div", h("h3", `Example ${id}`),
          l.provenance ? kv([
            ["source", p.source], ["agent", p.agent_id], ["camera", p.camera_id], ["frame", p.frame_id],
            ["sampled by", [p.model_name, p.model_version].filter((x) => x !== null && x !== undefined && x !== "").join(" v")],
            ["strategy", p.strategy], ["reason", p.reason], ["captured", p.captured_at ? when(p.captured_at) : null],
            ["label", p.label], ["labelled by", p.labeled_by], ["labelled", p.labeled_at ? when(p.labeled_at) : null],
            ["split", p.split], ["status", p.status]]) : h("div.muted", "The store does not know this example."),
          h("h3", "Models trained with it"),
          l.models.length ? h("ul.models-used", l.models.map((m) => h("li", `${m.name} v${m.version} (${m.split})`)))
            : h("div.muted", "No model has used it yet."))));
    } catch (err) {
      showError(new Error(`Could not load the lineage of example ${id}: ${err.message}`));
    }
  }

  $("btn-compare-close").addEventListener("click", () => {
    state.selected = [];
    $("compare-panel").classList.add("hidden");
    renderHistory();
  });
  $("btn-lineage-close").addEventListener("click", () => {
    state.lineageVersion = null;
    $("lineage-panel").classList.add("hidden");
    renderHistory();
  });
  window.addEventListener("resize", () => { if (state.loaded) renderChart(); });

  refresh();
  const example = new URLSearchParams(location.search).get("example");
  if (example) showExample(example);
})();
