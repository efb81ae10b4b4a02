// The model page's #model-wavelengths chart: wavelength per rotary pair (log scale), the original
// context as a horizontal line, the critical dimension as a vertical one, and, for a checkpoint that
// ships its own scaling, the wavelengths as shipped. The numbers come from the server
// (experiments/rope_charts.py model_chart, which asks gpu_workers.rope_theory); this file only draws.
(function () {
  "use strict";

  var GREY = "#6b7280";
  var CRITICAL = "#7c3aed";
  var CONFIG = { displaylogo: false, responsive: true };

  function readJson(id) {
    var node = document.getElementById(id);
    return node ? JSON.parse(node.textContent) : null;
  }

  // Decade ticks labelled in tokens, so the log axis reads 10, 100, 1,000 rather than 1e+3.
  function decadeTicks(values) {
    var finite = values.filter(function (v) { return v > 0 && isFinite(v); });
    var low = Math.floor(Math.log10(Math.min.apply(null, finite)));
    var high = Math.ceil(Math.log10(Math.max.apply(null, finite)));
    var ticks = [];
    for (var e = low; e <= high; e++) { ticks.push(Math.pow(10, e)); }
    return { tickmode: "array", tickvals: ticks, ticktext: ticks.map(function (t) { return t.toLocaleString(); }) };
  }

  function draw(node, data) {
    var axes = data.axes;
    var shipped = data.shipped && data.shipped.wavelengths && data.shipped.wavelengths.length ? data.shipped : null;
    var traces = [{
      name: shipped ? "plain RoPE at θ, 2π·θ^(2i/d)" : "wavelength 2π·θ^(2i/d)",
      x: axes.pairs, y: axes.wavelengths, type: "scatter", mode: "lines+markers",
      line: shipped ? { dash: "dot", color: GREY } : { width: 3, color: "#2f6fde" }, marker: { size: 5 }
    }];
    if (shipped) {
      traces.push({
        name: "as shipped (" + shipped.rope_type + ")", x: axes.pairs, y: shipped.wavelengths, type: "scatter",
        mode: "lines+markers", line: { width: 3, color: "#2f6fde" }, marker: { size: 5 }
      });
    }
    // Between the last pair that turned through a full period within the original context and the first
    // that did not: d_extra / 2 − 0.5 on the pair axis.
    var criticalX = axes.critical_pair - 0.5;
    var all = axes.wavelengths.concat(shipped ? shipped.wavelengths : [], [axes.original_context]);
    Plotly.react(node, traces, {
      margin: { t: 30, r: 30, b: 60, l: 80 },
      xaxis: {
        title: { text: "RoPE pair index i (dimensions 2i, 2i+1)" },
        dtick: axes.pairs.length <= 32 ? 1 : undefined, zeroline: false,
        range: [-0.5, axes.pairs.length - 0.5]
      },
      yaxis: Object.assign({ title: { text: "wavelength (tokens)" }, type: "log" }, decadeTicks(all)),
      legend: { orientation: "h", y: -0.22 },
      shapes: [
        {
          type: "line", xref: "paper", x0: 0, x1: 1, yref: "y", y0: axes.original_context, y1: axes.original_context,
          line: { dash: "dot", width: 1.5, color: GREY }
        },
        {
          type: "line", xref: "x", x0: criticalX, x1: criticalX, yref: "paper", y0: 0, y1: 1,
          line: { dash: "dash", width: 1.5, color: CRITICAL }
        }
      ],
      annotations: [
        {
          x: 0, xref: "paper", xanchor: "left", y: Math.log10(axes.original_context), yref: "y", yanchor: "bottom",
          showarrow: false, text: "original context " + axes.original_context, font: { size: 11, color: GREY }
        },
        {
          x: criticalX, xref: "x", y: 1, yref: "paper", yanchor: "bottom", showarrow: false,
          text: "critical dimension d<sub>extra</sub> = " + axes.critical_dimension, font: { size: 11, color: CRITICAL }
        }
      ]
    }, CONFIG);
  }

  if (typeof Plotly === "undefined") {
    return;
  }
  var node = document.getElementById("model-wavelengths");
  var data = readJson("model-wavelengths-data");
  if (node && data && data.axes) {
    draw(node, data);
  }
})();
