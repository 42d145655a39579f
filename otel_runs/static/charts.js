/* The list's pictures, inline SVG: runs over time (stacked by status), durations per subtype. */
"use strict";
(function () {
  const { el, svg, parseTime, fmtDuration, localTime } = window.OtelRuns;
  const ORDER = ["ok", "failed", "cancelled", "interrupted", "running"];
  const H = 130, PAD_L = 26, PAD_B = 18, BUCKETS = 30;

  /** Bars of runs per time bucket, stacked by status, drawn ``width`` px wide: from the
   *  server's ``histogram`` of the whole ledger for the current filter when given (only
   *  ``status`` kept when set), else from the runs given. */
  function runsOverTime(runs, width, histogram, status) {
    const W = Math.max(260, Math.min(1200, Math.round(width || 420)));
    const box = el("figure", { class: "chart", id: "chart-runs" },
      el("figcaption", { text: "Runs over time" }));
    let lo, hi, step, counts, total = 0;
    if (histogram && histogram.buckets && histogram.buckets.length) {
      counts = histogram.buckets.map((b) => (status ? { [status]: b[status] || 0 } : b));
      counts.forEach((c) => { total += Object.values(c).reduce((a, b) => a + b, 0); });
      lo = histogram.start_ms; step = histogram.step_ms; hi = lo + step * counts.length;
      box.dataset.source = "server";
    } else {
      const times = runs.map((r) => parseTime(r.started_at)).filter((t) => t !== null);
      if (times.length < 2) { box.append(el("p", { class: "muted", text: "Not enough runs to draw." })); return box; }
      lo = Math.min(...times); hi = Math.max(...times) + 1;
      step = (hi - lo) / BUCKETS;
      counts = Array.from({ length: BUCKETS }, () => ({}));
      for (const r of runs) {
        const t = parseTime(r.started_at);
        if (t === null) continue;
        const b = counts[Math.min(BUCKETS - 1, Math.floor((t - lo) / step))];
        b[r.status] = (b[r.status] || 0) + 1;
        total += 1;
      }
      box.dataset.source = "loaded";
    }
    if (!total) { box.append(el("p", { class: "muted", text: "No runs to draw." })); return box; }
    box.dataset.total = String(total);
    const n = counts.length;
    const max = Math.max(1, ...counts.map((c) => Object.values(c).reduce((a, b) => a + b, 0)));
    const bw = (W - PAD_L) / n, ih = H - PAD_B - 4;
    // Axis labels as precise as the span needs: seconds within an hour, else minutes, else days.
    const label = (ms) => (hi - lo < 3600e3 ? localTime(ms).slice(11) : hi - lo < 2 * 86400e3
      ? localTime(ms).slice(5, 16) : localTime(ms).slice(0, 10));
    const g = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", class: "chart-svg",
                           "aria-label": `Runs over time: ${total} runs from ${localTime(lo)} to ${localTime(hi)}` });
    g.append(svg("text", { x: PAD_L - 4, y: 12, class: "axis", "text-anchor": "end", text: String(max) }),
             svg("text", { x: PAD_L - 4, y: ih + 4, class: "axis", "text-anchor": "end", text: "0" }),
             svg("line", { x1: PAD_L, y1: ih + 4, x2: W, y2: ih + 4, class: "axis-line" }),
             svg("text", { x: PAD_L, y: H - 4, class: "axis", text: label(lo) }),
             svg("text", { x: W, y: H - 4, class: "axis", "text-anchor": "end", text: label(hi) }));
    counts.forEach((c, i) => {
      let y = ih + 4;
      const from = label(lo + i * step);
      for (const s of ORDER) {
        if (!c[s]) continue;
        const h = (c[s] / max) * ih;
        y -= h;
        g.append(svg("rect", { x: PAD_L + i * bw + 1, y, width: Math.max(1, bw - 2), height: h, class: "bar " + s },
                     svg("title", { text: `${from}: ${c[s]} ${s}` })));
      }
    });
    box.append(g, legend());
    return box;
  }

  function legend() {
    return el("ul", { class: "legend" }, ...ORDER.map((s) => el("li", {}, el("span", { class: "swatch " + s }), s)));
  }

  /** Per subtype (the most frequent few), a line of durations, oldest to newest. */
  function durationTrends(runs, most) {
    const by = new Map();
    for (const r of runs) {
      if (r.duration_ms === null || r.duration_ms === undefined) continue;
      if (!by.has(r.subtype)) by.set(r.subtype, []);
      by.get(r.subtype).push(r);
    }
    const box = el("figure", { class: "chart", id: "chart-durations" },
      el("figcaption", { text: "Duration per subtype" }));
    const top = [...by.entries()].sort((a, b) => b[1].length - a[1].length).slice(0, most || 6);
    if (!top.length) { box.append(el("p", { class: "muted", text: "No finished runs to draw." })); return box; }
    const list = el("ul", { class: "trends" });
    for (const [subtype, items] of top) {
      const pts = items.slice().sort((a, b) => (a.run_id < b.run_id ? -1 : 1)).slice(-60);
      const ds = pts.map((r) => r.duration_ms);
      const max = Math.max(...ds), min = Math.min(...ds);
      const sw = 160, sh = 28;
      const x = (i) => (pts.length === 1 ? sw / 2 : (i / (pts.length - 1)) * (sw - 4) + 2);
      const y = (d) => sh - 3 - (max === min ? 0.5 : (d - min) / (max - min)) * (sh - 6);
      const line = svg("polyline", { points: ds.map((d, i) => `${x(i).toFixed(1)},${y(d).toFixed(1)}`).join(" "), class: "trend-line" });
      const g = svg("svg", { viewBox: `0 0 ${sw} ${sh}`, class: "spark", role: "img",
                             "aria-label": `${subtype}: ${pts.length} runs, ${fmtDuration(min)} to ${fmtDuration(max)}` }, line);
      pts.forEach((r, i) => { if (r.status === "failed") g.append(svg("circle", { cx: x(i), cy: y(r.duration_ms), r: 2.5, class: "dot failed" }, svg("title", { text: `failed · ${fmtDuration(r.duration_ms)}` }))); });
      const last = ds[ds.length - 1];
      list.append(el("li", {}, el("span", { class: "mono trend-name", text: subtype }), g,
                     el("span", { class: "num muted", text: `last ${fmtDuration(last)} · max ${fmtDuration(max)}` })));
    }
    box.append(list);
    return box;
  }

  window.OtelRuns.charts = { runsOverTime, durationTrends };
})();
