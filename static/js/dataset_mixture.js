// The dataset page: token share per source and the token-weighted length histogram, before vs after.
(function () {
  "use strict";
  var holder = document.getElementById("mixture-data");
  if (!holder || typeof Plotly === "undefined") { return; }
  var mixture = JSON.parse(holder.textContent);
  var sources = Object.keys(mixture.before.sources);
  var config = { displaylogo: false, responsive: true };

  function share(stats, label) {
    return {
      name: label, type: "bar", x: sources,
      y: sources.map(function (s) { return stats.sources[s] ? stats.sources[s].token_share : 0; })
    };
  }
  Plotly.react("share-chart", [share(mixture.before, "before"), share(mixture.after, "after")], {
    barmode: "group", margin: { t: 20, r: 20, b: 50, l: 60 }, yaxis: { title: { text: "token share" } },
    legend: { orientation: "h", y: -0.2 }
  }, config);

  var edges = mixture.before.bin_edges;
  var mids = edges.slice(0, -1).map(function (e, i) { return Math.sqrt(Math.max(e, 1) * edges[i + 1]); });
  var traces = [];
  ["before", "after"].forEach(function (when) {
    sources.forEach(function (s) {
      var stats = mixture[when].sources[s];
      if (!stats) { return; }
      var total = stats.tokens || 1;
      traces.push({
        name: s + " " + when, type: "scatter", mode: "lines", line: { shape: "hvh", dash: when === "after" ? "solid" : "dot" },
        x: mids, y: stats.token_counts.map(function (n) { return n / total; })
      });
    });
  });
  Plotly.react("length-chart", traces, {
    margin: { t: 20, r: 20, b: 50, l: 60 }, legend: { orientation: "h", y: -0.25 },
    xaxis: { title: { text: "document length (tokens)" }, type: "log" },
    yaxis: { title: { text: "share of the source's tokens" } },
    shapes: [{ type: "line", xref: "x", yref: "paper", x0: mixture.before.threshold, x1: mixture.before.threshold,
               y0: 0, y1: 1, line: { dash: "dot", width: 2, color: "#6b7280" } }]
  }, config);
})();
