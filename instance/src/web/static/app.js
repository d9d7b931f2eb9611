// Caliopen web client: small progressive enhancements. Every page works
// without this file; it adds live updates, the live route preview and
// keyboard moves.
(function () {
  "use strict";
  var page = document.body.getAttribute("data-page");

  function replaceFrom(html, id) {
    var doc = new DOMParser().parseFromString(html, "text/html");
    var fresh = doc.getElementById(id);
    var old = document.getElementById(id);
    if (fresh && old) { old.replaceWith(fresh); }
  }

  // New mail without a reload (server-sent events; the browser reconnects).
  // Closed when the page is hidden (a page kept in the back/forward cache
  // must not hold a connection), opened again when it is shown.
  if (page && page !== "login" && page !== "error" && window.EventSource) {
    var last = null;
    var es = null;
    var open = function () {
      if (es) { return; }
      es = new EventSource("/events");
      es.addEventListener("state", function (e) {
        if (last === null) { last = e.data; return; }
        if (e.data === last) { return; }
        last = e.data;
        if (page === "mail" && !/[?&](before|q)=/.test(location.search)) {
          fetch(location.href, { credentials: "same-origin" })
            .then(function (r) { return r.ok ? r.text() : null; })
            .then(function (t) { if (t) { replaceFrom(t, "threads"); } });
        } else {
          var b = document.getElementById("newmail");
          if (b) { b.hidden = false; }
        }
      });
    };
    var close = function () { if (es) { es.close(); es = null; } };
    window.addEventListener("pagehide", close);
    window.addEventListener("pageshow", function () { open(); });
    open();
  }

  // The route preview follows the recipients as they are typed.
  var to = document.getElementById("to");
  var cc = document.getElementById("cc");
  if (to) {
    var timer = null;
    var ask = function () {
      clearTimeout(timer);
      timer = setTimeout(function () {
        var q = to.value + "," + (cc ? cc.value : "");
        fetch("/routes?to=" + encodeURIComponent(q), { credentials: "same-origin" })
          .then(function (r) { return r.ok ? r.text() : null; })
          .then(function (t) { if (t) { replaceFrom(t, "routes"); } });
      }, 300);
    };
    to.addEventListener("input", ask);
    if (cc) { cc.addEventListener("input", ask); }
  }

  // Keyboard: j/k move in the list, o or Enter opens, c writes.
  var rows = function () { return Array.prototype.slice.call(document.querySelectorAll("#threads a")); };
  document.addEventListener("keydown", function (e) {
    var t = e.target;
    if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT")) { return; }
    if (e.ctrlKey || e.metaKey || e.altKey) { return; }
    var list = rows();
    var i = list.indexOf(document.activeElement);
    if (e.key === "j" && list.length) { list[Math.min(i + 1, list.length - 1)].focus(); e.preventDefault(); }
    else if (e.key === "k" && list.length) { list[Math.max(i - 1, 0)].focus(); e.preventDefault(); }
    else if (e.key === "o" && i >= 0) { list[i].click(); }
    else if (e.key === "c") { location.href = "/compose"; }
  });
})();
