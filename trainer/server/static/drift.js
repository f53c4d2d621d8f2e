// The Drift page: every agent's PSI against its model's test split (GET /api/drift),
// refreshed every few seconds; a row opens the agent's per-class histograms
// (GET /api/drift/{agent}), live against reference.
"use strict";

(() => {
  const { api, h, fill, ago, when } = edgeloop;
  const $ = (id) => document.getElementById(id);
  const REFRESH_MS = 4000;
  const LEVEL_BADGE = { stable: "ok", moderate: "warn", drift: "bad" };
  const SVG = "http://www.w3.org/2000/svg";
  let open = null;

  const psi = (v) => (v === null || v === undefined ? "–" : v.toFixed(3));

  function worst(perClass) {
    return Object.entries(perClass || {}).filter(([, v]) => v !== null)
      .sort((a, b) => b[1] - a[1]).slice(0, 3).map(([k, v]) => `${k} ${v.toFixed(2)}`).join(", ") || "–";
  }

  function row(a) {
    return h("tr", { dataset: { agent: a.agent_id, level: a.level, alerting: a.alerting ? "yes" : "no" },
                     onclick: () => show(a.agent_id), class: "clickable" },
      h("td.mono", a.agent_id),
      h("td", (a.cameras || []).join(", ") || "–"),
      h("td.muted", a.config_group || "–"),
      h("td.mono", `v${a.model_version}` + (a.reference_version && a.reference_version !== a.model_version
        ? ` (ref v${a.reference_version})` : "")),
      h("td.num", String(a.samples)),
      h("td.num.psi", psi(a.psi)),
      h("td", h(`span.badge${LEVEL_BADGE[a.level] ? "." + LEVEL_BADGE[a.level] : ""}.level`, a.level.replace("_", " "))),
      h("td", a.alerting ? h("span.badge.bad.alert", "alerting") : a.alerts ? `${a.alerts} earlier` : "–"),
      h("td.muted", worst(a.per_class)),
      h("td", { title: when(a.updated) }, ago(a.updated)));
  }

  function bars(live, ref) {
    const share = (v) => { const t = (v || []).reduce((x, y) => x + y, 0); return (v || []).map((c) => (t ? c / t : 0)); };
    const a = share(live), e = share(ref);
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 200 60");
    svg.setAttribute("width", "260");
    svg.setAttribute("height", "78");
    const top = Math.max(0.01, ...a, ...e);
    for (let i = 0; i < 10; i++) {
      for (const [vals, dx, color] of [[e, 1, "#8a94a3"], [a, 10, "#4c9aff"]]) {
        const v = vals[i] || 0;
        const r = document.createElementNS(SVG, "rect");
        r.setAttribute("x", String(i * 20 + dx));
        r.setAttribute("width", "8");
        r.setAttribute("y", String(58 - 56 * (v / top)));
        r.setAttribute("height", String(56 * (v / top)));
        r.setAttribute("fill", color);
        svg.appendChild(r);
      }
    }
    return svg;
  }

  async function show(agentId) {
    open = agentId;
    try {
      const d = await api(`/api/drift/${encodeURIComponent(agentId)}`);
      $("drift-detail-heading").textContent = `${d.agent_id}: PSI ${psi(d.psi)} (${d.level.replace("_", " ")})`;
      const labels = [...new Set([...Object.keys(d.live || {}), ...Object.keys(d.reference || {})])].sort();
      fill($("drift-classes"), labels.length ? h("table.grid#drift-class-table",
        h("thead", h("tr", h("th", "class"), h("th.num", "live frames"), h("th.num", "PSI"), h("th", "confidence"))),
        h("tbody", labels.map((k) => h("tr", { dataset: { label: k } }, h("td", k),
          h("td.num", String((d.live[k] || []).reduce((x, y) => x + y, 0))),
          h("td.num", psi((d.per_class || {})[k])),
          h("td", bars(d.live[k], (d.reference || {})[k]))))))
        : h("p.muted", "No histogram yet."));
      $("drift-detail").classList.remove("hidden");
    } catch (err) {
      $("drift-error").textContent = err.message;
      $("drift-error").classList.remove("hidden");
    }
  }

  async function refresh() {
    try {
      const d = await api("/api/drift");
      const agents = d.agents || [];
      const alerting = agents.filter((a) => a.alerting).length;
      $("drift-summary").textContent = `${d.model_name}: ${agents.length} agents` +
        (alerting ? ` · ${alerting} alerting` : "") + ` · alert above PSI ${d.thresholds.alert_psi}` +
        ` over ${d.thresholds.window_s} s windows · updated ${new Date().toLocaleTimeString()}`;
      fill($("drift-body"), agents.length ? agents.map(row)
        : h("tr", h("td.muted", { colspan: 10 }, "No telemetry from any agent yet.")));
      $("drift-error").classList.add("hidden");
      if (open) show(open);
    } catch (err) {
      if (err.status === 401) return;
      $("drift-error").textContent = err.status === 404 ? err.message : `Could not load drift: ${err.message}`;
      $("drift-error").classList.remove("hidden");
      $("drift-summary").textContent = "";
    }
  }

  $("btn-drift-close").addEventListener("click", () => { open = null; $("drift-detail").classList.add("hidden"); });
  refresh();
  setInterval(() => { if (!document.hidden) refresh(); }, REFRESH_MS);
})();
