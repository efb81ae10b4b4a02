// The dataset page's token lengths: while a worker measures, poll their JSON and update the table in place.
(function () {
  "use strict";
  var section = document.getElementById("length-stats");
  if (!section || !section.dataset.pending || !window.fetch) { return; }
  var url = section.dataset.url;

  function count(value) { return value === null || value === undefined ? "\u2014" : value.toLocaleString("en-US"); }

  function update(rows) {
    rows.forEach(function (row) {
      var tr = section.querySelector('tr[data-key="' + row.tokenizer_key + '"]');
      if (!tr) { return; }
      var status = tr.querySelector('[data-role="status"]');
      status.textContent = row.status_text;
      status.dataset.status = row.status;
      ["documents", "tokens", "longest", "haystack_tokens"].forEach(function (name) {
        tr.querySelector('[data-role="' + name + '"]').textContent = count(row[name]);
      });
    });
  }

  function poll() {
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (payload) {
        if (!payload) { return; }
        update(payload.rows);
        if (payload.pending) { window.setTimeout(poll, 1000); }
      })
      .catch(function () { window.setTimeout(poll, 5000); });
  }
  window.setTimeout(poll, 1000);
})();
