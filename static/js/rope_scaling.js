// Per-dimension RoPE charts: the method page's #scaling-chart, the experiment page's #scaling-compare and
// the model page's #model-wavelengths (wavelength per rotary pair, and as shipped for a scaled checkpoint). The numbers come from the server (experiments/rope_charts.py, which asks
// gpu_workers.rope_theory); this file only draws them.
(function () {
  "use strict";

  var GREY = "#6b7280";
  var CRITICAL = "#7c3aed";
  var CONFIG = { displaylogo: false, responsive: true };

  function readJson(id) {
    var node = document.getElementById(id);
    return node ? JSON.parse(node.textContent) : null;
  }

  function pairAxis(axes) {
    return {
      title: { text: "RoPE pair index i (dimensions 2i, 2i+1)" },
      dtick: axes.pairs.length <= 32 ? 1 : undefined,
      zeroline: false
    };
  }

  // The critical dimension sits between the last pair that turned through a full period within the
  // original context and the first that did not: d_extra / 2 − 0.5 on the pair axis.
  function criticalLine(axes) {
    var x = axes.critical_pair - 0.5;
    return {
      shape: {
        type: "line", xref: "x", yref: "paper", x0: x, x1: x, y0: 0, y1: 1,
        line: { dash: "dash", width: 1.5, color: CRITICAL }
      },
      label: {
        x: x, xref: "x", y: 1, yref: "paper", yanchor: "bottom", showarrow: false,
        text: "critical dimension d<sub>extra</sub> = " + axes.critical_dimension,
        font: { size: 11, color: CRITICAL }
      }
    };
  }

  function horizontalOnWavelengths(value, text, dash, yref) {
    yref = yref || "y2";
    return {
      shape: {
        type: "line", xref: "paper", x0: 0, x1: 1, yref: yref, y0: value, y1: value,
        line: { dash: dash, width: 1.5, color: GREY }
      },
      label: {
        x: 0, xref: "paper", xanchor: "left", y: Math.log10(value), yref: yref, yanchor: "bottom",
        showarrow: false, text: text, font: { size: 11, color: GREY }
      }
    };
  }

  // Decade ticks for the wavelength axis, labelled in tokens (Plotly would otherwise line its ticks up
  // with the scaling axis's gridlines and print values like 479.3202).
  function decadeTicks(values) {
    var finite = values.filter(function (v) { return v > 0 && isFinite(v); });
    var low = Math.floor(Math.log10(Math.min.apply(null, finite)));
    var high = Math.ceil(Math.log10(Math.max.apply(null, finite)));
    var ticks = [];
    for (var e = low; e <= high; e++) { ticks.push(Math.pow(10, e)); }
    return { tickmode: "array", tickvals: ticks, ticktext: ticks.map(function (t) { return t.toLocaleString(); }) };
  }

  function decadeAxis(values) {
    return Object.assign({
      title: { text: "wavelength (tokens)" }, type: "log", overlaying: "y", side: "right", showgrid: false
    }, decadeTicks(values));
  }

  // The model page: wavelength per rotary pair on a log axis, the original context and d_extra marked; for a
  // checkpoint that ships its own scaling, plain RoPE dotted and the wavelengths as shipped in full.
  function drawModel(node, data) {
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
    var critical = criticalLine(axes);
    var original = horizontalOnWavelengths(axes.original_context, "original context " + axes.original_context,
                                           "dot", "y");
    var all = axes.wavelengths.concat(shipped ? shipped.wavelengths : [], [axes.original_context]);
    Plotly.react(node, traces, {
      margin: { t: 30, r: 30, b: 60, l: 80 },
      xaxis: Object.assign(pairAxis(axes), { range: [-0.5, axes.pairs.length - 0.5] }),
      yaxis: Object.assign({ title: { text: "wavelength (tokens)" }, type: "log" }, decadeTicks(all)),
      legend: { orientation: "h", y: -0.22 },
      shapes: [original.shape, critical.shape],
      annotations: [original.label, critical.label]
    }, CONFIG);
  }

  function drawMethod(node, data) {
    var axes = data.axes;
    var curve = data.curve;
    var critical = criticalLine(axes);
    var original = horizontalOnWavelengths(axes.original_context, "original context " + axes.original_context, "dot");
    var marks = [critical, original];
    if (axes.target_length && axes.target_length !== axes.original_context) {
      marks.push(horizontalOnWavelengths(axes.target_length, "target length " + axes.target_length, "longdash"));
    }
    var traces = [
      {
        name: "scaling: original ÷ new frequency", x: axes.pairs, y: curve.scaling, type: "scatter",
        mode: "lines+markers", line: { width: 3, color: "#2f6fde" }
      },
      {
        name: "wavelength 2π·base^(2i/d)", x: axes.pairs, y: axes.wavelengths, yaxis: "y2", type: "scatter",
        mode: "lines", line: { dash: "dot", color: GREY }
      },
      {
        name: "wavelength with the method", x: axes.pairs, y: curve.wavelengths, yaxis: "y2", type: "scatter",
        mode: "lines", line: { dash: "dash", color: "#1f8a4c" }
      }
    ];
    Plotly.react(node, traces, {
      margin: { t: 30, r: 90, b: 60, l: 70 },
      xaxis: pairAxis(axes),
      yaxis: { title: { text: "scaling (original ÷ new inv_freq)" }, type: "log" },
      yaxis2: decadeAxis(axes.wavelengths.concat(curve.wavelengths, [axes.original_context, axes.target_length])),
      legend: { orientation: "h", y: -0.22 },
      shapes: marks.map(function (m) { return m.shape; }),
      annotations: marks.map(function (m) { return m.label; })
    }, CONFIG);
  }

  function drawCompare(node, data) {
    var critical = criticalLine(data.axes);
    var traces = data.curves.filter(function (c) { return !c.error; }).map(function (curve) {
      return {
        name: curve.name + (curve.length_dependent ? " (at " + curve.drawn_at + " tokens)" : ""),
        x: data.axes.pairs, y: curve.scaling, type: "scatter", mode: "lines+markers", marker: { size: 5 }
      };
    });
    Plotly.react(node, traces, {
      margin: { t: 30, r: 20, b: 50, l: 60 },
      xaxis: pairAxis(data.axes),
      yaxis: { title: { text: "original ÷ new frequency" }, type: "log" },
      legend: { orientation: "h", y: -0.3 },
      shapes: [critical.shape],
      annotations: [critical.label]
    }, CONFIG);
  }

  if (typeof Plotly === "undefined") {
    return;
  }
  var single = document.getElementById("scaling-chart");
  var singleData = readJson("scaling-chart-data");
  if (single && singleData && singleData.curve && !singleData.curve.error) {
    drawMethod(single, singleData);
  }
  var compare = document.getElementById("scaling-compare");
  var compareData = readJson("scaling-compare-data");
  if (compare && compareData && compareData.curves) {
    drawCompare(compare, compareData);
  }
  var model = document.getElementById("model-wavelengths");
  var modelData = readJson("model-wavelengths-data");
  if (model && modelData && modelData.axes) {
    drawModel(model, modelData);
  }
})();
