// The models page, part 3: where a staged rollout stands (stage k of n, per
// stage who it adds and how many of them run the new version, time left in
// the hold, the health verdict) and its Pause / Resume buttons. The health
// table per agent and "Halt and roll back" (abort) stay in rounds.js.
// Polls /api/models/{name}/rollout: every second while a rollout is active.
"use strict";

(() => {
  const { api, h, fill } = edgeloop;
  const $ = (id) => document.getElementById(id);
  const root = $("models-page");
  const models = window.edgeloopModels;
  const ACTIVE = ["starting", "watching", "paused"];
  const STAGE_BADGE = { done: "ok", current: "warn", waiting: "" };
  const VERDICT = { wait: "holding", widen: "healthy: widening", halt: "failing: halting" };
  let timer = null;
  let seq = 0; // a poll answered after a later poll or action is stale: drop it

  const secs = (s) => (s >= 90 ? `${Math.floor(s / 60)} min ${Math.round(s % 60)} s` : `${s.toFixed(0)} s`);

  function render(r) {
    const box = $("rollout-stages");
    const active = ACTIVE.includes(r.state);
    box.dataset.stage = r.stage || "";
    box.dataset.paused = r.paused ? "yes" : "no";
    if (!r.plan || !r.plan.length) {
      fill(box);
    } else {
      const head = [h("b#rollout-stage", `Stage ${r.stage} of ${r.stages}`), ` · ${r.stage_name}`];
      if (active) {
        head.push(h("span.muted#rollout-hold", ` · ${r.paused ? "paused, " : ""}${secs(r.hold_left_s || 0)} left in the hold`));
        if (r.verdict) head.push(h("span.muted#rollout-verdict", ` · ${VERDICT[r.verdict] || r.verdict}`));
      }
      fill(box, h("div.round-line", head),
        h("table.grid.canaries#stages",
          h("thead", h("tr", h("th", "stage"), h("th", "adds"), h("th.num", "hold"), h("th.num", "agents"),
            h("th.num", "on new version"), h("th", ""))),
          h("tbody", r.plan.map((s) => h("tr", { dataset: { stage: s.name, state: s.state } },
            h("td.mono", s.name), h("td", s.who), h("td.num", secs(s.hold_s)),
            h("td.num", s.state === "waiting" ? "–" : String(s.agents)),
            h("td.num", s.state === "waiting" ? "–" : `${s.on_new} of ${s.agents}`),
            h("td", h(`span.badge${STAGE_BADGE[s.state] ? "." + STAGE_BADGE[s.state] : ""}`, s.state)))))));
    }
    $("btn-pause").disabled = !active || !!r.paused;
    $("btn-resume").disabled = !active || !r.paused;
    return active;
  }

  async function poll() {
    let fast = false;
    if (models.name && root.dataset.publish === "on") {
      const mine = ++seq;
      try {
        const r = await api(`/api/models/${encodeURIComponent(models.name)}/rollout`);
        if (mine !== seq) return; // a newer poll or action owns the timer now
        fast = render(r);
      } catch (err) {
        if (err.status !== 401) fill($("rollout-stages"), h("span.muted", `Stages unavailable: ${err.message}`));
      }
    }
    clearTimeout(timer);
    timer = setTimeout(poll, fast && !document.hidden ? 1000 : 4000);
  }

  async function act(action) {
    const mine = ++seq;
    try {
      const r = await api(`/api/models/${encodeURIComponent(models.name)}/rollout/${action}`, { method: "POST" });
      if (mine === seq) render(r);
    } catch (err) {
      const box = $("models-error");
      box.textContent = `Could not ${action} the rollout: ${err.message}`;
      box.classList.remove("hidden");
    }
    document.dispatchEvent(new CustomEvent("rollout-poke"));
    poll();
  }

  $("btn-pause").addEventListener("click", () => act("pause"));
  $("btn-resume").addEventListener("click", () => act("resume"));
  document.addEventListener("rollout-poke", () => { clearTimeout(timer); timer = setTimeout(poll, 200); });
  if (models.name) poll();
  else document.addEventListener("models-changed", () => poll(), { once: true });
})();
