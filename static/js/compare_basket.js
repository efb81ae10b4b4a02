// The compare basket: runs picked on any page, kept in localStorage while you move between experiments.
//
// Any checkbox with data-compare-run="<run uuid>" toggles that run in the basket and shows whether it is in it.
// A bar fixed at the bottom of the page (data-role="compare-bar") links to the compare page with every run in
// the basket ("Compare N runs", data-role="compare-link") and empties it ("Clear", data-role="compare-clear").
// A GET form to the compare page (data-role="compare-form") submits the whole basket, not only the boxes ticked
// on this page. Loaded from base.html; its script tag carries the compare page's URL in data-compare-url.
(function () {
  "use strict";

  var KEY = "contextlab.compare.runs";
  var script = document.currentScript;
  var compareUrl = (script && script.getAttribute("data-compare-url")) || "/compare/";
  var memory = [];  // when localStorage is unavailable (private mode), the basket lives as long as the page

  function read() {
    try {
      var stored = JSON.parse(window.localStorage.getItem(KEY) || "[]");
      return Array.isArray(stored) ? stored.filter(function (id) { return typeof id === "string" && id; }) : [];
    } catch (error) {
      return memory.slice();
    }
  }

  function write(ids) {
    memory = ids.slice();
    try {
      if (ids.length) { window.localStorage.setItem(KEY, JSON.stringify(ids)); }
      else { window.localStorage.removeItem(KEY); }
    } catch (error) { /* memory keeps it */ }
    refresh();
  }

  function linkTo(ids) {
    return compareUrl + "?runs=" + ids.map(encodeURIComponent).join(",");
  }

  function bar() {
    var found = document.querySelector("[data-role='compare-bar']");
    if (found) { return found; }
    found = document.createElement("div");
    found.setAttribute("data-role", "compare-bar");
    found.setAttribute("aria-live", "polite");
    found.style.cssText = "position:fixed;right:1rem;bottom:1rem;z-index:50;display:flex;gap:.6rem;" +
      "align-items:center;padding:.5rem .8rem;background:#fff;border:1px solid #d0d5dd;border-radius:8px;" +
      "box-shadow:0 2px 8px rgba(0,0,0,.15)";
    var link = document.createElement("a");
    link.className = "button primary";
    link.setAttribute("data-role", "compare-link");
    var clear = document.createElement("button");
    clear.type = "button";
    clear.textContent = "Clear";
    clear.setAttribute("data-role", "compare-clear");
    clear.addEventListener("click", function () { write([]); });
    found.appendChild(link);
    found.appendChild(clear);
    document.body.appendChild(found);
    return found;
  }

  function refresh() {
    var ids = read();
    document.querySelectorAll("input[data-compare-run]").forEach(function (box) {
      box.checked = ids.indexOf(box.getAttribute("data-compare-run")) >= 0;
    });
    var shown = bar();
    shown.hidden = ids.length === 0;
    shown.style.display = ids.length ? "flex" : "none";
    shown.setAttribute("data-count", String(ids.length));
    var link = shown.querySelector("[data-role='compare-link']");
    link.textContent = "Compare " + ids.length + " run" + (ids.length === 1 ? "" : "s");
    link.href = linkTo(ids);
  }

  document.addEventListener("change", function (event) {
    var box = event.target;
    if (!box || !box.matches || !box.matches("input[data-compare-run]")) { return; }
    var id = box.getAttribute("data-compare-run");
    var ids = read().filter(function (known) { return known !== id; });
    if (box.checked) { ids.push(id); }
    write(ids);
  });

  // "Compare selected": the whole basket, runs ticked on other experiments' pages included.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form || !form.matches || !form.matches("form[data-role='compare-form']")) { return; }
    event.preventDefault();
    var ids = read();
    document.querySelectorAll("input[data-compare-run][form='" + form.id + "']:checked, " +
                              "form[data-role='compare-form'] input[data-compare-run]:checked")
      .forEach(function (box) {
        var id = box.getAttribute("data-compare-run");
        if (ids.indexOf(id) < 0) { ids.push(id); }
      });
    window.location.href = linkTo(ids);
  });

  window.addEventListener("storage", function (event) {
    if (event.key === KEY || event.key === null) { refresh(); }
  });
  window.addEventListener("pageshow", refresh);  // back/forward cache: the basket may have changed meanwhile

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", refresh);
  } else {
    refresh();
  }
})();
