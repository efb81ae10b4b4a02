// Charts for every evaluation on the experiment page; redrawn in place by each status poll.
window.ContextLabEvaluations = (function () {
  "use strict";

  var CONFIG = { displaylogo: false, responsive: true };
  var ORIGINAL_COLOR = "#6b7280";

  function originalLine(original) {
    return original ? [{
      type: "line", xref: "x", yref: "paper", x0: original, x1: original, y0: 0, y1: 1,
      line: { dash: "dot", width: 2, color: ORIGINAL_COLOR }
    }] : [];
  }

  function lineTraces(series, options) {
    options = options || {};
    return Object.keys(series || {}).map(function (name) {
      var points = series[name];
      var trace = {
        name: (options.prefix || "") + name, type: "scatter", mode: options.mode || "lines+markers",
        x: points.map(function (p) { return p[0]; }),
        y: points.map(function (p) { return p[1] * (options.scale || 1); })
      };
      if (options.dash) { trace.line = { dash: options.dash }; }
      if (!options.noErrors) {
        trace.error_y = {
          type: "data", symmetric: false, thickness: 1, width: 3,
          array: points.map(function (p) { return p[3] == null ? 0 : (p[3] - p[1]) * (options.scale || 1); }),
          arrayminus: points.map(function (p) { return p[2] == null ? 0 : (p[1] - p[2]) * (options.scale || 1); })
        };
      }
      return trace;
    });
  }

  function lineLayout(yTitle, original, yOptions) {
    return {
      margin: { t: 20, r: 20, b: 50, l: 60 },
      xaxis: { title: { text: "context length (tokens)" }, type: "log" },
      yaxis: Object.assign({ title: { text: yTitle } }, yOptions || {}),
      legend: { orientation: "h", y: -0.25 },
      shapes: originalLine(original)
    };
  }

  function plot(id, traces, layout) {
    var element = document.getElementById(id);
    if (!element || typeof Plotly === "undefined") { return; }
    Plotly.react(element, traces, layout, CONFIG);
  }

  function heatmaps(grids, original) {
    var container = document.getElementById("needle-grid");
    if (!container || typeof Plotly === "undefined") { return; }
    grids.forEach(function (grid, index) {
      var id = "needle-heatmap-" + index;
      var cell = document.getElementById(id);
      if (!cell) {
        cell = document.createElement("div");
        cell.id = id;
        cell.className = "chart";
        cell.setAttribute("data-method", grid.name);
        container.appendChild(cell);
      }
      var labels = grid.lengths.map(String);
      var originalIndex = grid.lengths.filter(function (n) { return n <= original; }).length - 0.5;
      Plotly.react(cell, [{
        type: "heatmap", x: labels, y: grid.depths, z: grid.exact, customdata: grid.partial,
        zmin: 0, zmax: 1, colorscale: [[0, "#b91c1c"], [0.5, "#facc15"], [1, "#15803d"]], showscale: index === grids.length - 1,
        hovertemplate: "length %{x}<br>depth %{y}<br>exact %{z:.2f}<br>partial %{customdata:.2f}<extra></extra>"
      }], {
        title: { text: grid.name, font: { size: 13 } },
        margin: { t: 40, r: 10, b: 50, l: 50 },
        xaxis: { title: { text: "context length" }, type: "category" },
        yaxis: { title: { text: "depth" }, autorange: "reversed" },
        shapes: original && originalIndex > -0.5 && originalIndex < grid.lengths.length - 0.5 ? [{
          type: "line", xref: "x", yref: "paper", x0: originalIndex, x1: originalIndex, y0: 0, y1: 1,
          line: { dash: "dot", width: 2, color: "#111827" }
        }] : []
      }, CONFIG);
    });
  }

  function fixed(value, digits) {
    return value == null ? "—" : Number(value).toFixed(digits);
  }

  function retentionTable(rows) {
    var body = document.querySelector("#retention-table tbody");
    if (!body) { return; }
    body.textContent = "";
    rows.forEach(function (row) {
      var tr = document.createElement("tr");
      tr.setAttribute("data-method", row.name);
      [row.name, row.length, fixed(row.short_perplexity, 2), fixed(row.short_perplexity_base, 2),
       fixed(row.retention_perplexity, 3), fixed(row.short_passkey, 2), fixed(row.short_passkey_base, 2),
       fixed(row.retention_passkey, 3)].forEach(function (text) {
        var td = document.createElement("td");
        td.textContent = text == null ? "—" : String(text);
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
  }

  function searchCharts(searches) {
    if (!searches || !searches.length) { return; }
    var fitness = [];
    searches.forEach(function (run) {
      fitness.push({ name: run.name + " best", type: "scatter", mode: "lines+markers", x: run.generations, y: run.best });
      fitness.push({ name: run.name + " median", type: "scatter", mode: "lines", x: run.generations, y: run.median,
                     line: { dash: "dash" } });
    });
    plot("search-fitness-chart", fitness, {
      margin: { t: 20, r: 20, b: 50, l: 60 }, legend: { orientation: "h", y: -0.25 },
      xaxis: { title: { text: "generation" }, dtick: 1 }, yaxis: { title: { text: "fitness (lower is better)" } }
    });
    var curves = searches.map(function (run) {
      return { name: run.name + " (generation " + run.factors_generation + ")", type: "scatter",
               mode: "lines+markers", x: run.factors.map(function (_, i) { return i; }), y: run.factors };
    });
    var shapes = searches.filter(function (run) { return run.critical_dim; }).map(function (run) {
      return { type: "line", xref: "x", yref: "paper", x0: run.critical_dim - 0.5, x1: run.critical_dim - 0.5,
               y0: 0, y1: 1, line: { dash: "dash", width: 1.5, color: "#7c3aed" } };
    });
    plot("search-factors-chart", curves, {
      margin: { t: 20, r: 20, b: 50, l: 60 }, legend: { orientation: "h", y: -0.25 }, shapes: shapes,
      xaxis: { title: { text: "RoPE dimension pair" } }, yaxis: { title: { text: "rescale factor λ" } }
    });
  }

  function draw(charts, original) {
    if (!charts) { return; }
    searchCharts(charts.search);
    plot("train-loss-chart", Object.keys(charts.train_loss || {}).map(function (name) {
      var points = charts.train_loss[name];
      return { name: name, type: "scatter", mode: "lines",
               x: points.map(function (p) { return p[0]; }), y: points.map(function (p) { return p[1]; }) };
    }), { margin: { t: 20, r: 20, b: 50, l: 60 }, legend: { orientation: "h", y: -0.25 },
          xaxis: { title: { text: "step" } }, yaxis: { title: { text: "loss (nats)" } } });
    var s = charts.series;
    plot("passkey-chart", lineTraces(s.passkey), lineLayout("passkey accuracy", original, { range: [-0.05, 1.05] }));
    heatmaps(charts.needle, original);
    plot("needle-ppl-chart", lineTraces(s.needle_perplexity), lineLayout("answer perplexity", original, { type: "log" }));
    retentionTable(charts.retention);
    plot("time-chart", lineTraces(s.forward_seconds, { noErrors: true }),
         lineLayout("prefill seconds", original, { type: "log" }));
    var memory = lineTraces(s.kv_cache_mb, { noErrors: true, mode: "markers", prefix: "KV cache: " })
      .concat(lineTraces(s.kv_cache_mb_predicted, { noErrors: true, mode: "lines", dash: "dash",
                                                    prefix: "predicted: " }))
      .concat(lineTraces(s.peak_memory_mb, { noErrors: true, prefix: "peak: " }));
    plot("memory-chart", memory, lineLayout("MiB", original, { type: "log" }));
  }

  return { draw: draw };
})();
