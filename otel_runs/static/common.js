/* Shared helpers of the runs pages (served at /runs/assets/common.js): window.OtelRuns. */
"use strict";
(function () {
  const configNode = document.getElementById("otel-runs-config");
  let served = {};
  try { served = JSON.parse(configNode ? configNode.textContent : "{}") || {}; } catch (e) { served = {}; }
  const CONFIG = Object.assign({ api: "/api", traceUrl: null, types: [], statuses: [] }, served);
  if (!CONFIG.page) CONFIG.page = CONFIG.api.replace(/\/api$/, "") + "/runs";

  /** An element with attributes ("class", "text" and plain ones) and children. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v; else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) if (c !== null && c !== undefined && c !== false) node.append(c);
    return node;
  }

  /** An SVG element with attributes. */
  function svg(tag, attrs, ...children) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined) continue;
      if (k === "text") node.textContent = v; else node.setAttribute(k, String(v));
    }
    for (const c of children) if (c) node.append(c);
    return node;
  }

  /** ms since the epoch (with the microseconds of the ISO text as a fraction), or null. */
  function parseTime(iso) {
    if (!iso) return null;
    const t = Date.parse(iso);
    if (Number.isNaN(t)) return null;
    const m = /\.(\d{3})(\d{1,3})/.exec(iso);
    return m ? t + Number(m[2].padEnd(3, "0")) / 1000 : t;
  }

  function pad(n, w) { return String(n).padStart(w || 2, "0"); }

  /** Local time "2026-12-02 10:15:00" (the page's time zone). */
  function localTime(ms) {
    const d = new Date(ms);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
           `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  /** A <time>: local time shown, UTC on hover. */
  function timeEl(iso, text) {
    const ms = parseTime(iso);
    if (ms === null) return el("span", { text: "—" });
    return el("time", { datetime: iso, title: "UTC " + iso.replace("T", " ").replace("Z", ""),
                        text: text || localTime(ms) });
  }

  function relTime(ms) {
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 5) return "just now";
    if (s < 60) return s + "s ago";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    if (s < 86400) return Math.floor(s / 3600) + " h ago";
    return Math.floor(s / 86400) + " d ago";
  }

  /** "0.42 ms", "7.5 ms", "120 ms", "2.31 s", "3 min 4 s", "2 h 5 min". */
  function fmtDuration(ms) {
    if (ms === null || ms === undefined || Number.isNaN(ms)) return "";
    if (ms < 0.01) return "<0.01 ms";
    if (ms < 1) return ms.toFixed(2) + " ms";
    if (ms < 10) return ms.toFixed(1) + " ms";
    if (ms < 1000) return Math.round(ms) + " ms";
    const s = ms / 1000;
    if (s < 60) return s.toFixed(s < 10 ? 2 : 1) + " s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + " min " + Math.round(s - m * 60) + " s";
    return Math.floor(m / 60) + " h " + (m % 60) + " min";
  }

  /** "+1.25 s" offset from a start. */
  function fmtOffset(ms) { return ms === null ? "" : "+" + fmtDuration(Math.max(0, ms)).replace("<0.01 ms", "0 ms"); }

  function elapsed(run) {
    if (run.status === "running") {
      const t = parseTime(run.started_at);
      return t === null ? "" : fmtDuration(Math.max(0, Date.now() - t));
    }
    return fmtDuration(run.duration_ms);
  }

  class HttpError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function getJSON(url) {
    const resp = await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" });
    let data = null;
    try { data = await resp.json(); } catch (e) { data = null; }
    if (!resp.ok) throw new HttpError(resp.status, (data && data.error) || `HTTP ${resp.status}`);
    return data;
  }

  function runHref(runId) { return `${CONFIG.page}/${encodeURIComponent(runId)}`; }

  function traceHref(run) {
    return run.trace_url || (CONFIG.traceUrl && run.trace_id
      ? CONFIG.traceUrl.replace("{trace_id}", run.trace_id) : null);
  }

  const SPAN_STATUS = { OK: ["ok", "ok"], ERROR: ["error", "failed"], UNSET: ["done", "unset"] };
  /** [label, css class] of an OpenTelemetry span status. */
  function spanStatus(code) { return SPAN_STATUS[code] || [String(code || "").toLowerCase(), "unset"]; }

  const SGR_FG = { 30: "black", 31: "red", 32: "green", 33: "yellow", 34: "blue", 35: "magenta",
                   36: "cyan", 37: "white", 90: "gray", 91: "red", 92: "green", 93: "yellow",
                   94: "blue", 95: "magenta", 96: "cyan", 97: "white" };

  /** Text with ANSI SGR escapes as text nodes and <span class="sgr-..."> (never HTML). */
  function ansi(text) {
    const frag = document.createDocumentFragment();
    const re = /\x1b\[([0-9;]*)m/g;
    let last = 0, classes = [], m;
    const push = (s) => {
      if (!s) return;
      frag.append(classes.length ? el("span", { class: classes.join(" "), text: s }) : document.createTextNode(s));
    };
    while ((m = re.exec(text)) !== null) {
      push(text.slice(last, m.index));
      last = re.lastIndex;
      for (const code of (m[1] || "0").split(";").map(Number)) {
        if (code === 0) classes = [];
        else if (code === 1) classes.push("sgr-bold");
        else if (code === 3) classes.push("sgr-italic");
        else if (code === 4) classes.push("sgr-underline");
        else if (code === 39) classes = classes.filter((c) => !c.startsWith("sgr-fg-"));
        else if (SGR_FG[code]) { classes = classes.filter((c) => !c.startsWith("sgr-fg-")); classes.push("sgr-fg-" + SGR_FG[code]); }
      }
    }
    // Other escape sequences (cursor moves...) are dropped.
    push(text.slice(last).replace(/\x1b\[[0-9;?]*[A-Za-z]/g, ""));
    return frag;
  }

  /** A <dl> of an object's keys and values (objects as JSON). */
  function kv(obj) {
    const dl = el("dl");
    for (const [k, v] of Object.entries(obj || {})) {
      dl.append(el("dt", { text: k }), el("dd", { text: typeof v === "string" ? v : JSON.stringify(v) }));
    }
    return dl;
  }

  window.OtelRuns = { CONFIG, el, svg, parseTime, localTime, timeEl, relTime, fmtDuration, fmtOffset,
                      elapsed, getJSON, HttpError, runHref, traceHref, spanStatus, ansi, kv };
})();
