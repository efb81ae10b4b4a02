// The experiment page: poll the status endpoint every 2 s, update runs and the chart in place.
(function () {
  "use strict";

  var POLL_MS = 2000;
  var config = document.getElementById("status-config");
  var chartData = JSON.parse(document.getElementById("chart-data").textContent);
  var chart = document.getElementById("ppl-chart");

  function traces(series) {
    return Object.keys(series).map(function (name) {
      var points = series[name];
      return {
        name: name,
        type: "scatter",
        mode: "lines+markers",
        x: points.map(function (p) { return p[0]; }),
        y: points.map(function (p) { return p[1]; }),
        error_y: {
          type: "data",
          symmetric: false,
          array: points.map(function (p) { return p[3] == null ? 0 : p[3] - p[1]; }),
          arrayminus: points.map(function (p) { return p[2] == null ? 0 : p[1] - p[2]; }),
          thickness: 1,
          width: 3
        }
      };
    });
  }

  // Scaling-law limits (T_extra) of fixed-base runs: static per experiment, so they come with the page.
  var LIMIT_COLOR = "#b45309";

  function limitShapes(limits) {
    return limits.map(function (limit) {
      return {
        type: "line", xref: "x", yref: "paper", x0: limit.length, x1: limit.length, y0: 0, y1: 1,
        line: { dash: "dash", width: 1.5, color: LIMIT_COLOR }
      };
    });
  }

  function limitLabels(limits) {
    return limits.map(function (limit) {
      // Written up the line, just left of it, so labels of nearby limits and the plot edge never collide.
      return {
        x: Math.log10(limit.length), xref: "x", yref: "paper", y: 1, yanchor: "top", xanchor: "right",
        textangle: -90, showarrow: false, bgcolor: "rgba(255,255,255,0.8)",
        text: limit.name + ": T<sub>extra</sub> ≈ " + Math.round(limit.length).toLocaleString(),
        font: { size: 11, color: LIMIT_COLOR }
      };
    });
  }

  function layout(original) {
    var limits = chartData.limits || [];
    return {
      margin: { t: 20, r: 20, b: 50, l: 60 },
      xaxis: { title: { text: "context length (tokens)" }, type: "log" },
      yaxis: { title: { text: "perplexity" }, type: "log" },
      legend: { orientation: "h", y: -0.2 },
      shapes: (original ? [{
        type: "line", xref: "x", yref: "paper", x0: original, x1: original, y0: 0, y1: 1,
        line: { dash: "dot", width: 2, color: "#6b7280" }
      }] : []).concat(limitShapes(limits)),
      annotations: (original ? [{
        x: Math.log10(original), xref: "x", yref: "paper", y: 1, yanchor: "bottom", showarrow: false,
        text: "original context " + original, font: { size: 11, color: "#6b7280" }
      }] : []).concat(limitLabels(limits))
    };
  }

  function draw(series, original) {
    if (typeof Plotly === "undefined" || !chart) {
      return;
    }
    Plotly.react(chart, traces(series), layout(original), { displaylogo: false, responsive: true });
  }

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
        draw(payload.series, payload.original_context);
        window.ContextLabEvaluations.draw(payload.charts, payload.original_context, payload.protocols);
        if (payload.active) {
          window.setTimeout(poll, POLL_MS);
        }
      })
      .catch(function () { window.setTimeout(poll, POLL_MS * 3); });
  }

  document.querySelectorAll("[data-role='log']").forEach(function (log) { log.scrollTop = log.scrollHeight; });
  draw(chartData.series, chartData.original_context);
  window.ContextLabEvaluations.draw(chartData.charts, chartData.original_context, chartData.protocols);
  if (config && config.dataset.active === "1") {
    window.setTimeout(poll, POLL_MS);
  }
})();
