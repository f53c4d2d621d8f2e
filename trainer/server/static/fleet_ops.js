// Fleet operations on the fleet page: commands to an agent or a group (POST /api/agents/{id}/commands,
// /api/groups/{g}/commands) with each agent's answer, and each group's configuration bundles
// (GET /api/groups, POST /api/groups/{g}/bundles and .../rollback). fleet.js asks agentCommand() for
// the buttons of each agent row.
"use strict";

window.fleetOps = (() => {
  const { api, h, fill, when } = edgeloop;
  const $ = (id) => document.getElementById(id);
  const ACTIONS = [["ping", "ping"], ["reload_config", "reload"], ["resend_outbox", "resend"],
                   ["rollback", "rollback"]];
  const REFRESH_MS = 10000;
  const drafts = {};  // group -> settings text being edited: a refresh must not throw it away
  const results = [];

  function outcomeBadge(state) {
    const cls = { answered: "ok", sent: "", timed_out: "warn", failed: "bad" }[state];
    return h(`span.badge${cls ? "." + cls : ""}`, { dataset: { state } }, state);
  }

  function answerText(c) {
    const a = c.answer;
    if (!a) return c.detail || "";
    const parts = [`${a.model_name || "–"} v${a.model_version} (${a.model_state})`];
    if (a.config_group) parts.push(`config ${a.config_group} v${a.config_version}`);
    if (a.detail) parts.push(a.detail);
    return parts.join(" · ");
  }

  function showResults(commands) {
    results.unshift(...commands);
    results.splice(50);
    fill($("command-results-body"), results.map((c) => h("tr", { dataset: { command: c.id, agent: c.agent_id } },
      h("td", { title: c.id }, when(c.issued_at)), h("td.mono", c.agent_id),
      h("td", c.action + (c.group ? ` (group ${c.group})` : "")), h("td", outcomeBadge(c.state)),
      h("td.muted.answer", answerText(c)))));
  }

  function showError(err) {
    $("groups-error").textContent = err.message;
    $("groups-error").classList.remove("hidden");
  }

  async function send(path, action, button) {
    if (action === "rollback" && !confirm(`Roll back the model on ${path.split("/")[3]}?`)) return;
    button.disabled = true;
    try {
      const out = await api(path, { method: "POST", body: { action, timeout_s: 10 } });
      showResults(out.commands || [out]);
      $("groups-error").classList.add("hidden");
    } catch (err) {
      showError(new Error(`Command not sent: ${err.message}`));
    } finally {
      button.disabled = false;
    }
  }

  function buttons(path) {
    return h("span.cmd-buttons", ACTIONS.map(([action, label]) => h("button.small", {
      type: "button", dataset: { action }, title: `send ${action}`,
      onclick: (ev) => send(path, action, ev.currentTarget),
    }, label)));
  }

  function agentCommand(agentId) {
    return buttons(`/api/agents/${encodeURIComponent(agentId)}/commands`);
  }

  function agentLine(a) {
    const tags = Object.entries(a.tags || {}).map(([k, v]) => `${k}=${v}`).join(", ");
    const version = a.config_version === undefined ? "?" : `v${a.config_version}`;
    return h("li", { dataset: { agent: a.agent_id } }, h("span.mono", a.agent_id), " runs ",
      h("span.badge.config-version", version), tags ? h("span.muted", ` · ${tags}`) : null,
      a.status_detail && a.status_detail.includes("config bundle") ? h("div.small.bundle-detail", a.status_detail) : null);
  }

  async function push(group, textarea, note, button) {
    let settings;
    try {
      settings = JSON.parse(textarea.value);
    } catch (err) {
      showError(new Error(`The settings of ${group} are not JSON: ${err.message}`));
      return;
    }
    button.disabled = true;
    try {
      await api(`/api/groups/${encodeURIComponent(group)}/bundles`, { method: "POST",
        body: { settings, note: note.value } });
      delete drafts[group];
      $("groups-error").classList.add("hidden");
      await refresh();
    } catch (err) {
      showError(new Error(`Bundle for ${group} refused: ${err.message}`));
    } finally {
      button.disabled = false;
    }
  }

  async function rollback(group, button) {
    if (!confirm(`Publish the previous configuration of ${group} again, as a new version?`)) return;
    button.disabled = true;
    try {
      await api(`/api/groups/${encodeURIComponent(group)}/bundles/rollback`, { method: "POST", body: {} });
      $("groups-error").classList.add("hidden");
      await refresh();
    } catch (err) {
      showError(new Error(`Rollback of ${group} refused: ${err.message}`));
    } finally {
      button.disabled = false;
    }
  }

  function groupPanel(g) {
    const b = g.bundle;
    const current = b ? JSON.stringify(b.settings, null, 2) : "{\n  \"sampling\": {\"per_minute\": 10}\n}";
    const textarea = h("textarea.settings", { rows: 6, spellcheck: "false", "aria-label": `settings of ${g.group}`,
      oninput: (ev) => { drafts[g.group] = ev.target.value; } });
    textarea.value = drafts[g.group] !== undefined ? drafts[g.group] : current;
    const note = h("input.note", { type: "text", placeholder: "note (why)", maxlength: 512 });
    const pushButton = h("button.primary.push", { type: "button" }, "Sign and publish");
    pushButton.addEventListener("click", () => push(g.group, textarea, note, pushButton));
    const backButton = h("button.rollback", { type: "button", disabled: !b || b.version < 2 }, "Roll back");
    backButton.addEventListener("click", () => rollback(g.group, backButton));
    return h("div.panel.group", { dataset: { group: g.group } },
      h("h3", `group ${g.group} `, b ? h("span.badge.bundle-version", `bundle v${b.version}`)
        : h("span.badge", "no bundle")),
      b ? h("p.muted.small", `by ${b.created_by}, ${when(b.created_at)}${b.note ? " · " + b.note : ""}`) : null,
      h("ul.agents", g.agents.length ? g.agents.map(agentLine) : h("li.muted", "no agent reported this group")),
      h("div.group-command", h("span.muted", "command to the whole group: "),
        buttons(`/api/groups/${encodeURIComponent(g.group)}/commands`)),
      textarea, h("div.buttons", note, pushButton, backButton));
  }

  async function refresh() {
    try {
      const groups = await api("/api/groups");
      fill($("groups"), groups.length ? groups.map(groupPanel)
        : h("p.muted", "No group yet: agents list theirs in their config's groups."));
      $("groups-error").classList.add("hidden");
    } catch (err) {
      showError(new Error(`Could not load the groups: ${err.message}`));
    }
  }

  function busy() {
    const active = document.activeElement;
    return active && $("groups").contains(active);  // do not re-render under someone's cursor
  }

  async function start() {
    refresh();
    try {
      const recent = await api("/api/commands", { params: { limit: 10 } });
      if (recent.length && !results.length) showResults(recent);
    } catch (err) {
      showError(new Error(`Could not load the recent commands: ${err.message}`));
    }
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
  setInterval(() => { if (!document.hidden && !busy()) refresh(); }, REFRESH_MS);
  return { agentCommand };
})();
