/* The web UI's own script (no build step): countdowns, relative times, log scrolling,
   copy buttons. Everything else is htmx driven by attributes in the templates. */
(function () {
  "use strict";

  function span(seconds) {
    seconds = Math.max(0, Math.floor(seconds));
    var d = Math.floor(seconds / 86400), h = Math.floor(seconds % 86400 / 3600),
        m = Math.floor(seconds % 3600 / 60), s = seconds % 60;
    function two(n) { return (n < 10 ? "0" : "") + n; }
    if (d) return d + "d " + h + "h";
    if (h) return h + "h " + two(m) + "m";
    if (m) return m + "m " + two(s) + "s";
    return s + "s";
  }

  // <time data-until="ISO">: time left (hold TTL); <time data-since="ISO">: time elapsed
  function tick() {
    var now = Date.now();
    document.querySelectorAll("time[data-until]").forEach(function (el) {
      var left = (Date.parse(el.getAttribute("data-until")) - now) / 1000;
      el.textContent = left > 0 ? span(left) : "expired";
      el.classList.toggle("expired", left <= 0);
    });
    document.querySelectorAll("time[data-since]").forEach(function (el) {
      el.textContent = span((now - Date.parse(el.getAttribute("data-since"))) / 1000);
    });
  }
  setInterval(tick, 1000);
  document.addEventListener("DOMContentLoaded", tick);
  document.addEventListener("htmx:afterSettle", tick);

  // the log tail follows new lines while the reader is at its bottom
  var stick = true;
  document.addEventListener("htmx:sseBeforeMessage", function (e) {
    var log = e.target.closest && e.target.closest(".log");
    if (log) stick = log.scrollTop + log.clientHeight >= log.scrollHeight - 24;
  });
  document.addEventListener("htmx:sseMessage", function (e) {
    var log = e.target.closest && e.target.closest(".log");
    if (log && stick) log.scrollTop = log.scrollHeight;
    if (log) {
      var n = log.querySelectorAll(".ln").length, count = document.getElementById("log-count");
      if (count) count.textContent = n + (n === 1 ? " line" : " lines");
    }
  });
  // the stream's URL carries the last event id seen: an EventSource resumes with
  // Last-Event-ID by itself, but one that htmx has to create anew (after the server
  // refused or ended a connection) starts from the URL, and must not miss or repeat events
  document.addEventListener("htmx:sseMessage", function (e) {
    var id = e.detail && e.detail.lastEventId, src = e.target.closest && e.target.closest("[sse-connect]");
    if (id && src) src.setAttribute("sse-connect", src.getAttribute("sse-connect").split("?")[0] + "?after=" + encodeURIComponent(id));
  });
  // a reconnecting stream says so
  document.addEventListener("htmx:sseError", function (e) {
    var el = e.target.querySelector && e.target.querySelector(".stream-status");
    if (el) el.textContent = "reconnecting…";
  });
  document.addEventListener("htmx:sseOpen", function (e) {
    var el = e.target.querySelector && e.target.querySelector(".stream-status");
    if (el) el.textContent = "live";
  });

  // <button data-copy="#id">: copy that element's text
  document.addEventListener("click", function (e) {
    var b = e.target.closest && e.target.closest("button[data-copy]");
    if (!b) return;
    var src = document.querySelector(b.getAttribute("data-copy"));
    if (src && navigator.clipboard) {
      navigator.clipboard.writeText(src.textContent.trim()).then(function () { b.textContent = "Copied"; });
    }
  });
})();
