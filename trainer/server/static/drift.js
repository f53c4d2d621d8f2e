// The Drift page: every agent's PSI against its model's test split (GET /api/drift),
// refreshed every few seconds, with a row per camera under each agent (its
// per_camera figures); a row opens the agent's per-class histograms
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

  // model to updated: the same cells for an agent's pooled figures and for one camera's
  function figures(x) {
    return [
      h("td.mono", `v${x.model_version}` + (x.reference_version && x.reference_version !== x.model_version
        ? ` (ref v${x.reference_version})` : "")),
      h("td.num", String(x.samples)),
      h("td.num.psi", psi(x.psi)),
      h("td", h(`span.badge${LEVEL_BADGE[x.level] ? "." + LEVEL_BADGE[x.level] : ""}.level`, x.level.replace("_", " "))),
      h("td", x.alerting ? h("span.badge.bad.alert", "alerting") : x.alerts ? `${x.alerts} earlier` : "–"),
      h("td.muted", worst(x.per_class)),
      h("td", { title: when(x.updated) }, ago(x.updated))];
  }

  function rows(a) {
    const flags = (x) => ({ level: x.level, alerting: x.alerting ? "yes" : "no" });
    return [
      h("tr", { dataset: { agent: a.agent_id, ...flags(a) }, onclick: () => show(a.agent_id), class: "clickable" },
        h("td.mono", a.agent_id),
        h("td", (a.cameras || []).join(", ") || "–"),
        h("td.muted", a.config_group || "–"),
        figures(a)),
      // data-of (not data-agent): a selector for the agent's row finds that row only
      ...(a.per_camera || []).map((c) => h("tr",
        { dataset: { of: a.agent_id, camera: c.camera, ...flags(c) }, onclick: () => show(a.agent_id),
          class: "clickable camera-row" },
        h("td.muted", "└ camera"), h("td.mono", c.camera), h("td.muted", ""), figures(c)))];
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
      fill($("drift-body"), agents.length ? agents.map(rows)
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
