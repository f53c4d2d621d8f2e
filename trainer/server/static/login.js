// Sign in: post the user and password, or a token, to /api/login, then go where the user was headed.
// The plain form still works without JavaScript.
"use strict";

(() => {
  const form = document.getElementById("login-form");
  const errorBox = document.getElementById("login-error");
  // `edgeloop demo` prints /login#token=...: a fragment never reaches the server or its logs.
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromHash) {
    history.replaceState(null, "", location.pathname + location.search);
    document.getElementById("token").value = fromHash;
    setTimeout(() => form.requestSubmit(), 0);
  }
  // An account signs in with user and password; a token (personal or bootstrap) needs nothing else.
  function credentials(data) {
    const out = {};
    for (const key of ["user", "password", "token"]) {
      if (data.get(key)) out[key] = data.get(key);
    }
    if (out.token && out.password) delete out.token;
    return out;
  }

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    errorBox.classList.add("hidden");
    const data = new FormData(form);
    const csrf = document.querySelector('meta[name="csrf-token"]').content;
    try {
      const res = await fetch("/api/login", {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRF-Token": csrf },
        body: JSON.stringify(credentials(data)),
      });
      if (!res.ok) {
        let detail = res.statusText;
        try { detail = (await res.json()).detail || detail; } catch (_) { /* not JSON */ }
        if (res.status === 429) detail = "Too many attempts; wait a minute and try again.";
        else if (res.status === 403) detail = "Not accepted.";
        throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
      }
      location.href = data.get("next") || "/review";
    } catch (err) {
      errorBox.textContent = err.message;
      errorBox.classList.remove("hidden");
      document.getElementById("token").select();
    }
  });
})();
