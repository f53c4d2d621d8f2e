// The fleet page: one row per agent from GET /api/fleet, refreshed every few
// seconds while the tab is visible.
"use strict";

(() => {
  const { api, h, fill, ago, when } = edgeloop;
  const $ = (id) => document.getElementById(id);
  const REFRESH_MS = 5000;

  // "stale": its last status says online, but no status or telemetry came for three telemetry
  // periods (at least a minute): a crash the broker has not noticed yet, or a cut network.
  function stateBadge(a) {
    if (a.state === "online" && a.stale) {
      return h("span", { title: `online by its last status, silent since ${when(a.last_seen)}` },
        h("span.dot.stale"), "stale");
    }
    const online = a.state === "online";
    return h("span", h(`span.dot.${online ? "online" : "offline"}`), a.state || "unknown");
  }

  function modelCell(a) {
    const cls = { ok: "ok", updating: "warn", reverted: "warn", failed: "bad" }[a.model_state] || "";
    return h("span", h("span", a.model_name || "–"), " ", h("span.mono", a.model_version || ""), " ",
      a.model_state ? h(`span.badge${cls ? "." + cls : ""}`, a.model_state) : null);
  }

  function cameras(list) {
    if (!list || !list.length) return "–";
    return list.map((c) => (typeof c === "string" ? c : c.camera_id || c.id || JSON.stringify(c))).join(", ");
  }

  function num(v, digits = 0) {
    return v === null || v === undefined ? "–" : Number(v).toFixed(digits);
  }

  function row(a) {
    const depth = a.outbox_depth || 0;
    return h("tr", { dataset: { agent: a.agent_id } },
      h("td.mono", a.agent_id),
      h("td", stateBadge(a)),
      h("td", modelCell(a)),
      h("td", cameras(a.cameras)),
      h("td.mono", { title: "edgeloop version · execution provider the model runs on" },
        `${a.software_version || "–"} · ${a.provider || "–"}`),
      h("td.num", num(a.fps, 1)),
      h("td.num", depth > 100 ? h("span.badge.warn", String(depth)) : String(depth)),
      h("td", { title: when(a.last_seen) }, ago(a.last_seen)),
      h("td.muted", (a.cohorts || []).join(", ") || "–"),
      h("td.muted", a.detail || ""),
      h("td", window.fleetOps ? window.fleetOps.agentCommand(a.agent_id) : ""));
  }

  async function refresh() {
    try {
      const fleet = await api("/api/fleet");
      const agents = fleet.agents || [];
      const online = agents.filter((a) => a.state === "online" && !a.stale).length;
      const stale = agents.filter((a) => a.state === "online" && a.stale).length;
      $("fleet-summary").textContent = `${online} of ${agents.length} agents online` +
        (stale ? ` · ${stale} stale` : "") + ` · updated ${new Date().toLocaleTimeString()}`;
      fill($("fleet-body"), agents.length ? agents.map(row)
        : h("tr", h("td.muted", { colspan: 11 }, "No agent has reported yet.")));
      $("fleet-error").classList.add("hidden");
    } catch (err) {
      $("fleet-error").textContent = `Could not load the fleet: ${err.message}`;
      $("fleet-error").classList.remove("hidden");
    }
  }

  refresh();
  setInterval(() => { if (!document.hidden) refresh(); }, REFRESH_MS);
})();
