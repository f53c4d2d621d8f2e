// The dataset page: counts per class and split, warnings, guidance and
// near-duplicate clusters, all from GET /api/dataset/stats.
"use strict";

(() => {
  const { api, h, fill, colorFor, ago } = edgeloop;
  const $ = (id) => document.getElementById(id);
  const SPLITS = ["train", "val", "test", "unassigned"];
  const SEG = { train: "", val: ".seg-val", test: ".seg-test", unassigned: ".seg-un" };
  const MAX_CLUSTERS = 12;
  const MAX_THUMBS = 8;
  const MIN_PER_CLASS = 10; // the seed's minimum to train a class

  function rowTotal(c) {
    return SPLITS.reduce((s, k) => s + (c[k] || 0), 0);
  }

  function cards(stats, labels) {
    const totals = labels.map((l) => rowTotal(stats.counts[l]));
    const smallest = totals.length ? Math.min(...totals) : 0;
    const share = stats.total ? Math.max(0, ...totals) / stats.total : 0;
    const card = (v, k) => h("div.panel", h("div.v", v), h("div.k", k));
    return h("div.stat-cards",
      card(String(stats.total), "examples"),
      card(String(labels.length), "classes"),
      card(String(smallest), "in the smallest class"),
      card(`${Math.round(100 * share)}%`, "largest class share"),
      card(String((stats.duplicate_clusters || []).length), "near-duplicate clusters"),
      // generated examples mixed in by rounds ([rounds.synthetic]): they train, never validate or test
      stats.sources && stats.sources.synthetic
        ? card(String(stats.sources.synthetic), "synthetic (train only)") : null);
  }

  function table(stats, labels) {
    const totals = labels.map((l) => rowTotal(stats.counts[l]));
    const max = Math.max(1, ...totals);
    const sum = Object.fromEntries(SPLITS.map((k) => [k, labels.reduce((s, l) => s + (stats.counts[l][k] || 0), 0)]));
    const rows = labels.map((label, i) => {
      const c = stats.counts[label];
      let left = 0;
      const segs = SPLITS.map((k) => {
        const w = (100 * (c[k] || 0)) / max;
        const seg = h(`i${SEG[k]}`, { style: { left: `${left}%`, width: `${w}%` } });
        left += w;
        return seg;
      });
      return h("tr",
        h("td", h("span.dot", { style: { background: colorFor(i) } }), label),
        SPLITS.map((k) => h("td.num", String(c[k] || 0))),
        h("td.num", h(totals[i] < MIN_PER_CLASS ? "b.low" : "b",
          { title: totals[i] < MIN_PER_CLASS ? `fewer than ${MIN_PER_CLASS}: too few to train` : null }, String(totals[i]))),
        h("td.barcell", h("div.bar", { title: `${totals[i]} examples` }, segs)));
    });
    return h("table.grid", { id: "counts" },
      h("thead", h("tr", h("th", "class"), SPLITS.map((k) => h("th.num", k)), h("th.num", "total"), h("th", ""))),
      h("tbody", rows),
      h("tfoot", h("tr", h("th", "all"), SPLITS.map((k) => h("th.num", String(sum[k]))),
        h("th.num", String(stats.total)), h("th", ""))));
  }

  function legend() {
    return h("div.legend",
      h("span", h("i", { style: { background: "var(--accent)" } }), "train"),
      h("span", h("i", { style: { background: "var(--warn)" } }), "val"),
      h("span", h("i", { style: { background: "#b48cff" } }), "test"),
      h("span", h("i", { style: { background: "var(--muted)" } }), "unassigned"));
  }

  function clusters(list, all = false) {
    if (!list || !list.length) return h("div.muted", "No near-duplicates found.");
    const limit = all ? list.length : MAX_CLUSTERS;
    const shown = list.slice(0, limit).map((ids) => h("div.cluster",
      h("span.n", `${ids.length} images`),
      ids.slice(0, MAX_THUMBS).map((id) => h("img", {
        src: `/api/images/${encodeURIComponent(id)}`, alt: `example ${id}`, title: id, loading: "lazy",
      })),
      ids.length > MAX_THUMBS ? h("span.muted", `+${ids.length - MAX_THUMBS} more`) : null));
    const more = list.length > limit ? h("button", { type: "button", id: "more-clusters",
      onclick: () => fill($("clusters"), clusters(list, true)) }, `Show all ${list.length} clusters`) : null;
    return h("div.clusters", shown, more);
  }

  // Label names agents reported that the project does not know: a person decides (trainer/store/labels.py).
  async function decide(action, name) {
    try {
      await api(`/api/labels/${action}`, { method: "POST", body: { name } });
      await Promise.all([load(), loadPending()]);
    } catch (err) {
      fill($("pending"), h("div.notice.error", `Could not ${action} ${name}: ${err.message}`));
    }
  }

  async function loadPending() {
    const { pending, dropped } = await api("/api/labels/pending");
    $("pending-panel").classList.toggle("hidden", !pending.length && !dropped);
    const rows = pending.map((p) => h("tr", { dataset: { label: p.name } },
      h("td", p.name), h("td.num", String(p.samples)), h("td", ago(p.last_seen)),
      h("td", h("button.approve", { type: "button", onclick: () => decide("approve", p.name) }, "Add to labels"), " ",
        h("button.dismiss", { type: "button", onclick: () => decide("dismiss", p.name) }, "Dismiss"))));
    fill($("pending"), h("table.grid#pending-table",
      h("thead", h("tr", h("th", "name"), h("th.num", "samples"), h("th", "last reported"), h("th", ""))),
      h("tbody", rows)),
    dropped ? h("div.muted", `${dropped} more reports did not fit the list.`) : null);
  }

  async function load() {
    try {
      const stats = await api("/api/dataset/stats");
      const labels = Object.keys(stats.counts || {});
      fill($("summary"), cards(stats, labels));
      fill($("notices"),
        (stats.warnings || []).map((w) => h("div.notice.warn", "⚠ ", w)),
        stats.guidance ? h("div.notice.info", stats.guidance) : null);
      fill($("table"), labels.length ? [table(stats, labels), legend()] : h("div.muted", "No labelled examples yet."));
      fill($("clusters"), clusters(stats.duplicate_clusters));
      $("task").textContent = stats.task;
    } catch (err) {
      fill($("notices"), h("div.notice.error", `Could not load the dataset: ${err.message}`));
    }
  }

  function size(n) {
    const units = ["B", "kB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
    return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
  }

  async function loadStorage() {
    const st = await api("/api/storage");
    const rows = Object.entries(st.categories).map(([name, c]) => h("tr", { dataset: { category: name } },
      h("td", name), h("td.num", String(c.examples)), h("td.num", size(c.bytes))));
    const deleted = Object.entries(st.deleted).map(([why, n]) => `${why}: ${n}`).join(", ");
    fill($("storage"), h("table.grid#storage-table",
      h("thead", h("tr", h("th", "category"), h("th.num", "examples"), h("th.num", "image bytes"))),
      h("tbody", rows)),
    h("div.muted", `Total ${size(st.total_bytes)}` + (st.limit_bytes ? ` of a ${size(st.limit_bytes)} limit` : "")
      + (deleted ? `; deleted by retention: ${deleted}` : "")),
    st.full ? h("div.notice.warn", "⚠ Storage is at its hard limit: new samples are refused for now; agents keep "
      + "them and send them again once retention or a larger limit makes room.") : null);
  }

  load();
  loadPending().catch((err) => {
    $("pending-panel").classList.remove("hidden");
    fill($("pending"), h("div.notice.error", `Could not load the reported labels: ${err.message}`));
  });
  loadStorage().catch((err) => fill($("storage"), h("div.notice.error", `Could not load disk usage: ${err.message}`)));
})();
