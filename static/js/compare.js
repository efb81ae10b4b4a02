// The compare page: every evaluation's chart through evaluation_charts.js (the experiment page's payload, keyed by
// run labels), the perplexity chart, the "Differences only" toggle (kept in the URL) and "Copy link".
(function () {
  "use strict";

  var DIFF_PARAM = "diff";

  // Perplexity by length, as on the experiment page (experiment_detail.js draws it there, beside its poll).
  function perplexity(series, original) {
    var chart = document.getElementById("ppl-chart");
    if (!chart || typeof Plotly === "undefined") { return; }
    var traces = Object.keys(series || {}).map(function (name) {
      var points = series[name];
      return {
        name: name, type: "scatter", mode: "lines+markers",
        x: points.map(function (p) { return p[0]; }),
        y: points.map(function (p) { return p[1]; }),
        error_y: {
          type: "data", symmetric: false, thickness: 1, width: 3,
          array: points.map(function (p) { return p[3] == null ? 0 : p[3] - p[1]; }),
          arrayminus: points.map(function (p) { return p[2] == null ? 0 : p[1] - p[2]; })
        }
      };
    });
    Plotly.react(chart, traces, {
      margin: { t: 20, r: 20, b: 50, l: 60 },
      xaxis: { title: { text: "context length (tokens)" }, type: "log" },
      yaxis: { title: { text: "perplexity" }, type: "log" },
      legend: { orientation: "h", y: -0.2 },
      shapes: original ? [{
        type: "line", xref: "x", yref: "paper", x0: original, x1: original, y0: 0, y1: 1,
        line: { dash: "dot", width: 2, color: "#6b7280" }
      }] : []
    }, { displaylogo: false, responsive: true });
  }

  function shareLink() {
    return window.location.href;
  }

  function syncShareField() {
    var field = document.querySelector("[data-role='share-link']");
    if (field) { field.value = shareLink(); }
  }

  function diffOnly(on) {
    document.querySelectorAll("#compare-params tbody tr[data-differs='0']").forEach(function (row) {
      row.hidden = on;
    });
    // The toggle lives in the URL, so the link shared opens the table the same way.
    if (window.history && window.URL) {
      var url = new URL(window.location.href);
      if (on) { url.searchParams.set(DIFF_PARAM, "1"); } else { url.searchParams.delete(DIFF_PARAM); }
      window.history.replaceState(null, "", url.toString());
    }
    syncShareField();
  }

  var toggle = document.querySelector("[data-role='diff-only']");
  if (toggle) {
    toggle.addEventListener("change", function () { diffOnly(toggle.checked); });
  }

  var copy = document.querySelector("[data-role='copy-link']");
  if (copy) {
    copy.addEventListener("click", function () {
      var field = document.querySelector("[data-role='share-link']");
      var done = function () {
        copy.textContent = "Copied";
        copy.setAttribute("data-copied", "1");
        window.setTimeout(function () { copy.textContent = "Copy link"; }, 2000);
      };
      if (navigator.clipboard && navigator.clipboard.writeText) {
        navigator.clipboard.writeText(shareLink()).then(done, function () {
          if (field) { field.select(); document.execCommand("copy"); done(); }
        });
      } else if (field) {
        field.select();
        document.execCommand("copy");
        done();
      }
    });
  }

  var data = document.getElementById("chart-data");
  if (data) {
    var chartData = JSON.parse(data.textContent);
    perplexity(chartData.series, chartData.original_context);
    if (window.ContextLabEvaluations) {
      window.ContextLabEvaluations.draw(chartData.charts, chartData.original_context, chartData.protocols);
    }
  }
})();
