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
