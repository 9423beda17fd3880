// rtops staff pages: keyboard lists and error notices. No build step; plain ES2017.
//
// A container [data-keylist] holds rows [data-key-row]. j / ArrowDown and k / ArrowUp move the
// selection; a key named by a button's data-hotkey in the selected row clicks that button
// (so its form's own validation runs, e.g. a required override reason). Keys typed in a field
// stay in the field; Escape leaves it.
(function () {
  "use strict";

  function rows(list) { return Array.from(list.querySelectorAll("[data-key-row]")); }
  function current(list) { return list.querySelector("[data-key-row][aria-selected=true]"); }

  function select(list, row) {
    if (!row) return;
    rows(list).forEach(function (r) { r.setAttribute("aria-selected", r === row ? "true" : "false"); });
    row.scrollIntoView({ block: "nearest" });
  }

  function firstOpen(list, from) {
    var all = rows(list);
    var start = from ? all.indexOf(from) : 0;
    for (var i = Math.max(start, 0); i < all.length; i++) {
      if (all[i].querySelector("[data-hotkey]")) return all[i];
    }
    return all[start] || all[0];
  }

  function typing(target) {
    return target && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName));
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-keylist]").forEach(function (list) { select(list, firstOpen(list)); });
  });

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (typing(event.target)) {
      if (event.key === "Escape") event.target.blur();
      return;
    }
    var list = document.querySelector("[data-keylist]");
    if (!list) return;
    var all = rows(list);
    var row = current(list);
    var i = all.indexOf(row);
    if (event.key === "j" || event.key === "ArrowDown") {
      select(list, all[Math.min(i + 1, all.length - 1)]);
    } else if (event.key === "k" || event.key === "ArrowUp") {
      select(list, all[Math.max(i - 1, 0)]);
    } else if (row) {
      var button = row.querySelector('[data-hotkey="' + event.key + '"]');
      if (!button) return;
      button.click();
    } else {
      return;
    }
    event.preventDefault();
  });

  // After a row was replaced (a review saved), select the next row still open.
  document.addEventListener("htmx:afterSwap", function (event) {
    var list = event.target.closest && event.target.closest("[data-keylist]");
    if (!list) return;
    var row = event.target.matches("[data-key-row]") ? event.target : null;
    if (row && !row.querySelector("[data-hotkey]")) select(list, firstOpen(list, row));
    else if (row) select(list, row);
  });

  document.addEventListener("htmx:responseError", function (event) {
    var notice = document.getElementById("notice");
    if (!notice) return;
    var xhr = event.detail.xhr;
    notice.textContent = "Not saved (" + xhr.status + "): " +
      (xhr.status === 403 ? "your session or role does not allow this; reload the page." : xhr.statusText);
    notice.hidden = false;
  });
})();
