/* The demo control plane's buttons (served at /demo/static/demo.js). */
(function () {
  "use strict";
  const log = document.getElementById("log");
  function line(html) {
    const li = document.createElement("li");
    li.innerHTML = html;
    log.insertBefore(li, log.firstChild);
    while (log.children.length > 60) log.removeChild(log.lastChild);
    return li;
  }
  function esc(s) {
    return String(s == null ? "" : s).replace(/[&<>"]/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));
  }
  async function call(btn) {
    const seg = document.getElementById("segment").value.trim() || "docs";
    const path = btn.dataset.route.replace("<name>", encodeURIComponent(
      btn.dataset.route.includes("builders") ? (seg === "docs" ? "mkdocs" : seg) : seg));
    const body = {passphrase: document.getElementById("passphrase").value,
                  fail: document.getElementById("fail").checked};
    btn.setAttribute("aria-busy", "true");
    const li = line('<span class="st running">running</span> ' + esc(btn.textContent) + " <code>POST " + esc(path) + "</code>");
    try {
      // Same-origin JSON with the header the server asks of requests without Origin.
      const resp = await fetch(path, {method: "POST", credentials: "same-origin",
                                      headers: {"Content-Type": "application/json", "X-Otel-Runs-CSRF": "1"},
                                      body: JSON.stringify(body)});
      const runId = resp.headers.get("X-Run-Id") || "";
      if ((resp.headers.get("Content-Type") || "").startsWith("text/event-stream")) {
        const reader = resp.body.getReader();
        const dec = new TextDecoder();
        let text = "", failed = false;
        for (;;) {
          const {value, done} = await reader.read();
          if (done) break;
          text += dec.decode(value, {stream: true});
          failed = failed || text.includes("event: error");
          const steps = (text.match(/^data: .*$/gm) || []).length;
          li.innerHTML = '<span class="st running">streaming</span> ' + esc(btn.textContent) + " — " + steps + " chunk(s) <code>" + esc(runId) + "</code>";
        }
        const st = failed ? "failed" : "ok";
        li.innerHTML = '<span class="st ' + st + '">' + st + "</span> " + esc(btn.textContent) + " (streamed) <code>" + esc(runId) + "</code>";
      } else {
        const data = await resp.json().catch(() => ({}));
        const st = resp.ok && data.ok !== false ? "ok" : "failed";
        li.innerHTML = '<span class="st ' + st + '">' + st + "</span> " + esc(data.summary || resp.status) + " <code>" + esc(runId) + "</code>";
      }
    } catch (err) {
      li.innerHTML = '<span class="st failed">error</span> ' + esc(err);
    } finally {
      btn.removeAttribute("aria-busy");
    }
  }
  document.querySelectorAll("button[data-route]").forEach(b => b.addEventListener("click", () => call(b)));
})();
