// The experiment page: poll the status endpoint every 2 s, update the run rows in place and hand each payload to
// evaluation_charts.js (window.ContextLabCharts), which draws every chart, perplexity by length included.
(function () {
  "use strict";

  var POLL_MS = 2000;
  var config = document.getElementById("status-config");
  var chartData = JSON.parse(document.getElementById("chart-data").textContent);
  // Scaling-law limits (T_extra) of fixed-base runs: static per experiment, so they come with the page only.
  var chartOptions = { limits: chartData.limits || [] };

  function updateRun(run) {
    var row = document.querySelector("tr[data-run='" + run.id + "']");
    if (!row) {
      return false;
    }
    var badge = row.querySelector("[data-role='status']");
    badge.className = "badge status-" + run.status;
    badge.textContent = run.status_label;
    row.querySelector("[data-role='bar']").style.width = Math.round(run.progress * 100) + "%";
    row.querySelector("[data-role='progress-message']").textContent = run.progress_message;
    var log = row.querySelector("[data-role='log']");
    log.textContent = run.log.join("\n");
    log.scrollTop = log.scrollHeight;
    row.querySelector("[data-role='attempt']").textContent = run.attempt;
    var error = row.querySelector("[data-role='error']");
    error.textContent = run.error;
    error.hidden = !run.error;
    row.querySelector("[data-role='cancel-requested']").hidden = !(run.cancel_requested && run.can_cancel);
    var cancel = row.querySelector("[data-role='cancel']");
    if (cancel) { cancel.hidden = !run.can_cancel; }
    var retry = row.querySelector("[data-role='retry']");
    if (retry) { retry.hidden = !run.can_retry; }
    var produced = row.querySelector("[data-role='produced']");
    if (produced && run.produced_method) {
      produced.href = run.produced_method.url;
      produced.hidden = false;
    }
    var exportForm = row.querySelector("[data-role='export']");
    if (exportForm) { exportForm.hidden = run.status !== "succeeded"; }
    return true;
  }

  function poll() {
    fetch(config.dataset.url, { headers: { "Accept": "application/json" }, credentials: "same-origin" })
      .then(function (response) {
        if (!response.ok) { throw new Error("status " + response.status); }
        return response.json();
      })
      .then(function (payload) {
        var known = payload.runs.every(updateRun);
        if (!known) {
          window.location.reload();  // a run was retried elsewhere: its id changed
          return;
        }
        window.ContextLabCharts.drawAll(payload, chartOptions);
        if (payload.active) {
          window.setTimeout(poll, POLL_MS);
        }
      })
      .catch(function () { window.setTimeout(poll, POLL_MS * 3); });
  }

  document.querySelectorAll("[data-role='log']").forEach(function (log) { log.scrollTop = log.scrollHeight; });
  window.ContextLabCharts.drawAll(chartData, chartOptions);
  if (config && config.dataset.active === "1") {
    window.setTimeout(poll, POLL_MS);
  }
})();
