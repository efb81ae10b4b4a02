// The pivot leaderboard's chart: one line per configuration over context length (the table's own numbers).
(function () {
  "use strict";
  var holder = document.getElementById("pivot-chart");
  var data = JSON.parse(document.getElementById("pivot-chart-data").textContent);
  if (!holder || typeof Plotly === "undefined") { return; }
  Plotly.newPlot(holder, data.traces, {
    margin: { t: 20, r: 10, b: 50, l: 60 },
    xaxis: { title: { text: "context length (tokens)" }, type: "log" },
    yaxis: { title: { text: data.metric }, type: data.log_y ? "log" : "linear" },
    legend: { orientation: "h" },
  }, { displaylogo: false, responsive: true });
})();
