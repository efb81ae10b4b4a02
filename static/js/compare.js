// The compare page: every evaluation's chart, perplexity by length included, through evaluation_charts.js (the
// experiment page's payload, keyed by run labels), the "Differences only" toggle (kept in the URL) and "Copy link".
(function () {
  "use strict";

  var DIFF_PARAM = "diff";

  function shareLink() {
    return window.location.href;
  }

  function syncShareField() {
    var field = document.querySelector("[data-role='share-link']");
    if (field) { field.value = shareLink(); }
  }

  function diffOnly(on) {
    document.querySelectorAll("#compare-params tbody tr[data-differs='0']").forEach(function (row) {
      row.hidden = on;
    });
    // The toggle lives in the URL, so the link shared opens the table the same way.
    if (window.history && window.URL) {
      var url = new URL(window.location.href);
      if (on) { url.searchParams.set(DIFF_PARAM, "1"); } else { url.searchParams.delete(DIFF_PARAM); }
      window.history.replaceState(null, "", url.toString());
    }
    syncShareField();
  }

  var toggle = document.querySelector("[data-role='diff-only']");
  if (toggle) {
    toggle.addEventListener("change", function () { diffOnly(toggle.checked); });
  }

  var copy = document.querySelector("[data-role='copy-link']");
  if (copy) {
    copy.addEventListener("click", function () {
      var field = document.querySelector("[data-role='share-link']");
      var done = function () {
        copy.textContent = "Copied";
        copy.setAttribute("data-copied", "1");
        window.setTimeout(function () { copy.textContent = "Copy link"; }, 2000);
      };
      if (navigator.clipboard && navigator.clipboard.writeText) {
        navigator.clipboard.writeText(shareLink()).then(done, function () {
          if (field) { field.select(); document.execCommand("copy"); done(); }
        });
      } else if (field) {
        field.select();
        document.execCommand("copy");
        done();
      }
    });
  }

  var data = document.getElementById("chart-data");
  if (data) {
    // As before on this page: the dotted original-context line of #ppl-chart carries no label.
    if (window.ContextLabCharts) {
      window.ContextLabCharts.drawAll(JSON.parse(data.textContent), { originalLabel: false });
    }
  }
})();
