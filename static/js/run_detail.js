// The run page: while the run is active, append what the worker logs and reload once it ends (to show the
// attempt's outcome, error and artifacts).
(function () {
  "use strict";
  var picker = document.getElementById("log-attempt-select");
  if (picker) { picker.addEventListener("change", function () { picker.form.submit(); }); }
  var config = document.getElementById("run-config");
  var log = document.getElementById("run-log");
  if (!config || !log) { return; }
  var POLL_MS = 2000;
  var last = config.dataset.last || "0";
  log.scrollTop = log.scrollHeight;

  function poll() {
    var url = config.dataset.url + "&after=" + encodeURIComponent(last);
    fetch(url, { headers: { "Accept": "application/json" }, credentials: "same-origin" })
      .then(function (response) {
        if (response.status === 404) { window.location.reload(); }  // retried: the page finds the new attempt
        if (!response.ok) { throw new Error("status " + response.status); }
        return response.json();
      })
      .then(function (payload) {
        if (payload.text.length) {
          log.textContent += (log.textContent ? "\n" : "") + payload.text.join("\n");
          log.scrollTop = log.scrollHeight;
          var empty = document.querySelector("[data-role='log-empty']");
          if (empty) { empty.hidden = true; }
        }
        last = String(payload.last);
        var message = document.querySelector("[data-role='progress-message']");
        if (message) { message.textContent = payload.progress_message; }
        var badge = document.querySelector("#run-facts [data-role='status']");
        if (badge) { badge.className = "badge status-" + payload.status; badge.textContent = payload.status_label; }
        if (payload.active) {
          window.setTimeout(poll, POLL_MS);
        } else {
          window.location.reload();
        }
      })
      .catch(function () { window.setTimeout(poll, POLL_MS * 3); });
  }

  if (config.dataset.active === "1") { window.setTimeout(poll, POLL_MS); }
})();
