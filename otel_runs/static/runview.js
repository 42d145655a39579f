/* One run, in full (the run page and the list's detail panel): OtelRuns.runView. */
"use strict";
(function () {
  const R = window.OtelRuns;
  const { el, kv, timeEl, fmtDuration, fmtOffset, elapsed, parseTime, getJSON, runHref, traceHref, CONFIG } = R;
  const REFRESH_MS = 2000, MAX_REFRESHES = 1800;

  function badge(status) { return el("span", { class: "badge " + status, text: status }); }

  /** A run id for the instant ``ms`` (the largest id of that millisecond). */
  function idAt(ms) {
    const d = new Date(ms), p = (n, w) => String(n).padStart(w || 2, "0");
    return `${d.getUTCFullYear()}${p(d.getUTCMonth() + 1)}${p(d.getUTCDate())}T${p(d.getUTCHours())}` +
           `${p(d.getUTCMinutes())}${p(d.getUTCSeconds())}${p(d.getUTCMilliseconds(), 3)}Z-ffffffffff`;
  }

  function failure(run) {
    const exc = (run.events || []).filter((e) => e.name === "exception");
    if (run.status !== "failed" && !exc.length) return null;
    const box = el("section", { class: "card failure", id: "failure", "aria-labelledby": "failure-heading" },
      el("div", { class: "card-head" }, el("h2", { id: "failure-heading", text: "Failure" })));
    if (!exc.length) { box.append(el("p", { class: "pad", text: run.summary || "The run failed." })); return box; }
    for (const e of exc) {
      const a = e.attributes || {};
      box.append(el("p", { class: "pad exc" }, el("strong", { class: "exc-type", text: a["exception.type"] || "Exception" }),
                    ": ", el("span", { class: "exc-message", text: a["exception.message"] || "" })));
      if (a["exception.stacktrace"]) {
        const pre = el("pre", { class: "stack", tabindex: "0", "aria-label": "Stack trace" });
        for (const line of String(a["exception.stacktrace"]).replace(/\n$/, "").split("\n")) {
          pre.append(el("span", { class: /^\S/.test(line) ? "stack-line head" : "stack-line", text: line }), "\n");
        }
        box.append(pre);
      }
    }
    return box;
  }

  function eventsTable(run, start) {
    const events = run.events || [];
    if (!events.length) return el("p", { class: "muted pad", text: "No events." });
    const tbody = el("tbody");
    for (const e of events) {
      const t = parseTime(e.timestamp);
      const attrs = Object.entries(e.attributes || {}).filter(([k]) => !(e.name === "exception" && k === "exception.escaped"));
      tbody.append(el("tr", {},
        el("td", { class: "num" }, el("span", { title: e.timestamp ? "UTC " + e.timestamp : null,
                                                text: t === null || start === null ? "" : fmtOffset(t - start) })),
        el("td", {}, el("strong", { text: e.name })),
        el("td", { class: "ev-attrs" }, attrs.length ? kv(Object.fromEntries(attrs.map(([k, v]) =>
          [k, e.name === "exception" && k === "exception.stacktrace" ? "(see Failure)" : v]))) : "")));
    }
    return el("div", { class: "scroll-x" }, el("table", { class: "events" },
      el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "Offset" }), el("th", { scope: "col", text: "Event" }),
                       el("th", { scope: "col", text: "Attributes" }))), tbody));
  }

  function section(id, title, ...content) {
    return el("section", { class: "card", id, "aria-labelledby": id + "-heading" },
      el("div", { class: "card-head" }, el("h2", { id: id + "-heading", text: title })), ...content);
  }

  function header(run, opts) {
    const Tag = opts.page ? "h1" : "h2";
    const trace = traceHref(run);
    const links = el("p", { class: "run-links" });
    if (!opts.page) links.append(el("a", { href: runHref(run.run_id), id: "run-page-link", text: "Open run page" }));
    if (run.parent_run_id) links.append(el("span", { text: "Parent run: " }), el("a", { href: runHref(run.parent_run_id), class: "mono", id: "parent-link", text: run.parent_run_id }));
    if (trace) links.append(el("a", { href: trace, target: "_blank", rel: "noopener", id: "trace-link", text: "Open trace ↗" }));
    const dur = el("span", { class: "num elapsed run-elapsed", text: run.status === "running" ? elapsed(run) + " (running)" : elapsed(run) });
    return el("div", { class: "run-header" },
      el(Tag, { class: "run-title" }, badge(run.status), " ", el("span", { class: "mono", text: run.subtype })),
      run.summary ? el("p", { class: "run-summary", text: run.summary }) : null,
      el("dl", { class: "facts" },
        el("dt", { text: "Type" }), el("dd", { text: run.type }),
        el("dt", { text: "Started" }), el("dd", {}, timeEl(run.started_at)),
        el("dt", { text: "Duration" }), el("dd", {}, dur),
        el("dt", { text: "Run id" }), el("dd", { class: "mono", text: run.run_id }),
        run.service ? el("dt", { text: "Service" }) : null, run.service ? el("dd", { text: run.service }) : null),
      links.childElementCount ? links : null);
  }

  async function childRuns(run) {
    const params = new URLSearchParams({ limit: "100" });
    const end = parseTime(run.ended_at);
    if (end !== null) params.set("before", idAt(end + 1));
    try {
      const data = await getJSON(`${CONFIG.api}/runs/recent?${params}`);
      return data.runs.filter((r) => r.parent_run_id === run.run_id).reverse();
    } catch (e) { return []; }
  }

  /** Render run ``runId`` into ``container``; ``opts.page``: the run page (h1, title). */
  function runView(container, runId, opts) {
    opts = opts || {};
    let stopped = false, timer = null, refreshes = 0, output = null, run = null, kids = null;
    const out = () => (output = output || R.outputPanel(runId));

    async function load() {
      timer = null;
      let data;
      try {
        data = await getJSON(`${CONFIG.api}/runs/${encodeURIComponent(runId)}`);
      } catch (err) {
        if (stopped) return;
        if (!run) {
          container.replaceChildren(el("p", { class: "pad notice", role: "alert",
            text: err.status === 404 ? `No run ${runId} in this project's ledger.` : `Run ${runId} is not available: ${err.message}` }));
          if (opts.page) document.title = "Run not found — otel-runs";
        }
        if (err.status !== 404 && err.status !== 400 && ++refreshes < MAX_REFRESHES) timer = setTimeout(load, REFRESH_MS);
        return;
      }
      if (stopped) return;
      run = data.run;
      const spans = data.spans || [];
      const start = parseTime(run.started_at);
      if (opts.page) document.title = `${run.status === "failed" ? "✗ " : run.status === "running" ? "▶ " : ""}${run.subtype} · ${run.status} — otel-runs`;
      // Child runs: looked up again every 5th refresh while the run is running.
      if (run.status !== "running" || refreshes % 5 === 0 || kids === null) kids = await childRuns(run);
      if (stopped) return;
      const parts = [header(run, opts), failure(run)];
      parts.push(section("spans", `Timeline (${spans.length} span${spans.length === 1 ? "" : "s"})`,
        spans.length || run.status !== "running" ? R.timeline(run, spans) : el("p", { class: "muted pad", text: "Child spans appear here as they end." })));
      parts.push(out().section);
      parts.push(section("events", `Events (${(run.events || []).length})`, eventsTable(run, start)));
      parts.push(section("metadata", "Metadata", Object.keys(run.metadata || {}).length
        ? el("div", { class: "pad" }, kv(run.metadata)) : el("p", { class: "muted pad", text: "No metadata." })));
      if (kids.length) {
        parts.push(section("children", `Child runs (${kids.length})`, el("ul", { class: "plain pad" }, ...kids.map((k) =>
          el("li", {}, badge(k.status), " ", el("a", { href: runHref(k.run_id), class: "mono", text: k.subtype }), " ",
             el("span", { class: "muted", text: (k.summary || "").slice(0, 200) }), " ",
             el("span", { class: "num muted", text: fmtDuration(k.duration_ms) }))))));
      }
      const focused = container.contains(document.activeElement) && document.activeElement.id;
      container.replaceChildren(...parts.filter(Boolean));
      if (focused && document.getElementById(focused)) document.getElementById(focused).focus();
      if (run.status === "running" && ++refreshes < MAX_REFRESHES) timer = setTimeout(load, REFRESH_MS);
    }

    const ticker = setInterval(() => {
      const e = container.querySelector(".run-elapsed");
      if (run && run.status === "running" && e) e.textContent = elapsed(run) + " (running)";
    }, 1000);
    container.replaceChildren(el("p", { class: "muted pad", text: "Loading run…" }));
    load();
    return {
      stop() { stopped = true; clearTimeout(timer); clearInterval(ticker); if (output) output.stop(); },
      refresh() { if (!stopped && !timer) load(); },
      get run() { return run; },
    };
  }

  window.OtelRuns.runView = runView;
})();
