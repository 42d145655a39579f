/* The search box's suggestions from /api/runs/search (a combobox): OtelRuns.autocomplete. */
"use strict";
(function () {
  const { el, getJSON, runHref, relTime, parseTime, CONFIG } = window.OtelRuns;
  const LIMIT = 8, DEBOUNCE_MS = 150;

  /** Wire ``input`` (role=combobox) to ``list`` (role=listbox); ``onInput`` filters the page. */
  function autocomplete(input, list, onInput) {
    let timer = null, active = -1, items = [], asked = 0;

    function close() {
      list.hidden = true; active = -1;
      input.setAttribute("aria-expanded", "false");
      input.removeAttribute("aria-activedescendant");
    }
    function mark() {
      [...list.children].forEach((li, i) => li.setAttribute("aria-selected", String(i === active)));
      if (active >= 0) input.setAttribute("aria-activedescendant", list.children[active].id);
      else input.removeAttribute("aria-activedescendant");
    }
    function show(found) {
      const was = active >= 0 && items[active] ? items[active].run_id : null;
      items = found;
      list.replaceChildren(...found.map((it, i) => {
        const t = parseTime(it.started_at);
        const li = el("li", { id: "suggest-" + i, role: "option", "aria-selected": "false", "data-run-id": it.run_id },
          el("span", { class: "badge " + it.status, text: it.status }), " ",
          el("span", { class: "s-label", text: it.label }), " ",
          el("span", { class: "muted num", text: t === null ? "" : relTime(t) }));
        li.addEventListener("mousedown", (ev) => { ev.preventDefault(); location.href = runHref(it.run_id); });
        return li;
      }));
      if (!found.length) list.replaceChildren(el("li", { class: "muted none", role: "option", "aria-disabled": "true", text: "No run in the ledger matches." }));
      list.hidden = false; active = found.findIndex((it) => it.run_id === was); mark();
      input.setAttribute("aria-expanded", "true");
    }
    async function ask() {
      const q = input.value.replace(/@run:/g, " ").trim();
      if (!q) { close(); return; }
      const mine = ++asked;
      try {
        const data = await getJSON(`${CONFIG.api}/runs/search?q=${encodeURIComponent(q.slice(0, 200))}&limit=${LIMIT}`);
        if (mine === asked && document.activeElement === input) show(data.items || []);
      } catch (e) { if (mine === asked) close(); }
    }
    input.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(ask, DEBOUNCE_MS);
      onInput();
    });
    input.addEventListener("keydown", (ev) => {
      if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
        if (list.hidden) { ask(); return; }
        ev.preventDefault();
        const n = items.length;
        if (!n) return;
        active = ev.key === "ArrowDown" ? (active + 1) % n : (active <= 0 ? n - 1 : active - 1);
        mark();
      } else if (ev.key === "Enter") {
        if (!list.hidden && active >= 0 && items[active]) { ev.preventDefault(); location.href = runHref(items[active].run_id); }
        else { close(); onInput(); }
      } else if (ev.key === "Escape") {
        if (!list.hidden) { ev.preventDefault(); ev.stopPropagation(); close(); }
      }
    });
    input.addEventListener("blur", () => setTimeout(close, 100));
  }

  window.OtelRuns.autocomplete = autocomplete;
})();
