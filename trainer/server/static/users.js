// The Users page (admins): every account with its role and state, role changes, disable/enable,
// token rotation and new accounts through /api/users. A new token is shown once, in the notice.
"use strict";

(() => {
  const { api, h, fill, append, ago, when } = edgeloop;
  const $ = (id) => document.getElementById(id);
  const ROLES = ["viewer", "reviewer", "publisher", "admin"];
  let me = null;  // GET /api/me: a bootstrap session ends when it makes the first admin

  function showError(err) {
    $("users-error").textContent = err ? err.message : "";
    $("users-error").classList.toggle("hidden", !err);
  }

  function showToken(name, token) {
    fill($("users-token"), `API token of ${name} (shown once; keep it secret): `, h("code#shown-token", token));
    $("users-token").classList.remove("hidden");
  }

  async function act(fn) {
    showError(null);
    let done = true;
    try { done = (await fn()) !== false; } catch (err) { showError(err); }
    if (done) await load();
  }

  function row(u) {
    const role = h("select.role", { "aria-label": `role of ${u.name}`,
      onchange: (ev) => act(() => api(`/api/users/${u.name}/role`, { method: "POST", body: { role: ev.target.value } })) },
      ROLES.map((r) => h("option", { value: r, selected: r === u.role }, r)));
    const toggle = u.disabled
      ? h("button", { type: "button", onclick: () => act(() => api(`/api/users/${u.name}/enable`, { method: "POST" })) }, "Enable")
      : h("button", { type: "button", onclick: () => act(() => api(`/api/users/${u.name}/disable`, { method: "POST" })) }, "Disable");
    const rotate = h("button", { type: "button", onclick: () => act(async () => {
      const out = await api(`/api/users/${u.name}/rotate-token`, { method: "POST" });
      showToken(u.name, out.token);
    }) }, "New token");
    return h("tr", { dataset: { user: u.name, role: u.role, disabled: u.disabled ? "yes" : "no" } },
      h("td.mono", u.name), h("td", role),
      h("td", h(`span.badge.${u.disabled ? "bad" : "ok"}`, u.disabled ? "disabled" : "enabled")),
      h("td.muted", u.has_password ? "set" : "none (token only)"),
      h("td", { title: when(u.token_created_at) }, u.token_created_at ? ago(u.token_created_at) : "–"),
      h("td", { title: when(u.updated_at) }, ago(u.updated_at)),
      h("td", toggle, " ", rotate));
  }

  async function load() {
    try {
      const users = await api("/api/users");
      fill($("users-body"), users.length ? users.map(row)
        : h("tr", h("td.muted", { colspan: 7 }, "No accounts yet: you are signed in with the bootstrap token.")));
    } catch (err) { showError(err); }
  }

  $("user-add").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const body = { name: $("new-name").value, role: $("new-role").value };
    if ($("new-password").value) body.password = $("new-password").value;
    act(async () => {
      const out = await api("/api/users", { method: "POST", body });
      showToken(out.name, out.token);
      $("user-add").reset();
      if (me && me.via === "bootstrap" && out.role === "admin") {
        // The shared token is retired now: this session ends; the new admin signs in.
        append($("users-token"), [h("p#bootstrap-done", `${out.name} is the first admin: the bootstrap token no longer `
          + "works. ", h("a", { href: "/login?next=%2Fusers" }, `Sign in as ${out.name}`), ".")]);
        return false;
      }
      return true;
    });
  });
  api("/api/me").then((who) => { me = who; }).catch(showError);
  load();
})();
