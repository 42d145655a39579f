/* The page of one run, /runs/<run_id> (served at /runs/assets/run.js). */
"use strict";
(function () {
  const { CONFIG, runView } = window.OtelRuns;
  const runId = CONFIG.runId || decodeURIComponent(location.pathname.split("/").pop());
  // "All runs" goes back to the list as it was filtered (its state is in its URL).
  let list = null;
  try { list = localStorage.getItem("otel-runs:list"); } catch (e) { list = null; }
  const back = document.getElementById("back");
  if (back && list && (list === CONFIG.page || list.startsWith(CONFIG.page + "?"))) back.href = list;
  runView(document.getElementById("run"), runId, { page: true });
})();
