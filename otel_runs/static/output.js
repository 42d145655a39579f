/* A run's output with a live tail (GET /api/runs/<id>/output): OtelRuns.outputPanel. */
"use strict";
(function () {
  const { el, ansi, getJSON, fmtOffset, CONFIG } = window.OtelRuns;
  const POLL_MS = 1000, MAX_LINES = 5000, MAX_POLLS = 3600;

  /** A hidden <section> that shows itself once the run has output; ``stop()`` ends polling. */
  function outputPanel(runId) {
    const base = `${CONFIG.api}/runs/${encodeURIComponent(runId)}/output`;
    const lines = el("ol", { class: "out-lines", tabindex: "0", "aria-label": "Output lines" });
    const status = el("span", { class: "muted out-status", role: "status" });
    const follow = el("button", { type: "button", class: "small", hidden: true, text: "Follow output ↓" });
    const section = el("section", { class: "card output", id: "output", "aria-labelledby": "output-heading", hidden: true },
      el("div", { class: "card-head" }, el("h2", { id: "output-heading", text: "Output" }), status,
         el("a", { href: base + "?format=text&download=1", class: "small", text: "Download raw" }), follow),
      lines);
    let after = null, timer = null, polls = 0, stopped = false, stick = true, count = 0;

    lines.addEventListener("scroll", () => {
      stick = lines.scrollHeight - lines.scrollTop - lines.clientHeight < 24;
      follow.hidden = stick;
    });
    follow.addEventListener("click", () => { stick = true; follow.hidden = true; lines.scrollTop = lines.scrollHeight; });

    function add(items) {
      for (const line of items || []) {
        if (typeof line.n !== "number" || (after !== null && line.n <= after && count)) continue;
        const text = el("span", { class: "out-text" });
        if (line.stream === "log" && line.level) text.append(el("span", { class: "out-level " + String(line.level).toLowerCase(), text: line.level + " " }));
        if (line.stream === "log" && line.logger) text.append(el("span", { class: "muted", text: line.logger + ": " }));
        text.append(ansi(String(line.text ?? "")));
        lines.append(el("li", { class: "out-line " + (line.stream || "out"), "data-n": String(line.n) },
          el("span", { class: "out-n", text: line.stream === "meta" ? "…" : String(line.n + 1), "aria-hidden": "true" }),
          el("span", { class: "out-t", text: typeof line.t === "number" ? fmtOffset(line.t * 1000) : "" }),
          text));
        count++;
        after = Math.max(after ?? -1, line.n);
      }
      while (lines.childElementCount > MAX_LINES) lines.firstElementChild.remove();
      if (count) section.hidden = false;
      if (stick) lines.scrollTop = lines.scrollHeight;
    }

    async function poll() {
      timer = null;
      if (stopped) return;
      let data;
      try {
        data = await getJSON(after === null ? base : `${base}?after=${after}`);
      } catch (err) {
        if (err.status === 404 || err.status === 400) { stop(); section.hidden = !count; return; }
        data = null;  // a transient error: try again
      }
      if (data) {
        add(data.lines);
        if (typeof data.next === "number" && data.next > (after ?? -1)) after = data.next;
        const dropped = data.dropped ? ` · ${data.dropped} lines dropped` : "";
        status.textContent = (data.complete ? `${count} lines` : `${count} lines · live`) + dropped;
        if (data.complete) { stop(); return; }
      }
      if (++polls < MAX_POLLS && !stopped) timer = setTimeout(poll, POLL_MS);
    }

    function stop() { stopped = true; if (timer) clearTimeout(timer); timer = null; }
    poll();
    return { section, stop, add };
  }

  window.OtelRuns.outputPanel = outputPanel;
})();
