/* The live runs page of otel-runs (served at /runs/assets/runs.js; see runs.html). */
"use strict";
(function () {
  // The server writes the config into a JSON data block (never executed: no inline script).
  const configNode = document.getElementById("otel-runs-config");
  let served = {};
  try { served = JSON.parse(configNode ? configNode.textContent : "{}") || {}; } catch (e) { served = {}; }
  const CONFIG = Object.assign({ api: "/api", traceUrl: null, types: [], statuses: [] }, served);
  const MAX_ROWS = 200;
  const runs = new Map();          // run_id -> Run dict
  let selected = null;             // run_id shown in the detail panel
  let lastEventId = null;          // newest event id seen (for reconnects)
  let source = null, reconnectTimer = null, backoff = 1000;
  const RETRY_AFTER_MS = 5000, MAX_BACKOFF_MS = 60000;  // Retry-After default; back-off cap

  const $ = (id) => document.getElementById(id);
  const body = $("runs-body"), typeSel = $("filter-type"), statusSel = $("filter-status");

  for (const t of CONFIG.types) typeSel.add(new Option(t, t));
  for (const s of CONFIG.statuses) statusSel.add(new Option(s, s));

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined) continue;
      if (k === "class") node.className = v; else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }

  function parseTime(iso) { const t = Date.parse(iso || ""); return Number.isNaN(t) ? null : t; }

  function relTime(ms) {
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 5) return "just now";
    if (s < 60) return s + "s ago";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    if (s < 86400) return Math.floor(s / 3600) + " h ago";
    return Math.floor(s / 86400) + " d ago";
  }

  function fmtDuration(ms) {
    if (ms === null || ms === undefined) return "";
    if (ms < 1000) return Math.round(ms) + " ms";
    const s = ms / 1000;
    if (s < 60) return s.toFixed(s < 10 ? 2 : 1) + " s";
    const m = Math.floor(s / 60);
    return m + " min " + Math.round(s - m * 60) + " s";
  }

  function elapsed(run) {
    if (run.status === "running") {
      const t = parseTime(run.started_at);
      return t === null ? "" : fmtDuration(Math.max(0, Date.now() - t));
    }
    return fmtDuration(run.duration_ms);
  }

  function visible(run) {
    return (!typeSel.value || run.type === typeSel.value) &&
           (!statusSel.value || run.status === statusSel.value);
  }

  function rowFor(run) {
    const started = parseTime(run.started_at);
    const tr = el("tr", { tabindex: "0", "data-run-id": run.run_id, "data-status": run.status,
                          "aria-selected": String(run.run_id === selected),
                          "aria-controls": "detail",
                          "aria-label": `${run.subtype}, ${run.status}${run.summary ? ", " + run.summary : ""}` });
    tr.append(
      el("td", {}, el("span", { class: "badge " + run.status, text: run.status })),
      el("td", {}, el("div", { class: "subtype", text: run.subtype }),
                   el("div", { class: "rid", text: run.run_id })),
      el("td", { class: "summary", text: run.summary || "" }),
      el("td", { class: "num" }, started === null ? "" :
         el("time", { datetime: run.started_at, title: run.started_at, "data-rel": String(started),
                      text: relTime(started) })),
      el("td", { class: "num elapsed", text: elapsed(run) }),
    );
    tr.addEventListener("click", () => select(run.run_id));
    tr.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); select(run.run_id); }
      else if (ev.key === "ArrowDown" && tr.nextElementSibling) { ev.preventDefault(); tr.nextElementSibling.focus(); }
      else if (ev.key === "ArrowUp" && tr.previousElementSibling) { ev.preventDefault(); tr.previousElementSibling.focus(); }
    });
    return tr;
  }

  function sorted() {
    return [...runs.values()].sort((a, b) => (a.run_id < b.run_id ? 1 : a.run_id > b.run_id ? -1 : 0));
  }

  function render() {
    const focusedId = document.activeElement && document.activeElement.dataset
      ? document.activeElement.dataset.runId : null;
    const list = sorted();
    while (list.length > MAX_ROWS) runs.delete(list.pop().run_id);
    const shown = list.filter(visible);
    body.replaceChildren(...shown.map(rowFor));
    $("empty").hidden = shown.length > 0;
    $("count").textContent = shown.length ? `(${shown.length})` : "";
    if (focusedId) { const r = body.querySelector(`tr[data-run-id="${CSS.escape(focusedId)}"]`); if (r) r.focus(); }
  }

  function tick() {
    for (const tr of body.rows) {
      const run = runs.get(tr.dataset.runId);
      if (!run) continue;
      if (run.status === "running") tr.querySelector(".elapsed").textContent = elapsed(run);
      const t = tr.querySelector("time[data-rel]");
      if (t) t.textContent = relTime(Number(t.dataset.rel));
    }
  }

  function upsert(run, announce) {
    const old = runs.get(run.run_id);
    // Never let a late "started" overwrite a completed run.
    if (old && old.status !== "running" && run.status === "running") return;
    runs.set(run.run_id, run);
    if (announce) $("announce").textContent = `${run.subtype} ${run.status}`;
    render();
    if (selected === run.run_id) showDetail(run.run_id, false);
  }

  async function getJSON(url) {
    const resp = await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" });
    let data = null;
    try { data = await resp.json(); } catch (e) { data = null; }
    if (!resp.ok) throw new Error((data && data.error) || `HTTP ${resp.status}`);
    return data;
  }

  async function loadRecent() {
    const params = new URLSearchParams({ limit: "100" });
    if (typeSel.value) params.set("type", typeSel.value);
    if (statusSel.value) params.set("status", statusSel.value);
    try {
      const data = await getJSON(`${CONFIG.api}/runs/recent?${params}`);
      for (const run of data.runs) {
        const old = runs.get(run.run_id);
        if (!old || old.status === "running" || run.status !== "running") runs.set(run.run_id, run);
      }
      $("notice").textContent = "";
    } catch (err) {
      $("notice").textContent = "Run history unavailable: " + err.message + " (live updates continue)";
    }
    render();
  }

  function select(runId) {
    selected = runId;
    for (const tr of body.rows) tr.setAttribute("aria-selected", String(tr.dataset.runId === runId));
    showDetail(runId, true);
  }

  function kv(obj) {
    const dl = el("dl");
    for (const [k, v] of Object.entries(obj || {})) {
      dl.append(el("dt", { text: k }), el("dd", { text: typeof v === "string" ? v : JSON.stringify(v) }));
    }
    return dl;
  }

  async function showDetail(runId, fetchIt) {
    const pane = $("detail-body");
    let run = runs.get(runId) || null, spans = null, note = null;
    if (fetchIt || (run && run.status !== "running")) {
      try {
        const data = await getJSON(`${CONFIG.api}/runs/${encodeURIComponent(runId)}`);
        run = data.run; spans = data.spans;
      } catch (err) {
        note = run && run.status === "running" ? "Still running; details appear when it completes."
             : "Details not available yet: " + err.message;
      }
    }
    if (selected !== runId || !run) { if (!run) pane.replaceChildren(el("p", { text: note || "Unknown run" })); return; }
    const traceHref = run.trace_url || (CONFIG.traceUrl && run.trace_id
      ? CONFIG.traceUrl.replace("{trace_id}", run.trace_id) : null);
    const parts = [
      el("button", { class: "close", type: "button", "aria-label": "Close run detail", text: "×" }),
      el("h3", { class: "subtype", text: run.subtype }),
      el("p", {}, el("span", { class: "badge " + run.status, text: run.status }), " ",
         el("span", { class: "summary", text: run.summary || "" })),
      kv({ run_id: run.run_id, type: run.type, started: run.started_at, ended: run.ended_at || "—",
           duration: run.status === "running" ? "running" : fmtDuration(run.duration_ms),
           service: run.service || "—", parent_run: run.parent_run_id || "—", trace_id: run.trace_id }),
    ];
    if (traceHref) parts.push(el("p", {}, el("a", { href: traceHref, target: "_blank", rel: "noopener",
                                                    id: "trace-link", text: "Open trace ↗" })));
    if (note) parts.push(el("p", { class: "summary", text: note }));
    parts.push(el("h3", { text: "Metadata" }),
      Object.keys(run.metadata || {}).length ? kv(run.metadata) : el("p", { class: "summary", text: "none" }));
    parts.push(el("h3", { text: `Events (${(run.events || []).length})` }));
    parts.push((run.events || []).length
      ? el("ol", {}, ...run.events.map((e) => el("li", {}, el("strong", { text: e.name }), " ",
          el("span", { class: "summary num", text: e.timestamp || "" }),
          Object.keys(e.attributes || {}).length ? el("pre", { text: JSON.stringify(e.attributes, null, 1) }) : null)))
      : el("p", { class: "summary", text: "none" }));
    if (spans !== null) {
      parts.push(el("h3", { text: `Child spans (${spans.length})` }));
      parts.push(spans.length ? el("ul", { class: "plain" }, ...spans.map((s) => el("li", {},
          el("span", { class: "subtype", text: s.name }), " ",
          el("span", { class: "summary num", text: s.start_time_ns && s.end_time_ns
            ? fmtDuration((s.end_time_ns - s.start_time_ns) / 1e6) + " · " + s.status : s.status }))))
        : el("p", { class: "summary", text: "none" }));
    }
    pane.replaceChildren(...parts);
    pane.querySelector("button.close").addEventListener("click", () => {
      const row = body.querySelector(`tr[data-run-id="${CSS.escape(runId)}"]`);
      selected = null; render();
      pane.replaceChildren(el("p", { class: "summary", text: "Select a run to see its metadata, events and spans." }));
      if (row) { const again = body.querySelector(`tr[data-run-id="${CSS.escape(runId)}"]`); if (again) again.focus(); }
    });
  }

  function setConn(state, text) { const c = $("conn"); c.dataset.state = state; c.textContent = text; }

  function onEvent(ev) {
    if (ev.lastEventId) lastEventId = ev.lastEventId;
    let run;
    try { run = JSON.parse(ev.data); } catch (e) { return; }
    if (run && run.run_id) upsert(run, true);
  }

  function connect() {
    clearTimeout(reconnectTimer);
    reconnectTimer = null;
    if (source) source.close();
    const url = `${CONFIG.api}/events` + (lastEventId ? `?last_event_id=${encodeURIComponent(lastEventId)}` : "");
    source = new EventSource(url);
    source.onopen = () => { backoff = 1000; setConn("live", "live"); };
    source.addEventListener("run:started", onEvent);
    source.addEventListener("run:completed", onEvent);
    source.addEventListener("reset", (ev) => {
      if (ev.lastEventId) lastEventId = ev.lastEventId;
      loadRecent();
    });
    // On any error close the stream and retry later ourselves, with exponential back-off
    // and jitter (a refused stream, 503 + Retry-After when the server's stream cap is
    // reached, waits at least RETRY_AFTER_MS), instead of the browser's fixed `retry:`
    // delay: many pages do not hammer a busy or restarting server in step. The retry
    // resumes with ?last_event_id=.
    source.onerror = () => {
      const refused = source.readyState === EventSource.CLOSED;  // an HTTP error, e.g. 503
      source.close();
      setConn("connecting", "reconnecting…");
      if (reconnectTimer !== null) return;
      const base = refused ? Math.max(backoff, RETRY_AFTER_MS) : backoff;
      const delay = base * (0.5 + Math.random());  // jitter: 0.5x..1.5x
      backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
      reconnectTimer = setTimeout(() => { reconnectTimer = null; connect(); }, delay);
    };
    // A watchdog reconnects if the stream is closed with no retry pending.
    window.clearInterval(connect.watchdog);
    connect.watchdog = window.setInterval(() => {
      if (source.readyState === EventSource.CLOSED && reconnectTimer === null) connect();
    }, 20000);
  }

  typeSel.addEventListener("change", () => { render(); loadRecent(); });
  statusSel.addEventListener("change", () => { render(); loadRecent(); });
  setInterval(tick, 1000);
  connect();
  loadRecent();
})();
