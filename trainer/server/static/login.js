// Sign in: post the token to /api/login, then go where the user was headed.
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
        body: JSON.stringify({ token: data.get("token"), user: data.get("user") || "reviewer" }),
      });
      if (!res.ok) {
        let detail = res.statusText;
        try { detail = (await res.json()).detail || detail; } catch (_) { /* not JSON */ }
        if (res.status === 429) detail = "Too many attempts; wait a minute and try again.";
        else if (res.status === 401 || res.status === 403) detail = "That token was not accepted.";
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
