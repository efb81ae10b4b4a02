// The one module that draws every evaluation chart, perplexity by length included, on the experiment page (redrawn
// in place by each status poll: experiment_detail.js) and the compare page (compare.js). Both hand it the payload
// the server builds with experiments.evaluation_charts.build: {charts, protocols, original_context[, limits]}.
//   ContextLabCharts.drawAll(payload, options)  every chart whose element is on the page
//   ContextLabCharts.drawPerplexity(series, original, options)  #ppl-chart only
// options: limits ([{name, length}], scaling-law T_extra lines on #ppl-chart; default payload.limits),
//          originalLabel (false: no "original context N" label above the dotted line; default true).
window.ContextLabCharts = (function () {
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

  // Perplexity by length: scaling-law limits (T_extra) of fixed-base runs as dashed lines, labelled up the line.
  var LIMIT_COLOR = "#b45309";

  function limitShapes(limits) {
    return limits.map(function (limit) {
      return { type: "line", xref: "x", yref: "paper", x0: limit.length, x1: limit.length, y0: 0, y1: 1,
               line: { dash: "dash", width: 1.5, color: LIMIT_COLOR } };
    });
  }

  function limitLabels(limits) {
    // Written up the line, just left of it, so labels of nearby limits and the plot edge never collide.
    return limits.map(function (limit) {
      return { x: Math.log10(limit.length), xref: "x", yref: "paper", y: 1, yanchor: "top", xanchor: "right",
               textangle: -90, showarrow: false, bgcolor: "rgba(255,255,255,0.8)",
               text: limit.name + ": T<sub>extra</sub> ≈ " + Math.round(limit.length).toLocaleString(),
               font: { size: 11, color: LIMIT_COLOR } };
    });
  }

  function drawPerplexity(series, original, options) {
    options = options || {};
    var limits = options.limits || [];
    var layout = lineLayout("perplexity", original, { type: "log" });
    layout.legend.y = -0.2;
    layout.shapes = layout.shapes.concat(limitShapes(limits));
    layout.annotations = (original && options.originalLabel !== false ? [{
      x: Math.log10(original), xref: "x", yref: "paper", y: 1, yanchor: "bottom", showarrow: false,
      text: "original context " + original, font: { size: 11, color: ORIGINAL_COLOR }
    }] : []).concat(limitLabels(limits));
    plot("ppl-chart", lineTraces(series), layout);
  }

  var GRID_COLORS = [[0, "#b91c1c"], [0.5, "#facc15"], [1, "#15803d"]];
  var DIFF_COLORS = [[0, "#b91c1c"], [0.5, "#f9fafb"], [1, "#1d4ed8"]];
  var needleState = { grids: [], original: null };

  function escapeText(text) {
    return String(text).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  }

  function needleMetric() {
    var checked = document.querySelector("input[name='needle-metric']:checked");
    return checked && checked.value === "partial" ? "partial" : "exact";
  }

  // Where the original context falls among a grid's categorical lengths, as a dotted line.
  function originalShape(lengths, original) {
    var at = lengths.filter(function (n) { return n <= original; }).length - 0.5;
    return original && at > -0.5 && at < lengths.length - 0.5 ? [{
      type: "line", xref: "x", yref: "paper", x0: at, x1: at, y0: 0, y1: 1,
      line: { dash: "dot", width: 2, color: "#111827" }
    }] : [];
  }

  function gridLayout(title, lengths, original) {
    return {
      title: { text: title, font: { size: 13 } },
      margin: { t: 50, r: 10, b: 50, l: 50 },
      xaxis: { title: { text: "context length" }, type: "category" },
      yaxis: { title: { text: "depth" }, autorange: "reversed" },
      shapes: originalShape(lengths, original)
    };
  }

  function cellAt(grid, metric, length, depth) {
    var row = grid.depths.indexOf(depth), column = grid.lengths.indexOf(length);
    if (row < 0 || column < 0 || !grid[metric]) { return null; }
    var value = grid[metric][row][column];
    return value == null ? null : value;
  }

  function heatmaps(grids, original) {
    var container = document.getElementById("needle-grid");
    if (!container || typeof Plotly === "undefined") { return; }
    var metric = needleMetric();
    grids.forEach(function (grid, index) {
      var id = "needle-heatmap-" + index;
      var cell = document.getElementById(id);
      if (!cell) {
        cell = document.createElement("div");
        cell.id = id;
        cell.className = "chart";
        container.appendChild(cell);
      }
      cell.setAttribute("data-method", grid.name);
      cell.setAttribute("data-haystack", grid.haystack || "");
      // Each cell carries [exact, partial, samples] so hover shows both scores and the needles behind them.
      var custom = grid.depths.map(function (_, row) {
        return grid.lengths.map(function (_, column) {
          var samples = grid.samples ? grid.samples[row][column] : null;
          return [grid.exact[row][column], grid.partial[row][column], samples == null ? "?" : samples];
        });
      });
      var title = escapeText(grid.name) +
        (grid.haystack ? "<br><sup>haystack: " + escapeText(grid.haystack) + " documents</sup>" : "");
      Plotly.react(cell, [{
        type: "heatmap", x: grid.lengths.map(String), y: grid.depths, z: grid[metric], customdata: custom,
        zmin: 0, zmax: 1, colorscale: GRID_COLORS, showscale: index === grids.length - 1,
        colorbar: { title: { text: metric } },
        hovertemplate: "length %{x}<br>depth %{y}<br>exact %{customdata[0]:.2f}<br>partial %{customdata[1]:.2f}" +
          "<br>samples %{customdata[2]}<extra></extra>"
      }], gridLayout(title, grid.lengths, original), CONFIG);
    });
    difference(grids, original, metric);
  }

  // The two selects list every run with a grid; a run that disappears falls back to the first / second.
  function fillSelect(select, names, fallback) {
    var current = select.value;
    var same = select.options.length === names.length &&
      names.every(function (name, i) { return select.options[i].value === name; });
    if (!same) {
      select.textContent = "";
      names.forEach(function (name) {
        var option = document.createElement("option");
        option.value = name;
        option.textContent = name;
        select.appendChild(option);
      });
    }
    select.value = names.indexOf(current) >= 0 ? current : (names[fallback] || names[0] || "");
  }

  function difference(grids, original, metric) {
    var controls = document.getElementById("needle-diff-controls");
    var chart = document.getElementById("needle-diff");
    var toggle = document.getElementById("needle-diff-on");
    var selectA = document.getElementById("needle-diff-a"), selectB = document.getElementById("needle-diff-b");
    if (!controls || !chart || !toggle || !selectA || !selectB) { return; }
    var names = grids.map(function (grid) { return grid.name; });
    controls.hidden = grids.length < 2;
    fillSelect(selectA, names, 0);
    fillSelect(selectB, names, 1);
    var a = grids[names.indexOf(selectA.value)], b = grids[names.indexOf(selectB.value)];
    chart.hidden = !(toggle.checked && a && b && grids.length >= 2);
    if (chart.hidden) { return; }
    // Union of both grids' coordinates: a cell only one run measured stays blank rather than pretending 0.
    var lengths = a.lengths.concat(b.lengths.filter(function (n) { return a.lengths.indexOf(n) < 0; }))
      .sort(function (x, y) { return x - y; });
    var depths = a.depths.concat(b.depths.filter(function (d) { return a.depths.indexOf(d) < 0; }))
      .sort(function (x, y) { return x - y; });
    var z = [], custom = [];
    depths.forEach(function (depth) {
      var zRow = [], customRow = [];
      lengths.forEach(function (length) {
        var va = cellAt(a, metric, length, depth), vb = cellAt(b, metric, length, depth);
        var na = cellAt(a, "samples", length, depth), nb = cellAt(b, "samples", length, depth);
        zRow.push(va == null || vb == null ? null : va - vb);
        customRow.push([va == null ? "—" : va.toFixed(2), vb == null ? "—" : vb.toFixed(2),
                        na == null ? "?" : na, nb == null ? "?" : nb]);
      });
      z.push(zRow);
      custom.push(customRow);
    });
    chart.setAttribute("data-a", a.name);
    chart.setAttribute("data-b", b.name);
    chart.setAttribute("data-metric", metric);
    var title = escapeText(a.name) + " − " + escapeText(b.name) + " (" + metric + " match)";
    Plotly.react(chart, [{
      type: "heatmap", x: lengths.map(String), y: depths, z: z, customdata: custom,
      zmin: -1, zmax: 1, zmid: 0, colorscale: DIFF_COLORS, colorbar: { title: { text: "A − B" } },
      hovertemplate: "length %{x}<br>depth %{y}<br>A − B %{z:+.2f}<br>A %{customdata[0]} (%{customdata[2]} samples)" +
        "<br>B %{customdata[1]} (%{customdata[3]} samples)<extra></extra>"
    }], gridLayout(title, lengths, original), CONFIG);
  }

  function redrawNeedles() {
    heatmaps(needleState.grids, needleState.original);
  }

  function bindNeedleControls() {
    var controls = document.querySelectorAll(
      "input[name='needle-metric'], #needle-diff-on, #needle-diff-a, #needle-diff-b");
    Array.prototype.forEach.call(controls, function (control) {
      if (control.getAttribute("data-bound")) { return; }
      control.setAttribute("data-bound", "1");
      control.addEventListener("change", redrawNeedles);
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


  // One colour per method, so a method's dashed and solid lines (LongPPL) or its curve, threshold line and
  // effective-length star (RULER) read as one.
  var COLORWAY = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                  "#bcbd22", "#17becf"];

  function colorOf(index) { return COLORWAY[index % COLORWAY.length]; }

  function oneTrace(name, points, options) {
    var series = {};
    series[name] = points;
    return lineTraces(series, options)[0];
  }

  function namesOf() {
    var names = [];
    Array.prototype.forEach.call(arguments, function (series) {
      Object.keys(series || {}).forEach(function (name) { if (names.indexOf(name) < 0) { names.push(name); } });
    });
    return names;
  }

  // LongPPL (solid) beside ordinary perplexity (dashed) per method, on one pair of log axes; key-token counts
  // on hover.
  function longpplChart(series, original) {
    var longppl = series.longppl || {}, perplexity = series.perplexity || {};
    var counts = series.longppl_key_tokens || {};
    var traces = [];
    namesOf(longppl, perplexity).forEach(function (name, index) {
      var color = colorOf(index);
      if (longppl[name]) {
        var keys = {};
        (counts[name] || []).forEach(function (p) { keys[p[0]] = p[1]; });
        var trace = oneTrace(name + " LongPPL", longppl[name]);
        trace.line = { color: color };
        trace.marker = { color: color };
        trace.customdata = longppl[name].map(function (p) {
          return keys[p[0]] != null ? Math.round(keys[p[0]]) : "?";
        });
        trace.hovertemplate = escapeText(name) + "<br>length %{x}<br>LongPPL %{y:.3f}" +
          "<br>key tokens %{customdata}<extra></extra>";
        traces.push(trace);
      }
      if (perplexity[name]) {
        var ppl = oneTrace(name + " perplexity", perplexity[name], { noErrors: true });
        ppl.line = { color: color, dash: "dash" };
        ppl.marker = { color: color, symbol: "circle-open" };
        ppl.hovertemplate = escapeText(name) + "<br>length %{x}<br>perplexity %{y:.3f}<extra></extra>";
        traces.push(ppl);
      }
    });
    plot("longppl-chart", traces, lineLayout("perplexity", original, { type: "log" }));
  }

  // RULER: the average per length per method, its threshold (threshold × reference) and effective length.
  function rulerChart(rulers, threshold, original) {
    var traces = [];
    rulers.forEach(function (run, index) {
      var color = colorOf(index);
      traces.push({ name: run.name, type: "scatter", mode: "lines+markers", x: run.lengths, y: run.average,
                    line: { color: color }, marker: { color: color }, connectgaps: true,
                    hovertemplate: escapeText(run.name) + "<br>length %{x}<br>average %{y:.3f}<extra></extra>" });
      if (run.reference != null && threshold != null && run.lengths.length) {
        var bar = threshold * run.reference;
        traces.push({ name: run.name + " threshold", type: "scatter", mode: "lines", showlegend: false,
                      x: [run.lengths[0], run.lengths[run.lengths.length - 1]], y: [bar, bar],
                      line: { color: color, dash: "dot", width: 1.5 },
                      hovertemplate: escapeText(run.name) + "<br>threshold " + threshold + " × " +
                        run.reference.toFixed(3) + " = %{y:.3f}<extra></extra>" });
      }
      if (run.effective_length != null) {
        var at = run.lengths.indexOf(run.effective_length);
        traces.push({ name: run.name + " effective length", type: "scatter", mode: "markers", showlegend: false,
                      x: [run.effective_length], y: [at >= 0 ? run.average[at] : null],
                      marker: { color: color, symbol: "star", size: 15, line: { color: "#111827", width: 1 } },
                      hovertemplate: escapeText(run.name) + "<br>effective length %{x}<extra></extra>" });
      }
    });
    plot("ruler-chart", traces, lineLayout("RULER average score", original, { range: [-0.05, 1.05] }));
  }

  // The heatmaps' red → yellow → green scale, lightened so a cell's number stays readable.
  function scoreColor(value) {
    var stops = [[185, 28, 28], [250, 204, 21], [21, 128, 61]];
    var v = Math.max(0, Math.min(1, value)) * 2, i = Math.min(1, Math.floor(v)), f = v - i;
    var rgb = stops[i].map(function (c, k) { return Math.round(c + (stops[i + 1][k] - c) * f); });
    return "rgba(" + rgb.join(", ") + ", 0.45)";
  }

  function element(tag, text, attributes) {
    var node = document.createElement(tag);
    if (text != null) { node.textContent = text; }
    Object.keys(attributes || {}).forEach(function (name) { node.setAttribute(name, attributes[name]); });
    return node;
  }

  function scoreRow(label, scores, lengths, attributes, samples, title) {
    var tr = element("tr", null, attributes);
    tr.appendChild(element("th", label, title ? { title: title, scope: "row" } : { scope: "row" }));
    lengths.forEach(function (length, column) {
      var value = scores[column];
      var td = element("td", value == null ? "" : Number(value).toFixed(2), { "data-length": length });
      td.className = "score";
      if (value != null) {
        td.style.backgroundColor = scoreColor(value);
        var n = samples ? samples[column] : null;
        if (n != null) { td.title = n + " sample" + (n === 1 ? "" : "s"); }
      }
      tr.appendChild(td);
    });
    return tr;
  }

  var GROUP_LABELS = { retrieval: "Retrieval", multi_hop: "Multi-hop tracing", aggregation: "Aggregation" };

  function rulerTables(rulers) {
    var container = document.getElementById("ruler-tables");
    if (!container) { return; }
    container.textContent = "";
    rulers.forEach(function (run) {
      var block = element("div", null, { "data-role": "ruler-table", "data-method": run.name });
      block.appendChild(element("h3", run.name));
      var table = element("table");
      table.className = "table numbers ruler";
      var head = element("tr");
      head.appendChild(element("th", "Task"));
      run.lengths.forEach(function (length) { head.appendChild(element("th", String(length))); });
      table.appendChild(element("thead")).appendChild(head);
      var body = table.appendChild(element("tbody"));
      Object.keys(run.groups).forEach(function (group) {
        var row = scoreRow(GROUP_LABELS[group] || group, run.groups[group], run.lengths,
                           { "data-group": group, "class": "group" });
        body.appendChild(row);
        run.tasks.filter(function (task) { return task.group === group; }).forEach(function (task) {
          body.appendChild(scoreRow(task.task, task.scores, run.lengths, { "data-task": task.task },
                                    task.samples, task.description));
        });
      });
      body.appendChild(scoreRow("Average", run.average, run.lengths,
                                { "data-role": "ruler-average-row", "class": "average" }));
      block.appendChild(table);
      container.appendChild(block);
    });
  }

  function effectiveText(length, reference) {
    if (length != null) { return Number(length).toLocaleString("en-US"); }
    return reference != null ? "< shortest length" : "—";
  }

  function rulerSummary(rulers) {
    var table = document.getElementById("ruler-summary");
    if (!table) { return; }
    var groups = [];
    rulers.forEach(function (run) {
      Object.keys(run.effective_by_group).forEach(function (g) { if (groups.indexOf(g) < 0) { groups.push(g); } });
    });
    groups.sort(function (a, b) {
      return Object.keys(GROUP_LABELS).indexOf(a) - Object.keys(GROUP_LABELS).indexOf(b);
    });
    var head = table.querySelector("thead"), body = table.querySelector("tbody");
    head.textContent = "";
    body.textContent = "";
    var tr = head.appendChild(element("tr"));
    ["Method", "Reference (at length)", "Effective length"].concat(groups.map(function (g) {
      return (GROUP_LABELS[g] || g) + " effective length";
    })).forEach(function (label) { tr.appendChild(element("th", label)); });
    rulers.forEach(function (run) {
      var row = body.appendChild(element("tr", null, { "data-method": run.name }));
      row.appendChild(element("td", run.name));
      row.appendChild(element("td", run.reference == null ? "—" :
        run.reference.toFixed(2) + " (at " + run.reference_length + ")", { "data-role": "ruler-reference" }));
      row.appendChild(element("td", effectiveText(run.effective_length, run.reference),
                              { "data-role": "ruler-effective" }));
      groups.forEach(function (group) {
        var reference = (run.reference_by_group || {})[group];
        row.appendChild(element("td", group in run.effective_by_group ?
          effectiveText(run.effective_by_group[group], reference) : "—", { "data-group": group }));
      });
    });
  }

  // Under each evaluation: what it was measured under; several lines when the runs' protocols differ.
  function protocolLines(protocols) {
    Object.keys(protocols || {}).forEach(function (evaluation) {
      var target = document.querySelector("[data-role='protocol-" + evaluation + "']");
      if (!target) { return; }
      var entries = protocols[evaluation] || [];
      target.textContent = "";
      if (entries.length > 1) {
        target.appendChild(element("span", "These runs were measured under different protocols and are not " +
                                   "ranked against each other.", { "data-role": "protocol-differ" }));
      }
      entries.forEach(function (entry) {
        var line = element("span", null, { "data-role": "protocol-entry", "data-key": entry.key || "" });
        line.appendChild(element("strong", entries.length === 1 ? "Protocol" : entry.runs.join(", ")));
        line.appendChild(document.createTextNode(": " + entry.text));
        target.appendChild(line);
      });
    });
  }

  function drawAll(payload, options) {
    if (!payload) { return; }
    options = options || {};
    var charts = payload.charts, original = payload.original_context;
    protocolLines(payload.protocols);
    if (!charts) { return; }
    drawPerplexity((charts.series || {}).perplexity, original,
                   { limits: options.limits || payload.limits, originalLabel: options.originalLabel });
    searchCharts(charts.search);
    plot("train-loss-chart", Object.keys(charts.train_loss || {}).map(function (name) {
      var points = charts.train_loss[name];
      return { name: name, type: "scatter", mode: "lines",
               x: points.map(function (p) { return p[0]; }), y: points.map(function (p) { return p[1]; }) };
    }), { margin: { t: 20, r: 20, b: 50, l: 60 }, legend: { orientation: "h", y: -0.25 },
          xaxis: { title: { text: "step" } }, yaxis: { title: { text: "loss (nats)" } } });
    var s = charts.series;
    longpplChart(s, original);
    rulerChart(charts.ruler || [], charts.ruler_threshold, original);
    rulerTables(charts.ruler || []);
    rulerSummary(charts.ruler || []);
    plot("passkey-chart", lineTraces(s.passkey), lineLayout("passkey accuracy", original, { range: [-0.05, 1.05] }));
    needleState = { grids: charts.needle || [], original: original };
    bindNeedleControls();
    heatmaps(needleState.grids, original);
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

  return { drawAll: drawAll, drawPerplexity: drawPerplexity };
})();
