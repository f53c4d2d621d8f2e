// The models page, part 2: the training round (progress, live loss chart,
// gate decision, start/cancel), the staged rollout (canaries, halt,
// roll back) and progress towards the next round. Polls fast only while
// something is running.
"use strict";

(() => {
  const { api, h, fill, when } = edgeloop;
  const $ = (id) => document.getElementById(id);
  const root = $("models-page");
  const models = window.edgeloopModels;
  const maxEpochs = Number(root.dataset.maxEpochs) || 0;
  const FAST_MS = 1000;
  const SLOW_MS = 4000;
  const ROUND_BADGE = { running: "warn", done: "ok", failed: "bad", cancelled: "" };
  const ROLLOUT_BADGE = { starting: "warn", watching: "warn", paused: "warn", fleet: "ok", halted: "bad",
                          interrupted: "warn", error: "bad" };
  const live = { round: null, rollout: null, lastHandled: undefined, rolloutKey: undefined };
  window.edgeloopRounds = live;

  function error(text) {
    const box = $("models-error");
    box.textContent = text;
    box.classList.remove("hidden");
  }

  const secs = (s) => (typeof s === "number" ? (s < 10 ? s.toFixed(2) : s.toFixed(0)) + " s" : "–");

  // ---------- the round ----------
  function finishing(p) {
    // The worker says "done" a moment before the server has registered and gated the model.
    return p.state !== "running" && p.state !== "idle" && (!p.last || p.last.round_id !== p.round_id);
  }

  function statusLine(p) {
    if (p.state === "idle") return h("div.muted", "No round has run since the server started.");
    const n = p.epochs.length;
    const elapsed = (p.finished || Date.now() / 1000) - p.started;
    const of = maxEpochs ? `${n}/${maxEpochs}` : String(n);
    const label = finishing(p) ? "finishing" : p.state;
    return [
      h("div.round-line",
        h(`span.badge${ROUND_BADGE[p.state] ? "." + ROUND_BADGE[p.state] : ""}#round-state-badge`, label),
        h("b", ` Round ${p.round_id}`),
        h("span#round-epochs", ` · epoch ${of}`),
        h("span.muted", ` · ${secs(elapsed)}`),
        p.cancel_requested && p.state === "running" ? h("span.muted", " · cancelling…") : null),
      maxEpochs ? h(`div.bar${p.state === "done" ? ".ok" : ""}`, { title: `epoch ${of}` },
        h("i", { style: { width: `${Math.min(100, (100 * n) / maxEpochs)}%` } })) : null,
    ];
  }

  const COUNTS = {
    corrections: ["corrections", "only corrections count: a class other than the model's, or edited boxes"],
    labels: ["labelled examples", "every labelled edge example counts, corrections or not"],
  };

  function triggerLine(t) {
    if (!t) return null;
    const [word, why] = COUNTS[t.count] || [t.count, ""];
    return h("div.muted#round-trigger", { dataset: { count: t.count } },
      `Next round: ${t.counted} of ${t.batch_size} ${word}`, t.auto_start ? "" : " (automatic start is off)",
      ` · ${why}`, t.synthetic ? ` · ${Math.round(100 * t.synthetic.share)}% of training is synthetic `
        + `(${t.synthetic.generator}; never in validation or test)` : "");
  }

  function gateBlock(last) {
    const g = last.gate;
    if (!g) return null;
    const current = g.current === null || g.current === undefined ? "no fleet model yet"
      : `fleet ${(100 * g.current).toFixed(1)}%`;
    return h("div.gate#gate",
      h(`span.badge.${g.publish ? "ok" : "bad"}`, { dataset: { publish: String(g.publish) } },
        g.publish ? "passed the gate" : "rejected by the gate"),
      h("span", ` ${g.metric}: candidate ${typeof g.candidate === "number" ? (100 * g.candidate).toFixed(1) + "%" : "–"}`
        + ` vs ${current}`),
      g.reasons && g.reasons.length ? h("ul.reasons", g.reasons.map((r) => h("li", r))) : null);
  }

  function outcome(p) {
    const last = p.last;
    if (!last || last.round_id !== p.round_id) return null;
    const t = last.timings || {};
    return h("div.round-outcome",
      last.state === "done" ? h("div", "Registered as ", h("b#round-version", `v${last.version}`),
        last.rollout_started ? " and handed to the staged rollout." : ".") : null,
      last.state === "failed" ? h("div.notice.error", `The round failed: ${last.error}`) : null,
      last.state === "cancelled" ? h("div.muted", "Cancelled: nothing was registered; the fleet model is unchanged.") : null,
      gateBlock(last),
      Object.keys(t).length ? h("div.timings.muted", ["process", "train", "register", "gate"]
        .filter((k) => k in t).map((k) => `${k} ${secs(t[k])}`).join(" · ")) : null);
  }

  function renderRound(p) {
    const status = $("round-status");
    status.dataset.state = finishing(p) ? "finishing" : p.state;
    fill(status, statusLine(p), triggerLine(p.trigger));
    const epochs = p.epochs || [];
    const metric = epochs.find((e) => typeof e.val_metric === "number");
    edgeloop.lineChart($("loss-chart"), [
      { name: "loss", color: "#4c9aff", points: epochs.map((e) => ({ x: e.epoch + 1, y: e.loss })) },
      { name: "val loss", color: "#f2b84b", points: epochs.map((e) => ({ x: e.epoch + 1, y: e.val_loss })) },
      // accuracy or mAP@0.5 on the validation split, a 0-1 figure on the same axis
      metric ? { name: `val ${metric.metric_name === "map_50" ? "mAP@0.5" : "accuracy"}`, color: "#36b37e",
        points: epochs.map((e) => ({ x: e.epoch + 1, y: e.val_metric })) } : null,
    ].filter(Boolean), { xLabel: "epoch", label: "loss, validation loss and validation metric per epoch", xMin: maxEpochs ? 1 : undefined,
      xMax: maxEpochs || undefined, yMin: 0,
      empty: p.state === "running" ? "Waiting for the first epoch…" : "No epochs to show." });
    fill($("round-outcome"), outcome(p));
    $("btn-start-round").disabled = root.dataset.rounds !== "on" || p.state === "running" || finishing(p);
    $("btn-cancel-round").disabled = p.state !== "running" || !!p.cancel_requested;
  }

  async function pollRound() {
    let fast = false;
    try {
      const p = await api("/api/models/rounds");
      live.round = p;
      renderRound(p);
      fast = p.state === "running" || finishing(p);
      const handled = p.last ? p.last.round_id : null;
      if (live.lastHandled !== undefined && handled !== live.lastHandled) {
        models.refresh();
        edgeloop.showProgress($("progress"));
        pollRollout();
      }
      live.lastHandled = handled;
    } catch (err) {
      if (err.status === 404) {
        fill($("round-status"), h("span.muted", "Training rounds are not configured on this server."));
      } else if (err.status !== 401) {
        fill($("round-status"), h("span.muted", `Round status unavailable: ${err.message}`));
      }
    }
    clearTimeout(live.roundTimer);
    live.roundTimer = setTimeout(pollRound, fast && !document.hidden ? FAST_MS : SLOW_MS);
  }

  $("btn-start-round").addEventListener("click", async () => {
    $("btn-start-round").disabled = true;
    try {
      await api("/api/models/rounds", { method: "POST" });
    } catch (err) {
      error(`Could not start a round: ${err.message}`);
    }
    pollRound();
  });

  $("btn-cancel-round").addEventListener("click", async () => {
    if (!window.confirm("Cancel the running round? Nothing it trained so far is kept.")) return;
    try {
      await api("/api/models/rounds/cancel", { method: "POST" });
    } catch (err) {
      error(`Could not cancel the round: ${err.message}`);
    }
    pollRound();
  });

  // ---------- the rollout ----------
  function renderRollout(r) {
    const box = $("rollout");
    const label = r.state === "done" ? r.outcome : r.state;
    box.dataset.state = label || "idle";
    if (!r || r.state === "idle") {
      fill(box, h("div.muted", "No rollout since the server started."));
    } else {
      const health = r.health || [];
      const counts = r.state === "watching" || r.state === "paused" ? ` · ${r.ok || 0} ok · ${r.failed || 0} failed · ${r.pending || 0} pending` : "";
      fill(box,
        h("div.round-line", h(`span.badge${ROLLOUT_BADGE[label] ? "." + ROLLOUT_BADGE[label] : ""}#rollout-badge`, label),
          h("b", ` ${r.name} v${r.version}`), h("span.muted", counts)),
        health.length ? h("table.grid.canaries#canaries",
          h("thead", h("tr", h("th", "canary"), h("th", "health"), h("th", "why"))),
          h("tbody", health.map((c) => h("tr", { dataset: { agent: c.agent_id } }, h("td.mono", c.agent_id),
            h(`td`, h(`span.badge.${c.state === "ok" ? "ok" : c.state === "failed" ? "bad" : "warn"}`, c.state)),
            h("td.muted", c.reason || "")))))
          : h("div.muted", (r.canaries || []).length ? `canaries: ${r.canaries.join(", ")}` : "No canaries."),
        r.outcome === "fleet" ? h("div", "Widened to the whole fleet.") : null,
        r.outcome === "halted" ? h("div", "Halted", r.rollback_version ? `; rolled back as v${r.rollback_version}.` : ".") : null,
        r.outcome === "interrupted" ? h("div", "Interrupted by a server stop: it resumes when the server starts.") : null,
        (r.reasons || []).length ? h("ul.reasons", r.reasons.map((x) => h("li", x))) : null);
    }
    $("btn-halt").disabled = !(r && ["watching", "starting", "paused"].includes(r.state));
  }

  async function pollRollout() {
    let fast = false;
    const name = models.name;
    if (name && root.dataset.publish === "on") {
      try {
        const r = await api(`/api/models/${encodeURIComponent(name)}/rollout`);
        live.rollout = r;
        renderRollout(r);
        fast = ["watching", "starting", "paused"].includes(r.state);
        const key = `${r.state}:${r.version}:${r.outcome}`;
        if (live.rolloutKey !== undefined && key !== live.rolloutKey) models.refresh();
        live.rolloutKey = key;
      } catch (err) {
        if (err.status !== 401) fill($("rollout"), h("span.muted", `Rollout status unavailable: ${err.message}`));
      }
    } else if (root.dataset.publish !== "on") {
      fill($("rollout"), h("span.muted", "Publishing is not configured on this server."));
    }
    clearTimeout(live.rolloutTimer);
    live.rolloutTimer = setTimeout(pollRollout, fast && !document.hidden ? FAST_MS : SLOW_MS);
  }

  $("btn-halt").addEventListener("click", async () => {
    if (!window.confirm("Halt the rollout and roll the canaries back to the previous fleet model?")) return;
    try {
      await api(`/api/models/${encodeURIComponent(models.name)}/rollout/cancel`, { method: "POST" });
    } catch (err) {
      error(`Could not halt the rollout: ${err.message}`);
    }
    pollRollout();
  });

  // Roll back to an earlier announced model (re-announced under a new, higher version).
  function fillRollbackChoices(list) {
    const fleet = list.filter((m) => m.state === "fleet").map((m) => m.version);
    const current = fleet.length ? Math.max(...fleet) : null;
    const choices = list.filter((m) => m.version !== current && ["fleet", "rolled_back", "published"].includes(m.state));
    const select = $("rollback-to");
    const keep = select.value;
    fill(select, choices.length ? choices.map((m) => h("option", { value: m.version },
      `v${m.version} · ${m.state.replace("_", " ")}${m.note ? " · " + m.note : ""}`))
      : h("option", { value: "" }, "no earlier fleet model"));
    if (choices.some((m) => String(m.version) === keep)) select.value = keep;
    const off = root.dataset.publish !== "on" || !choices.length;
    select.disabled = off;
    $("btn-rollback").disabled = off;
    $("btn-rollback").textContent = choices.length ? `Roll back to v${select.value}` : "Roll back to …";
  }
  document.addEventListener("models-changed", (e) => fillRollbackChoices(e.detail));
  document.addEventListener("rollout-poke", () => pollRollout());
  $("rollback-to").addEventListener("change", () => {
    $("btn-rollback").textContent = `Roll back to v${$("rollback-to").value}`;
  });

  $("btn-rollback").addEventListener("click", async () => {
    const to = Number($("rollback-to").value);
    if (!to || !window.confirm(`Roll ${models.name} back to v${to}? Its model is announced to every agent again,`
      + " under a new, higher version.")) return;
    try {
      const r = await api(`/api/models/${encodeURIComponent(models.name)}/rollback`, { method: "POST", body: { to } });
      fill($("rollout-note"), h("div.notice.info", `Rolled back: v${r.version} (${r.note}) announced to the fleet.`));
    } catch (err) {
      error(`Could not roll back: ${err.message}`);
    }
    models.refresh();
  });

  edgeloop.showProgress($("progress"));
  setInterval(() => { if (!document.hidden) edgeloop.showProgress($("progress")); }, 10000);
  if (root.dataset.rounds === "on") pollRound();
  else fill($("round-status"), h("span.muted", "Training rounds are not configured on this server."));
  // The rollout needs the model's name, which models.js may still be looking up.
  if (models.name) pollRollout();
  else document.addEventListener("models-changed", () => pollRollout(), { once: true });
})();
