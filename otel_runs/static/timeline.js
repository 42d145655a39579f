/* The span timeline of a run (a Gantt chart as a trace view draws it): OtelRuns.timeline. */
"use strict";
(function () {
  const { el, fmtDuration, spanStatus, parseTime } = window.OtelRuns;

  /** Spans in tree order (depth first, by start), each with its depth. */
  function ordered(run, spans) {
    const ids = new Set(spans.map((s) => s.span_id));
    const kids = new Map();
    for (const s of spans) {
      const parent = s.parent_span_id && ids.has(s.parent_span_id) ? s.parent_span_id : "";
      if (!kids.has(parent)) kids.set(parent, []);
      kids.get(parent).push(s);
    }
    for (const list of kids.values()) list.sort((a, b) => a.start_time_ns - b.start_time_ns);
    const out = [];
    const walk = (parent, depth) => {
      for (const s of kids.get(parent) || []) {
        if (out.length > 2000) return;  // bounded: a run keeps few spans anyway
        out.push([s, depth]);
        walk(s.span_id, depth + 1);
      }
    };
    walk("", 1);
    return out;
  }

  function attrText(span) {
    const lines = [`${span.name} · ${fmtDuration(durMs(span))} · ${spanStatus(span.status)[0]}`];
    if (span.status_description) lines.push("status: " + span.status_description);
    for (const [k, v] of Object.entries(span.attributes || {})) {
      if (k !== "run.id") lines.push(`${k} = ${typeof v === "string" ? v : JSON.stringify(v)}`);
    }
    return lines.join("\n");
  }

  function durMs(span) {
    return span.end_time_ns ? (span.end_time_ns - span.start_time_ns) / 1e6 : null;
  }

  /** The timeline of ``run`` and its child ``spans`` (a figure; empty note when none). */
  function timeline(run, spans) {
    const fig = el("figure", { class: "timeline", id: "timeline" });
    fig.append(el("figcaption", { class: "sr-only", text: "Timeline of the run's spans" }));
    const startMs = parseTime(run.started_at);
    const runStart = startMs === null ? Math.min(...spans.map((s) => s.start_time_ns / 1e6)) : startMs;
    const ends = spans.map((s) => (s.end_time_ns || s.start_time_ns) / 1e6);
    const runEnd = run.duration_ms !== null && run.duration_ms !== undefined
      ? runStart + run.duration_ms : Math.max(Date.now(), ...ends);
    const total = Math.max(runEnd - runStart, 0.001, ...ends.map((e) => e - runStart));
    const pct = (ms) => Math.min(100, Math.max(0, (ms / total) * 100));

    const axis = el("div", { class: "tl-row tl-axis", "aria-hidden": "true" }, el("div", { class: "tl-label" }));
    const ticks = el("div", { class: "tl-track" });
    for (const f of [0, 0.25, 0.5, 0.75, 1]) {
      const t = el("span", { class: f === 0.25 || f === 0.75 ? "tl-tick minor" : "tl-tick", text: fmtDuration(total * f).replace("<0.01 ms", "0") });
      t.style.left = (f * 100) + "%";
      ticks.append(t);
    }
    axis.append(ticks);
    fig.append(axis);

    const rows = [[{ name: run.subtype, start_time_ns: runStart * 1e6, end_time_ns: (runStart + total) * 1e6,
                     status: run.status,
                     attributes: {}, span_id: run.span_id, root: true }, 0], ...ordered(run, spans)];
    const list = el("ol", { class: "tl-rows", "aria-label": "Spans" });
    for (const [span, depth] of rows) {
      const off = span.start_time_ns / 1e6 - runStart;
      const dur = span.root ? (run.duration_ms ?? total) : durMs(span);
      const [label, cls] = span.root ? [run.status, run.status === "ok" ? "ok" : run.status === "running" ? "running" : run.status === "failed" ? "failed" : "unset"]
        : spanStatus(span.status);
      const bar = el("span", { class: "tl-bar " + cls });
      bar.style.left = pct(off) + "%";
      bar.style.width = `max(2px, ${pct(dur === null ? total - off : dur)}%)`;
      const durText = el("span", { class: "tl-dur num", text: dur === null ? "…" : fmtDuration(dur) });
      const track = el("div", { class: "tl-track" }, bar);
      const name = el("span", { class: "tl-name", text: span.name });
      name.style.paddingLeft = (depth * 12) + "px";
      const button = el("button", { type: "button", class: "tl-row", title: attrText(span),
                                    "aria-expanded": "false" },
                            el("span", { class: "tl-label" }, name, el("span", { class: "tl-status " + cls, text: label }), durText,
                               el("span", { class: "sr-only", text: `, starts at +${fmtDuration(Math.max(0, off))}` })), track);
      const li = el("li", { "data-span": span.name, "data-status": cls }, button);
      const attrs = Object.entries(span.attributes || {}).filter(([k]) => k !== "run.id");
      if (!span.root && (attrs.length || span.status_description || (span.events || []).length)) {
        const more = el("div", { class: "tl-attrs", hidden: true });
        if (span.status_description) more.append(el("p", { text: "status: " + span.status_description }));
        if (attrs.length) more.append(window.OtelRuns.kv(Object.fromEntries(attrs)));
        for (const ev of span.events || []) {
          more.append(el("p", { text: `event ${ev.name} at +${fmtDuration(ev.time_ns / 1e6 - runStart)}` }));
        }
        li.append(more);
        button.addEventListener("click", () => {
          more.hidden = !more.hidden;
          button.setAttribute("aria-expanded", String(!more.hidden));
        });
      } else {
        button.removeAttribute("aria-expanded");
      }
      list.append(li);
    }
    fig.append(list);
    if (!spans.length) fig.append(el("p", { class: "muted", text: "No child spans were recorded in this run." }));
    return fig;
  }

  window.OtelRuns.timeline = timeline;
})();
