// Berth's web interface: the little that needs script. Loaded from /ui/static (the CSP
// allows no inline script). Pages work without it.
"use strict";
document.addEventListener("click", function (ev) {
  var b = ev.target.closest("button[data-copy]");
  if (!b) return;
  var text = b.getAttribute("data-copy");
  if (navigator.clipboard) {
    navigator.clipboard.writeText(text).then(function () {
      b.textContent = "Copied";
    });
  }
});
// A page waiting for a background job (a dry run's report) looks again until it is there.
(function () {
  var w = document.querySelector("[data-refresh]");
  if (!w) return;
  var secs = parseInt(w.getAttribute("data-refresh"), 10) || 2;
  setTimeout(function () { location.reload(); }, secs * 1000);
})();
