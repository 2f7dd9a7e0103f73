// Live refresh: when /events (server-sent events fed by the registry's event
// log) reports something this page shows, fetch the page again and swap its
// <main>. Pages work without this script; it only spares the reload. While
// the visitor is typing in a form, the swap waits and a notice offers it.
(function () {
  "use strict";
  var src = document.body.getAttribute("data-live");
  if (!src || !window.EventSource || !window.fetch || !window.DOMParser) return;
  var timer = null;
  var source = new EventSource(src);

  function busy() {
    var active = document.activeElement;
    if (active && /^(TEXTAREA|INPUT|SELECT)$/.test(active.tagName) && active.closest("main")) return true;
    var boxes = document.querySelectorAll("main textarea, main input[type=text]");
    for (var i = 0; i < boxes.length; i++) {
      if (boxes[i].value && boxes[i].value !== boxes[i].defaultValue) return true;
    }
    return false;
  }

  function refresh() {
    if (busy()) {
      document.getElementById("live-status").hidden = false;
      return;
    }
    fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (resp) { return resp.ok ? resp.text() : null; })
      .then(function (text) {
        if (!text) return;
        var doc = new DOMParser().parseFromString(text, "text/html");
        var fresh = doc.querySelector("main");
        var current = document.querySelector("main");
        if (fresh && current) current.replaceWith(fresh);
        document.body.setAttribute("data-refreshed", String(Date.now()));
      })
      .catch(function () { document.getElementById("live-status").hidden = false; });
  }

  source.addEventListener("registry", function () {
    clearTimeout(timer);
    timer = setTimeout(refresh, 250);
  });
})();
