// The composer's defaults: target = 4x the chosen model's original context and a name from the methods and the
// target, both kept in step with the choices until the visitor types their own; the chosen model's facts beside
// the selector; the estimated run time, asked of the server (it knows the earlier runs' measurements).
(function () {
  "use strict";
  var dataNode = document.getElementById("composer-defaults");
  var form = document.getElementById("composer");
  if (!dataNode || !form) { return; }
  var data = JSON.parse(dataNode.textContent);
  var model = form.querySelector("select[name='base_model']");
  var target = form.querySelector("input[name='target_length']");
  var name = form.querySelector("input[name='name']");
  var panel = document.getElementById("model-facts");
  var estimate = document.getElementById("run-estimate");

  function families() {
    return Array.prototype.map.call(form.querySelectorAll("select[name$='-family']"), function (s) { return s.value; })
      .filter(function (f) { return Boolean(f); });
  }

  function defaultName() {
    var seen = {};
    var labels = [];
    families().forEach(function (f) {
      var label = data.labels[f] || f;
      if (!seen[label]) { seen[label] = true; labels.push(label); }
    });
    var text = labels.length ? labels.join(" vs ") : "Experiment";
    var length = parseInt(target ? target.value : "", 10);
    if (length > 0) { text += " @ " + length.toLocaleString("en-US"); }
    return text.slice(0, 200);
  }

  function chosenFacts() {
    return model ? data.models[model.value] : undefined;
  }

  var facts = chosenFacts();
  var autoTarget = Boolean(target) && (target.value === "" || (facts && String(facts.default_target) === target.value));
  var autoName = Boolean(name) && (name.value === "" || name.value === defaultName());

  function showFacts() {
    if (!panel) { return; }
    var f = chosenFacts();
    panel.hidden = !f;
    if (!f) { return; }
    panel.querySelectorAll("[data-fact]").forEach(function (node) {
      var key = node.dataset.fact;
      var value = f[key];
      if (key === "rope_theta") { value = Math.round(value); }
      node.textContent = value === null || value === undefined ? "?" : String(value);
      if (key === "name") { node.href = f.url; }
    });
  }

  var asked = 0;
  var timer = null;
  function askEstimate() {
    if (!estimate) { return; }
    window.clearTimeout(timer);
    timer = window.setTimeout(function () {
      var params = new URLSearchParams();
      ["base_model", "target_length", "eval_lengths", "eval_documents", "eval-passkey_samples",
        "eval-needle_samples", "eval-needle_depths", "train-mode"].forEach(function (key) {
        var field = form.elements.namedItem(key);
        if (field && field.value !== undefined) { params.append(key, field.value); }
      });
      form.querySelectorAll("input[name='eval-suite']:checked").forEach(function (box) { params.append("eval-suite", box.value); });
      families().forEach(function (f) { params.append("family", f); });
      var mine = ++asked;
      fetch(data.estimate_url + "?" + params.toString(), { headers: { "Accept": "application/json" }, credentials: "same-origin" })
        .then(function (response) {
          if (!response.ok) { throw new Error("status " + response.status); }
          return response.json();
        })
        .then(function (payload) {
          if (mine !== asked) { return; }  // a newer answer is on its way
          estimate.textContent = payload.text;
          if (payload.seconds === null) { delete estimate.dataset.seconds; } else { estimate.dataset.seconds = String(payload.seconds); }
        })
        .catch(function () { if (mine === asked) { estimate.textContent = "No estimate (the server did not answer)."; } });
    }, 300);
  }

  function refresh() {
    if (autoName && name) { name.value = defaultName(); }
    askEstimate();
  }

  if (target) {
    target.addEventListener("input", function () { autoTarget = target.value === ""; });
  }
  if (name) {
    name.addEventListener("input", function () { autoName = name.value.trim() === ""; });
  }
  if (model) {
    model.addEventListener("change", function () {
      var f = chosenFacts();
      if (autoTarget && target && f && f.default_target) { target.value = String(f.default_target); }
      showFacts();
    });
  }
  form.addEventListener("change", function (event) {
    if (event.target !== name) { refresh(); }
  });
  form.addEventListener("input", function (event) {
    if (event.target === target) { refresh(); }
  });
  var add = document.getElementById("add-method");
  if (add) { add.addEventListener("click", function () { window.setTimeout(refresh, 0); }); }
  showFacts();
  if (autoName && name && name.value === "") { name.value = defaultName(); }
})();
