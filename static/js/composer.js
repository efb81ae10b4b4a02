// The composer: show only the chosen family's parameter inputs in each method row; add rows.
(function () {
  "use strict";

  function syncRow(row) {
    var select = row.querySelector("select[name$='-family']");
    var family = select ? select.value : "";
    row.querySelectorAll(".family-params").forEach(function (group) {
      group.hidden = group.dataset.family !== family;
    });
  }

  function wire(row) {
    var select = row.querySelector("select[name$='-family']");
    if (select) {
      select.addEventListener("change", function () { syncRow(row); });
    }
    syncRow(row);
  }

  document.querySelectorAll("[data-row]").forEach(wire);

  var add = document.getElementById("add-method");
  var template = document.getElementById("method-row-template");
  var rows = document.getElementById("method-rows");
  var total = document.querySelector("input[name='methods-TOTAL_FORMS']");
  var max = document.querySelector("input[name='methods-MAX_NUM_FORMS']");
  if (!add || !template || !rows || !total) {
    return;
  }
  add.addEventListener("click", function () {
    var index = parseInt(total.value, 10);
    if (max && index >= parseInt(max.value, 10)) {
      add.disabled = true;
      return;
    }
    var html = template.innerHTML.replace(/__prefix__/g, String(index)).replace(/__number__/g, String(index + 1));
    var holder = document.createElement("div");
    holder.innerHTML = html.trim();
    var row = holder.firstElementChild;
    rows.appendChild(row);
    total.value = String(index + 1);
    wire(row);
  });
})();

// Training recipes: picking a preset fills the training fields with the paper's (scaled-down) settings.
(function () {
  "use strict";
  var data = document.getElementById("training-presets");
  var select = document.getElementById("id_train-preset");
  if (!data || !select) { return; }
  var presets = JSON.parse(data.textContent);
  var paper = document.querySelector("[data-role='preset-paper']");
  var defaults = {};
  document.querySelectorAll("#training-recipe [name^='train-']").forEach(function (input) {
    defaults[input.name] = input.type === "checkbox" ? input.defaultChecked : input.defaultValue;
  });

  function apply(key) {
    var preset = presets[key];
    if (!preset) { return; }
    if (paper) { paper.textContent = preset.paper; }
    document.querySelectorAll("#training-recipe [name^='train-']").forEach(function (input) {
      var name = input.name.slice("train-".length);
      if (name === "preset") { return; }
      var value = Object.prototype.hasOwnProperty.call(preset.settings, name) ? preset.settings[name]
        : defaults[input.name];
      if (input.type === "checkbox") {
        input.checked = Boolean(value);
      } else if (value !== undefined && value !== null) {
        input.value = String(value);
      }
    });
  }

  select.addEventListener("change", function () { apply(select.value); });
  if (paper && presets[select.value]) { paper.textContent = presets[select.value].paper; }
})();
