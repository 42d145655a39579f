/* The live runs list (served at /runs/assets/runs.js; see runs.html). */
"use strict";
(function () {
  const R = window.OtelRuns;
  const { CONFIG, el, parseTime, relTime, localTime, elapsed, getJSON, runHref } = R;
  const PAGE = 100, MAX_RUNS = 5000, RANGES = { "1h": 3600e3, "24h": 86400e3, "7d": 7 * 86400e3, "30d": 30 * 86400e3 };
  const COUNTS_EVERY_MS = 2000, RANGE_COUNTS_EVERY_MS = 30000, SUBTYPE_DEBOUNCE_MS = 300;
  const runs = new Map();          // run_id -> Run dict
  const floors = new Map();        // server filter key -> oldest run id loaded without gaps ("" = all)
  let counted = null;              // the last /api/runs/counts answer, with the key it is for
  let selected = null, view = null, lastEventId = null, source = null, reconnectTimer = null, backoff = 1000;
  const RETRY_AFTER_MS = 5000, MAX_BACKOFF_MS = 60000;
  const $ = (id) => document.getElementById(id);
  const body = $("runs-body"), search = $("search"), suggest = $("suggest");
  const f = { type: $("filter-type"), subtype: $("filter-subtype"), status: $("filter-status"), range: $("filter-range") };

  for (const t of CONFIG.types) f.type.add(new Option(t, t));
  for (const s of CONFIG.statuses) f.status.add(new Option(s, s));

  // -- state in the URL -------------------------------------------------------------
  function readUrl() {
    const p = new URLSearchParams(location.search);
    for (const [k, node] of Object.entries(f)) node.value = p.get(k) || "";
    if (f.type.value !== (p.get("type") || "")) f.type.value = "";
    if (f.status.value !== (p.get("status") || "")) f.status.value = "";
    search.value = p.get("q") || "";
    selected = p.get("run") || null;
  }
  function writeUrl() {
    const p = new URLSearchParams();
    if (search.value.trim()) p.set("q", search.value.trim());
    for (const [k, node] of Object.entries(f)) if (node.value.trim()) p.set(k, node.value.trim());
    if (selected) p.set("run", selected);
    const url = location.pathname + (p.toString() ? "?" + p : "");
    if (url !== location.pathname + location.search) history.replaceState(null, "", url);
    try { localStorage.setItem("otel-runs:list", url); } catch (e) { /* storage off: the link is plain */ }
  }

  // -- filtering ------------------------------------------------------------------------
  // Type, status, subtype and time range are the server's filter (the list and its
  // counts are asked for them); the free text search filters the loaded runs.
  const subtypeNeedle = () => f.subtype.value.trim().replace(/\s+/g, " ").toLowerCase();
  const countsKey = () => `${f.type.value}|${subtypeNeedle()}|${f.range.value}`;
  const serverKey = () => `${countsKey()}|${f.status.value}`;
  /** The server filter as query parameters (``withStatus``: the list's; else the counts'). */
  function filterParams(withStatus) {
    const p = new URLSearchParams(), range = RANGES[f.range.value];
    if (f.type.value) p.set("type", f.type.value);
    if (withStatus && f.status.value) p.set("status", f.status.value);
    if (f.subtype.value.trim()) p.set("subtype", f.subtype.value.trim().slice(0, 200));
    if (range) p.set("since", String(Math.floor(Date.now() - range)));  // epoch ms
    return p;
  }
  function words() { return search.value.toLowerCase().replace(/@run:/g, " ").split(/\s+/).filter(Boolean); }
  function textMatch(run, ws) {   // the ledger's search rule
    const id = run.run_id.toLowerCase(), sub = (run.subtype || "").toLowerCase();
    const sw = (run.summary || "").toLowerCase().match(/\w[\w.:/-]*/g) || [];
    return ws.every((w) => id.startsWith(w) || sub.includes(w) || sw.some((s) => s.startsWith(w)));
  }
  /** Whether a run matches the server filter without its status (what the counts count). */
  function inCounts(run) {
    const sub = subtypeNeedle(), range = RANGES[f.range.value];
    if (f.type.value && run.type !== f.type.value) return false;
    if (sub && !(run.subtype || "").replace(/\s+/g, " ").toLowerCase().includes(sub)) return false;
    if (range) { const t = parseTime(run.started_at); if (t === null || Date.now() - t > range) return false; }
    return true;
  }
  function passes(run) {
    const ws = words();
    if (!inCounts(run)) return false;
    if (f.status.value && run.status !== f.status.value) return false;
    if (ws.length && !textMatch(run, ws)) return false;
    const floor = floors.get(serverKey());  // runs older than that one: maybe gaps
    return !floor || run.run_id >= floor || run.status === "running";
  }
  function describeFilters() {
    const parts = [];
    if (search.value.trim()) parts.push(`matching “${search.value.trim()}”`);
    if (f.type.value) parts.push(`of type ${f.type.value}`);
    if (f.subtype.value.trim()) parts.push(`subtype containing “${f.subtype.value.trim()}”`);
    if (f.status.value) parts.push(`with status ${f.status.value}`);
    if (f.range.value) parts.push(`started in the ${f.range.options[f.range.selectedIndex].text}`);
    return parts.join(", ");
  }

  // -- rendering ------------------------------------------------------------------------
  function rowFor(run, first) {
    const started = parseTime(run.started_at);
    const tr = el("tr", { tabindex: first ? "0" : "-1", "data-run-id": run.run_id, "data-status": run.status,
                          "aria-selected": String(run.run_id === selected),
                          "aria-label": `${run.subtype}, ${run.status}${run.summary ? ", " + run.summary.slice(0, 120) : ""}` });
    tr.append(
      el("td", { class: "c-status" }, el("span", { class: "badge " + run.status, text: run.status })),
      el("td", { class: "c-run" }, el("a", { class: "subtype run-link", href: runHref(run.run_id), tabindex: "-1", text: run.subtype }),
         el("div", { class: "rid", text: run.run_id })),
      el("td", { class: "c-summary" }, el("span", { class: "summary clamp", title: run.summary && run.summary.length > 140 ? run.summary.slice(0, 1000) : null, text: run.summary || "" })),
      el("td", { class: "c-started num" }, started === null ? "" :
         el("time", { datetime: run.started_at, title: `${localTime(started)} (UTC ${run.started_at})`, "data-rel": String(started), text: relTime(started) })),
      el("td", { class: "c-dur num elapsed", text: elapsed(run) }));
    return tr;
  }

  function sorted() { return [...runs.values()].sort((a, b) => (a.run_id < b.run_id ? 1 : a.run_id > b.run_id ? -1 : 0)); }

  function render() {
    const focusedId = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.runId : null;
    const list = sorted();
    while (list.length > MAX_RUNS) runs.delete(list.pop().run_id);
    const shown = list.filter((r) => passes(r));
    const focusTarget = focusedId && shown.some((r) => r.run_id === focusedId) ? focusedId : shown.length ? shown[0].run_id : null;
    body.replaceChildren(...shown.map((r) => rowFor(r, r.run_id === focusTarget)));
    const what = describeFilters();
    $("empty").hidden = shown.length > 0;
    const floor = floors.get(serverKey());
    $("empty").textContent = what ? `No ${floor === "" && !search.value.trim() ? "" : "loaded "}runs ${what}. ` : "No runs yet.";
    if (what && !shown.length) $("empty").append(el("button", { type: "button", class: "small linkish", id: "empty-clear", text: "Clear filters" }));
    const known = counted && counted.key === countsKey() && !counted.error && !search.value.trim()
      ? (f.status.value ? counted.counts[f.status.value] || 0 : counted.total) : null;
    $("count").textContent = !shown.length ? "" : known === null ? `· ${shown.length} shown of ${list.length} loaded`
      : `· ${shown.length} shown of ${counted.exact ? "" : "at least "}${known}`;
    showCounts();
    charts(shown);
    $("load-older").hidden = floor === "";
    $("older-note").textContent = floor === "" && list.length ? "All runs loaded." : "";
    $("charts").hidden = list.length < 2;
    if (focusedId) { const r = body.querySelector(`tr[data-run-id="${CSS.escape(focusTarget || "")}"]`); if (r && focusTarget === focusedId) r.focus(); }
    if (selected && !(runs.has(selected) ? passes(runs.get(selected)) : true)) closeDetail(false);
    const subs = [...new Set(list.map((r) => r.subtype))].sort();
    if ($("subtypes").childElementCount !== subs.length) $("subtypes").replaceChildren(...subs.map((s) => el("option", { value: s })));
  }

  // -- counts per status: from the server, for the current filter -------------------------
  let countsTimer = null, countsAt = 0, countsAsked = 0;
  /** Ask for the counts now, or (``throttled``: a live event) at most every COUNTS_EVERY_MS. */
  function refreshCounts(throttled) {
    if (throttled && countsTimer !== null) return;  // one is on its way
    clearTimeout(countsTimer);
    const wait = throttled ? Math.max(0, countsAt + COUNTS_EVERY_MS - Date.now()) : 0;
    countsTimer = setTimeout(() => { countsTimer = null; fetchCounts(); }, wait);
  }
  async function fetchCounts() {
    const mine = ++countsAsked, key = countsKey();
    countsAt = Date.now();
    try {
      const params = filterParams(false);
      params.set("buckets", "30");  // the runs-over-time chart of the whole ledger
      const data = await getJSON(`${CONFIG.api}/runs/counts?${params}`);
      if (mine === countsAsked) counted = { key, counts: data.counts || {}, total: data.total, exact: data.exact !== false, histogram: data.histogram || null };
    } catch (err) {
      if (mine === countsAsked) counted = { key, error: err.message };
    }
    if (mine === countsAsked) render();
  }
  function showCounts() {
    const box = $("status-counts");
    if (!counted || counted.key !== countsKey()) { box.replaceChildren(); return; }  // (being asked)
    if (counted.error) { box.replaceChildren(el("span", { class: "muted", text: "Counts unavailable: " + counted.error })); return; }
    const c = counted.counts, atLeast = counted.exact ? "" : "≥";
    box.dataset.total = String(counted.total);
    box.replaceChildren(...CONFIG.statuses.filter((s) => c[s] || f.status.value === s).map((s) => el("button", {
      type: "button", class: "chip " + s, "data-status": s, "data-count": String(c[s] || 0), "aria-pressed": String(f.status.value === s),
      title: `${atLeast ? "at least " : ""}${c[s] || 0} ${s} runs for the current filter; click to filter` },
      el("span", { class: "dot " + s }), `${s} ${atLeast}${c[s] || 0}`)));
  }

  let chartsTimer = null;
  function charts(shown) {
    if (!$("charts").open) return;
    clearTimeout(chartsTimer);
    chartsTimer = setTimeout(() => {
      const box = $("charts-body"), w = box.clientWidth - 28;
      // The server's histogram when it is for this filter (not for a free text search).
      const hist = counted && counted.key === countsKey() && !counted.error && !search.value.trim() ? counted.histogram : null;
      box.replaceChildren(R.charts.runsOverTime(shown, w > 620 ? (w - 12) / 2 : w, hist, f.status.value), R.charts.durationTrends(shown));
    }, 150);
  }

  function tick() {
    if (RANGES[f.range.value] && Date.now() - countsAt > RANGE_COUNTS_EVERY_MS) refreshCounts(true);  // the window moves
    for (const tr of body.rows) {
      const run = runs.get(tr.dataset.runId);
      if (!run) continue;
      if (run.status === "running") tr.querySelector(".elapsed").textContent = elapsed(run);
      const t = tr.querySelector("time[data-rel]");
      if (t) t.textContent = relTime(Number(t.dataset.rel));
    }
  }

  function merge(run) {
    const old = runs.get(run.run_id);
    if (!old || old.status === "running" || run.status !== "running") runs.set(run.run_id, run);
  }

  function upsert(run, announce) {
    const old = runs.get(run.run_id);
    if (old && old.status !== "running" && run.status === "running") return;  // a late "started"
    runs.set(run.run_id, run);
    if (inCounts(run)) refreshCounts(true);
    if (announce) $("announce").textContent = `${run.subtype} ${run.status}`;
    render();
    if (selected === run.run_id && view) view.refresh();
  }

  // -- loading --------------------------------------------------------------------------
  async function load(before) {
    const key = serverKey(), params = filterParams(true);
    params.set("limit", String(PAGE));
    if (before) params.set("before", before);
    try {
      const data = await getJSON(`${CONFIG.api}/runs/recent?${params}`);
      data.runs.forEach(merge);
      const last = data.runs.length ? data.runs[data.runs.length - 1].run_id : null;
      const prev = floors.get(key);
      if (data.runs.length < PAGE && !data.truncated) floors.set(key, "");
      else if (last && (prev === undefined || (prev !== "" && last < prev))) floors.set(key, last);
      $("notice").textContent = "";
    } catch (err) {
      $("notice").textContent = "Run history unavailable: " + err.message + " (live updates continue)";
    }
    render();
  }
  async function loadRunning() {  // running runs are listed whenever the page opens
    try { (await getJSON(`${CONFIG.api}/runs/recent?status=running&limit=${PAGE}`)).runs.forEach(merge); } catch (e) { /* the main load says it */ }
    render();
  }
  $("load-older").addEventListener("click", async () => {
    const btn = $("load-older"), key = serverKey();
    const floor = floors.get(key) || sorted().filter((r) => passes(r)).map((r) => r.run_id).pop();
    if (!floor) return;
    btn.disabled = true;
    const before = new Set(runs.keys());
    await load(floor);
    btn.disabled = false;
    const added = [...runs.keys()].filter((k) => !before.has(k)).length;
    $("older-note").textContent = floors.get(key) === "" ? `All runs loaded (${added} more).` : `${added} older runs loaded.`;
  });

  // -- detail ---------------------------------------------------------------------------
  function narrow() { return window.matchMedia("(max-width: 900px)").matches; }
  function select(runId, focusPanel) {
    if (view) view.stop();
    selected = runId;
    for (const tr of body.rows) tr.setAttribute("aria-selected", String(tr.dataset.runId === runId));
    $("detail").hidden = false;
    $("main").classList.add("has-detail");
    document.body.classList.toggle("overlay", narrow());
    view = R.runView($("detail-body"), runId, { page: false });
    writeUrl();
    const panel = $("detail");
    panel.scrollTop = 0;
    if (!narrow()) panel.scrollIntoView({ block: "nearest" });
    if (focusPanel || narrow()) $("detail-close").focus({ preventScroll: !narrow() });
  }
  function closeDetail(refocus) {
    const was = selected;
    if (view) view.stop();
    view = null; selected = null;
    $("detail").hidden = true;
    $("main").classList.remove("has-detail");
    document.body.classList.remove("overlay");
    for (const tr of body.rows) tr.setAttribute("aria-selected", "false");
    writeUrl();
    if (refocus && was) { const r = body.querySelector(`tr[data-run-id="${CSS.escape(was)}"]`); if (r) r.focus(); }
  }
  $("detail-close").addEventListener("click", () => closeDetail(true));

  body.addEventListener("click", (ev) => {
    const tr = ev.target.closest("tr[data-run-id]");
    if (!tr || ev.target.closest("a")) return;
    select(tr.dataset.runId, false);
  });
  function moveFocus(delta) {
    const rows = [...body.rows];
    if (!rows.length) return;
    const i = rows.indexOf(document.activeElement);
    const next = rows[Math.max(0, Math.min(rows.length - 1, i < 0 ? 0 : i + delta))];
    for (const r of rows) r.tabIndex = r === next ? 0 : -1;
    next.focus();
  }
  document.addEventListener("keydown", (ev) => {
    const t = ev.target, typing = t.closest && t.closest("input, select, textarea");
    if (ev.key === "Escape" && selected && !typing) { closeDetail(true); return; }
    if (typing || ev.altKey || ev.ctrlKey || ev.metaKey) return;
    const onRow = t.matches && t.matches("tr[data-run-id]");
    if (ev.key === "j" || (onRow && ev.key === "ArrowDown")) { ev.preventDefault(); moveFocus(1); }
    else if (ev.key === "k" || (onRow && ev.key === "ArrowUp")) { ev.preventDefault(); moveFocus(-1); }
    else if (ev.key === "/") { ev.preventDefault(); search.focus(); }
    else if (onRow && (ev.key === "Enter" || ev.key === " ")) { ev.preventDefault(); select(t.dataset.runId, true); }
    else if (onRow && ev.key === "o") { location.href = runHref(t.dataset.runId); }
  });

  // -- filters and search ------------------------------------------------------------------
  let subtypeTimer = null;
  function filtersChanged(reload) {
    writeUrl(); render();
    if (reload) { clearTimeout(subtypeTimer); load(); refreshCounts(false); }
  }
  f.type.addEventListener("change", () => filtersChanged(true));
  f.status.addEventListener("change", () => filtersChanged(true));
  f.range.addEventListener("change", () => filtersChanged(true));
  f.subtype.addEventListener("input", () => {  // the loaded runs at once, the server's after a pause
    filtersChanged(false);
    clearTimeout(subtypeTimer);
    subtypeTimer = setTimeout(() => filtersChanged(true), SUBTYPE_DEBOUNCE_MS);
  });
  function clearAll() { search.value = ""; for (const n of Object.values(f)) n.value = ""; filtersChanged(true); }
  $("clear-filters").addEventListener("click", clearAll);
  $("empty").addEventListener("click", (ev) => { if (ev.target.id === "empty-clear") clearAll(); });
  $("status-counts").addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-status]");
    if (!b) return;
    f.status.value = f.status.value === b.dataset.status ? "" : b.dataset.status;
    filtersChanged(true);
  });
  $("charts").addEventListener("toggle", () => render());
  let resized = null;
  window.addEventListener("resize", () => { clearTimeout(resized); resized = setTimeout(render, 200); });
  R.autocomplete(search, suggest, () => filtersChanged(false));

  // -- the live feed -----------------------------------------------------------------------
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
    source = new EventSource(`${CONFIG.api}/events` + (lastEventId ? `?last_event_id=${encodeURIComponent(lastEventId)}` : ""));
    source.onopen = () => { backoff = 1000; setConn("live", "live"); };
    source.addEventListener("run:started", onEvent);
    source.addEventListener("run:completed", onEvent);
    source.addEventListener("reset", (ev) => { if (ev.lastEventId) lastEventId = ev.lastEventId; load(); refreshCounts(false); });
    // On an error: retry ourselves with exponential back-off and jitter (at least
    // RETRY_AFTER_MS after a refusal such as 503), resuming with ?last_event_id=.
    source.onerror = () => {
      const refused = source.readyState === EventSource.CLOSED;
      source.close();
      setConn("connecting", "reconnecting…");
      if (reconnectTimer !== null) return;
      const base = refused ? Math.max(backoff, RETRY_AFTER_MS) : backoff;
      backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
      reconnectTimer = setTimeout(() => { reconnectTimer = null; connect(); }, base * (0.5 + Math.random()));
    };
    window.clearInterval(connect.watchdog);
    connect.watchdog = window.setInterval(() => {
      if (source.readyState === EventSource.CLOSED && reconnectTimer === null) connect();
    }, 20000);
  }

  readUrl();
  writeUrl();
  $("charts").open = !narrow();
  setInterval(tick, 1000);
  connect();
  refreshCounts(false);
  load().then(loadRunning).then(() => { if (selected) select(selected, false); });
})();
