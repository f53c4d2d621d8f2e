// The Audit page (admins): who did what, when, from where (GET /api/audit), newest first,
// filtered by person, action and outcome; "Older entries" pages with before_id.
"use strict";

(() => {
  const { api, h, fill, append, when } = edgeloop;
  const $ = (id) => document.getElementById(id);
  let next = null;

  // {path: {...}, body: {...}} shown flat as path.item_id=3 body.action=reject
  function detail(d, prefix = "") {
    return Object.entries(d || {}).map(([k, v]) => (v && typeof v === "object" && !Array.isArray(v))
      ? detail(v, `${prefix}${k}.`)
      : `${prefix}${k}=${typeof v === "string" ? v : JSON.stringify(v)}`).join(" ");
  }

  function row(e) {
    return h("tr", { dataset: { action: e.action, actor: e.actor, status: String(e.status) } },
      h("td", when(e.at)), h("td.mono", e.actor), h("td.muted", e.via), h("td.mono", e.client),
      h("td", e.action), h("td.mono", e.target),
      h("td.num", h(`span.badge.${e.status < 400 ? "ok" : "bad"}`, String(e.status))),
      h("td.muted.small", detail(e.detail)));
  }

  function filters() {
    return { actor: $("f-actor").value, action: $("f-action").value, failed: $("f-failed").value, limit: 50 };
  }

  async function load(more) {
    try {
      const out = await api("/api/audit", { params: { ...filters(), before_id: more ? next : undefined } });
      if (!more) {
        fill($("audit-body"), out.entries.length ? [] : h("tr", h("td.muted", { colspan: 8 }, "Nothing recorded.")));
        const chosen = $("f-action").value;
        fill($("f-action"), h("option", { value: "" }, "any"),
          out.actions.map((a) => h("option", { value: a, selected: a === chosen }, a)));
      }
      append($("audit-body"), out.entries.map(row));
      next = out.next_before_id;
      $("btn-audit-more").classList.toggle("hidden", next === null);
      $("audit-summary").textContent = `${out.total} entries match.`;
      $("audit-error").classList.add("hidden");
    } catch (err) {
      $("audit-error").textContent = err.message;
      $("audit-error").classList.remove("hidden");
    }
  }

  $("audit-filters").addEventListener("submit", (ev) => { ev.preventDefault(); load(false); });
  $("btn-audit-more").addEventListener("click", () => load(true));
  load(false);
})();
