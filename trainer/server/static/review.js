// The review page: walks the error queue one item at a time, keyboard first.
// The next items and their images are fetched ahead so the next one shows at
// once; every decision is one POST to /api/items/{id}/label.
"use strict";

(() => {
  const { api, h, fill, pct, when, ago, colorFor, typing } = edgeloop;
  const $ = (id) => document.getElementById(id);
  const PREFETCH = 3;
  const PAGE = 20;
  const EMPTY_POLL_MS = 10000;
  const FILTERS = ["camera", "agent", "model_version", "predicted", "strategy"];

  const state = {
    project: null, labels: [], task: "classification",
    filters: {}, buffer: [], current: null, seen: new Set(), total: null,
    busy: false, editor: null, search: "",
    source: localStorage.getItem("edgeloop.prelabelSource") || "teacher", // preferred pre-label source
    threshold: Number(localStorage.getItem("edgeloop.threshold") || 0.5),
  };

  // ---------- queue ----------
  async function fetchMore() {
    if (state.fetching) return state.fetching;
    state.fetching = (async () => {
      // Items reviewed here leave the queue server-side, so page from the top
      // and keep only what this page has not shown yet.
      let offset = 0;
      for (let guard = 0; guard < 10 && state.buffer.length < PREFETCH + 2; guard++) {
        const page = await api("/api/queue", { params: { ...state.filters, limit: PAGE, offset } });
        state.total = page.total;
        const have = new Set(state.buffer.map((i) => i.id));
        if (state.current) have.add(state.current.id);
        for (const item of page.items) {
          if (!state.seen.has(item.id) && !have.has(item.id)) state.buffer.push(item);
        }
        offset += page.items.length;
        if (page.items.length < PAGE || offset >= page.total) break;
      }
      prefetchImages();
    })().finally(() => { state.fetching = null; });
    return state.fetching;
  }

  function prefetchImages() {
    for (const item of state.buffer.slice(0, PREFETCH)) {
      if (item._img) continue;
      item._img = new Image();
      item._img.decoding = "async";
      item._img.src = item.image_url;
    }
  }

  async function showNext() {
    if (!state.buffer.length) await fetchMore();
    state.current = state.buffer.shift() || null;
    state.search = "";
    render();
    if (state.buffer.length < PREFETCH) fetchMore().catch(showError);
    else prefetchImages();
  }

  async function act(action, extra = {}) {
    const item = state.current;
    if (!item || state.busy) return;
    state.busy = true;
    try {
      const id = encodeURIComponent(item.id);
      if (action === "accept-prelabel") await api(`/api/items/${id}/accept-prelabel`, { method: "POST" });
      else await api(`/api/items/${id}/label`, { method: "POST", body: { action, ...extra } });
      state.seen.add(item.id);
      if (state.total) state.total -= 1; // every action takes the item out of the pending queue
      refreshProgress();
      await showNext();
      flash(describe(action, extra)); // after the render, which rebuilds the stage
    } catch (err) {
      showError(err);
    } finally {
      state.busy = false;
    }
  }

  function describe(action, extra) {
    if (action === "label" && extra.label) return `Labelled “${extra.label}” · U to undo`;
    if (action === "label") return `Saved ${extra.boxes.length} box${extra.boxes.length === 1 ? "" : "es"} · U to undo`;
    return { accept: "Accepted the edge model's prediction", "accept-prelabel": "Accepted the teacher's pre-label", reject: "Rejected as a bad example", skip: "Skipped" }[action] + " · U to undo";
  }

  async function undo() {
    if (state.busy) return;
    state.busy = true;
    try {
      const res = await api("/api/undo", { method: "POST" });
      const item = await api(`/api/items/${encodeURIComponent(res.item_id)}`);
      state.seen.delete(item.id);
      state.buffer = state.buffer.filter((i) => i.id !== item.id);
      if (state.current && state.current.id !== item.id) state.buffer.unshift(state.current);
      state.current = item;
      if (state.total !== null) state.total += 1;
      refreshProgress();
      render();
      flash("Undone");
    } catch (err) {
      if (err.status === 404) flash("Nothing to undo");
      else showError(err); // 409: someone else changed the item since; the message says so
    } finally {
      state.busy = false;
    }
  }

  // ---------- rendering ----------
  function render() {
    const item = state.current;
    $("error").classList.add("hidden");
    $("queue-count").textContent = state.total === null ? "" : `${state.total} in queue`;
    if (!item) {
      renderEmpty();
      return;
    }
    renderStage(item);
    renderPrediction(item);
    renderWhy(item);
    renderSource(item);
    document.querySelectorAll("[data-needs-item]").forEach((b) => { b.disabled = false; });
  }

  // While the queue is empty, look again now and then: the fleet keeps sending.
  let pollTimer = null;
  function pollWhenEmpty() {
    clearTimeout(pollTimer);
    pollTimer = setTimeout(async () => {
      if (state.current) return;
      try {
        await fetchMore();
        if (!state.current && state.buffer.length) await showNext();
        else pollWhenEmpty();
      } catch (err) { showError(err); pollWhenEmpty(); }
    }, EMPTY_POLL_MS);
  }

  function renderEmpty() {
    pollWhenEmpty();
    const filtered = FILTERS.some((k) => state.filters[k]);
    fill($("stage"), h("div.empty",
      h("div", { style: { fontSize: "16px", color: "var(--text)" } }, "The queue is empty"),
      h("div", filtered ? "Nothing matches these filters. " : "New samples appear as the fleet sends them. "),
      h("div", "Press ", h("kbd", "U"), " to undo the last decision.")), h("div.flash", { id: "flash" }));
    fill($("prediction"));
    fill($("why"));
    fill($("source"));
    document.querySelectorAll("[data-needs-item]").forEach((b) => { b.disabled = true; });
  }

  function renderStage(item) {
    const img = item._img || new Image();
    if (!img.src) img.src = item.image_url;
    img.alt = `sample ${item.id}`;
    img.draggable = false;
    img.id = "item-image";
    const canvas = h("div.canvas", img);
    fill($("stage"), canvas, h("div.flash", { id: "flash" }));
    const broken = () => showError(new Error(
      `the image of item ${item.id} could not be loaded; X rejects it, S skips it`));
    // A prefetched image may have failed before this listener existed.
    if (img.complete && !img.naturalWidth) broken();
    else img.addEventListener("error", broken, { once: true });
    const fit = () => fitImage(img);
    if (img.complete && img.naturalWidth) fit();
    else img.addEventListener("load", fit, { once: true });
    if (state.task === "detection") {
      const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
      svg.id = "overlay";
      canvas.appendChild(svg);
      // This item's editor, even if the reviewer has moved on when the image arrives.
      const editor = new BoxEditor(svg, state.labels, renderBoxPanel);
      state.editor = editor;
      const load = () => editor.load(prelabels(item));
      if (img.complete && img.naturalWidth) requestAnimationFrame(load);
      else img.addEventListener("load", load, { once: true });
    } else {
      state.editor = null;
    }
  }

  // Scale the image to fill the stage (small edge frames are upscaled so
  // boxes are easy to draw); the overlay follows the image's box.
  function fitImage(img) {
    const stage = $("stage");
    if (!img.naturalWidth || !stage.contains(img)) return;
    const pad = 16;
    const scale = Math.min((stage.clientWidth - pad) / img.naturalWidth, (stage.clientHeight - pad) / img.naturalHeight);
    img.style.width = `${Math.max(1, Math.floor(img.naturalWidth * scale))}px`;
    img.style.height = `${Math.max(1, Math.floor(img.naturalHeight * scale))}px`;
    if (state.editor) state.editor.render();
  }

  window.addEventListener("resize", () => { const img = $("item-image"); if (img) fitImage(img); });

  // ---------- pre-label sources ----------
  // A pre-label comes from the edge model that sampled the item or from the
  // server's teacher (trainer/assist); T switches when both are there.
  function sources(item) {
    const out = [];
    if (item.prelabel && item.prelabel.state === "done") out.push("teacher");
    if (item.frame_id) out.push("edge");
    return out;
  }

  function sourceOf(item) {
    const have = sources(item);
    return have.includes(state.source) ? state.source : have[0] || null;
  }

  function predictionOf(item) {
    const src = sourceOf(item);
    if (src === "teacher") {
      const p = item.prelabel;
      return { source: src, scores: p.scores || {}, boxes: p.boxes || [], top: p.label, score: p.score,
        title: `teacher ${p.model_name} v${p.model_version}` };
    }
    const pred = item.prediction || {};
    const top = src ? item.predicted_label : null;
    return { source: src, scores: pred.scores || {}, boxes: pred.boxes || [], top,
      score: top && pred.scores ? pred.scores[top] : null,
      title: src ? `edge model ${item.model_name || "?"} v${item.model_version ?? "?"}` : "no pre-label" };
  }

  function toggleSource() {
    const item = state.current;
    const have = sources(item);
    if (have.length < 2) { flash(have.length ? `Only the ${have[0] === "edge" ? "edge model's" : "teacher's"} pre-label` : "No pre-label"); return; }
    if (state.editor && state.editor.changed()) { flash("Boxes edited: save or undo edits first"); return; }
    state.source = have[(have.indexOf(sourceOf(item)) + 1) % have.length];
    localStorage.setItem("edgeloop.prelabelSource", state.source);
    if (state.editor) state.editor.load(prelabels(item));
    else renderScores(item);
    renderSource(item);
    flash(`Pre-labels from the ${predictionOf(item).title}`);
  }

  function prelabels(item) {
    const boxes = predictionOf(item).boxes;
    return boxes.filter((b) => (b.score === undefined || b.score === null ? 1 : b.score) >= state.threshold);
  }

  function renderPrediction(item) {
    if (state.task === "detection") renderBoxPanel();
    else renderScores(item);
  }

  function renderScores(item) {
    const pred = predictionOf(item);
    const scores = pred.scores;
    const top = pred.top;
    const q = state.search.trim().toLowerCase();
    const rows = state.labels.map((label, i) => {
      if (q && !label.toLowerCase().includes(q)) return null;
      const p = scores[label];
      return h(`button.score-row${label === top ? ".predicted" : ""}`,
        { type: "button", title: `Label as ${label}`, dataset: { label }, onclick: () => act("label", { label }) },
        h("span.key", i < 9 ? String(i + 1) : ""),
        h("span.name", label),
        h("div.bar", h("i", { style: { width: `${Math.round(100 * (p || 0))}%`, background: colorFor(i) } })),
        h("span.val", pct(p)));
    });
    const search = state.labels.length > 9 ? h("input.label-search", {
      id: "label-search", type: "search", placeholder: "Type to find a class, Enter to pick  ( / )",
      value: state.search, autocomplete: "off",
      oninput: (e) => { state.search = e.target.value; renderScores(state.current); refocusSearch(); },
    }) : null;
    fill($("prediction"),
      h("div.prediction", top || "no prediction", " ", h("span.pct", top ? pct(scores[top]) : "")),
      h("div.muted", { id: "prelabel-source", dataset: { source: pred.source || "none" } }, pred.title,
        sources(item).length > 1 ? " · T switches" : ""),
      search, h("div.scores", { id: "scores" }, rows));
  }

  function refocusSearch() {
    const s = $("label-search");
    if (s) { s.focus(); s.setSelectionRange(s.value.length, s.value.length); }
  }

  function renderBoxPanel() {
    const ed = state.editor;
    if (!ed || !state.current) return;
    const active = ed.boxes[ed.selected] ? ed.boxes[ed.selected].label : ed.currentLabel;
    const chips = state.labels.map((label, i) => h(`button.chip${label === active ? ".active" : ""}`,
      { type: "button", onclick: () => ed.setLabel(label) },
      i < 9 ? h("span.k", String(i + 1)) : null, label));
    const items = ed.boxes.map((b, i) => h(`button.box-item${i === ed.selected ? ".selected" : ""}`,
      { type: "button", onclick: () => ed.select(i) },
      h("span.swatch", { style: { background: colorFor(state.labels.indexOf(b.label)) } }),
      h("span", b.label),
      h("span.muted.mono", b.model && b.score !== null ? pct(b.score) : "edited")));
    const slider = h("input", { type: "range", min: 0, max: 1, step: 0.05, value: state.threshold,
      "aria-label": "pre-label score threshold",
      oninput: (e) => {
        state.threshold = Number(e.target.value);
        localStorage.setItem("edgeloop.threshold", String(state.threshold));
        if (!ed.changed()) ed.load(prelabels(state.current));
      } });
    fill($("prediction"),
      h("div.prediction", `${ed.boxes.length} box${ed.boxes.length === 1 ? "" : "es"}`, " ",
        h("span.pct", ed.changed() ? "edited" : "pre-labels")),
      h("div.muted", { id: "prelabel-source", dataset: { source: predictionOf(state.current).source || "none" } },
        predictionOf(state.current).title, sources(state.current).length > 1 ? " · T switches" : ""),
      h("div.class-chips", chips),
      h("div.box-list", { id: "box-list", style: { marginTop: "8px" } },
        items.length ? items : h("div.muted", "No boxes: drag on the image to draw one.")),
      h("div.threshold", { style: { marginTop: "8px" } }, "pre-label ≥", slider, h("span.mono", pct(state.threshold))));
  }

  function kv(pairs) {
    return h("dl.kv", pairs.flatMap(([k, v]) => [h("dt", k), h("dd", v === null || v === undefined || v === "" ? "–" : v)]));
  }

  function renderWhy(item) {
    fill($("why"), kv([
      ["strategy", h("span.badge", item.strategy || "–")],
      ["reason", item.reason],
      ["uncertainty", item.uncertainty === null || item.uncertainty === undefined ? null : Number(item.uncertainty).toFixed(3)],
    ]));
  }

  function renderSource(item) {
    fill($("source"), kv([
      ["agent", item.agent_id], ["camera", item.camera_id],
      ["model", [item.model_name, item.model_version].filter(Boolean).join(" · ")],
      ["pre-label", prelabelText(item)],
      ["captured", h("span", { title: when(item.captured_at) }, `${when(item.captured_at)} (${ago(item.captured_at)})`)],
      ["item", h("span", h("span.mono", item.id), " ",
        h("a", { href: `/models?example=${encodeURIComponent(item.id)}`, title: "which models used it" }, "lineage"))],
    ]));
  }

  function prelabelText(item) {
    const p = item.prelabel;
    if (p && p.state === "failed") return h("span", { title: p.error || "" }, `teacher ${p.model_name} failed on it`);
    const pred = predictionOf(item);
    if (!pred.source) return null;
    return `${pred.title}${pred.score === null || pred.score === undefined ? "" : ` · ${pct(pred.score)}`}`;
  }

  function refreshProgress() {
    return edgeloop.showProgress($("progress"));
  }

  // A configured teacher that did not load is said here, not only in the server's log.
  async function showAssistState() {
    const box = $("assist-notice"); // only on a server with an [assist] section
    if (!box) return;
    let st;
    try { st = await api("/api/assist"); } catch (_) { return; }
    if (st.state === "failed") {
      box.textContent = `The teacher model is not loaded, so there are no teacher pre-labels: ${st.error}`;
      box.classList.remove("hidden");
    } else box.classList.add("hidden");
  }

  let flashTimer = null;
  function flash(text) {
    const f = $("flash");
    if (!f) return;
    f.textContent = text;
    f.classList.add("show");
    clearTimeout(flashTimer);
    flashTimer = setTimeout(() => f.classList.remove("show"), 1400);
  }

  function showError(err) {
    const box = $("error");
    box.textContent = `Error: ${err && err.message ? err.message : err}`;
    box.classList.remove("hidden");
  }

  // ---------- keys ----------
  function saveBoxes() {
    const ed = state.editor;
    // Before the image and its pre-labels are in place there is nothing to save.
    if (!ed || !ed.loaded) return;
    // Unchanged pre-labels are an accept, but only when the threshold hid no
    // box: the server's accept stores every box of the pre-label.
    const pred = predictionOf(state.current);
    const accept = pred.source && !ed.changed() && ed.boxes.length === pred.boxes.length;
    if (accept) act(pred.source === "teacher" ? "accept-prelabel" : "accept");
    else act("label", { boxes: ed.result() });
  }

  function toggleHelp(show) {
    $("help").classList.toggle("hidden", show === undefined ? undefined : !show);
  }

  function onKey(e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const helpOpen = !$("help").classList.contains("hidden");
    if (helpOpen) {
      if (e.key === "Escape" || e.key === "?") { toggleHelp(false); e.preventDefault(); }
      return;
    }
    if (typing(e)) {
      if (e.key === "Escape") e.target.blur();
      if (e.key === "Enter" && e.target.id === "label-search") {
        const first = document.querySelector("#scores .score-row");
        e.preventDefault();
        if (first) { state.search = ""; e.target.blur(); act("label", { label: first.dataset.label }); }
      }
      return;
    }
    const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
    // A held-down key must not label a run of items; only navigation repeats.
    if (e.repeat && !["Tab", "[", "]"].includes(key)) { e.preventDefault(); return; }
    if (key === "?") { toggleHelp(true); e.preventDefault(); return; }
    if (key === "u") { undo(); e.preventDefault(); return; }
    if (!state.current) return;
    if (key === "x") { act("reject"); e.preventDefault(); return; }
    if (key === "t") { toggleSource(); e.preventDefault(); return; }
    if (key === "s") { act("skip"); e.preventDefault(); return; }
    if (state.task === "detection") detectionKey(e, key);
    else classificationKey(e, key);
  }

  function classificationKey(e, key) {
    if (/^[1-9]$/.test(key) && state.labels[Number(key) - 1]) {
      act("label", { label: state.labels[Number(key) - 1] });
    } else if (key === "Enter") {
      act(sourceOf(state.current) === "teacher" ? "accept-prelabel" : "accept");
    } else if (key === "/" && $("label-search")) {
      $("label-search").focus();
    } else return;
    e.preventDefault();
  }

  function detectionKey(e, key) {
    const ed = state.editor;
    if (!ed) return;
    if (/^[1-9]$/.test(key) && state.labels[Number(key) - 1]) ed.setLabel(state.labels[Number(key) - 1]);
    else if (key === "[") ed.shiftLabel(-1);
    else if (key === "]") ed.shiftLabel(1);
    else if (key === "Tab") ed.cycle(e.shiftKey ? -1 : 1);
    else if (key === "Delete" || key === "Backspace") ed.deleteSelected();
    else if (key === "Escape") ed.select(-1);
    else if (key === "Enter") saveBoxes();
    else return;
    e.preventDefault();
  }

  // ---------- start ----------
  async function fillFilterOptions() {
    const add = (id, values) => fill($(id), [...new Set(values)].filter(Boolean).sort().map((v) => h("option", { value: v })));
    add("labels-list", state.labels);
    try {
      const fleet = await api("/api/fleet");
      add("agents-list", fleet.agents.map((a) => a.agent_id));
      add("cameras-list", fleet.agents.flatMap((a) => (a.cameras || []).map((c) => (typeof c === "string" ? c : c.camera_id || c.id))));
      add("versions-list", fleet.agents.map((a) => a.model_version));
    } catch (_) { /* the filters still work as free text */ }
  }

  function bindButtons() {
    const click = (id, fn) => $(id).addEventListener("click", fn);
    click("btn-accept", () => (state.task === "detection" ? saveBoxes()
      : act(sourceOf(state.current) === "teacher" ? "accept-prelabel" : "accept")));
    click("btn-reject", () => act("reject"));
    click("btn-skip", () => act("skip"));
    click("btn-undo", () => undo());
    click("btn-help", () => toggleHelp(true));
    click("help-close", () => toggleHelp(false));
    $("help").addEventListener("click", (e) => { if (e.target.id === "help") toggleHelp(false); });
  }

  async function start() {
    const params = new URLSearchParams(location.search);
    for (const k of FILTERS) if (params.get(k)) state.filters[k] = params.get(k);
    bindButtons();
    document.addEventListener("keydown", onKey);
    try {
      state.project = await api("/api/project");
      state.labels = state.project.labels || [];
      state.task = state.project.task === "detection" ? "detection" : "classification";
      document.body.dataset.task = state.task;
      $("btn-accept").querySelector("span").textContent = state.task === "detection" ? "Save boxes" : "Accept";
      document.querySelectorAll(`[data-task]:not([data-task="${state.task}"])`).forEach((n) => n.classList.add("hidden"));
      refreshProgress();
      fillFilterOptions();
      showAssistState();
      await showNext();
    } catch (err) {
      showError(err);
    }
  }

  window.edgeloopReview = state; // for debugging from the console and for tests
  start();
})();
