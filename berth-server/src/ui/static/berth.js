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
