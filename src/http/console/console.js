// The console works without this script. With it, times read in the
// browser's own time zone (UTC stays on hover) and the overview refreshes
// itself while it is on screen.
"use strict";
function localTimes(root) {
  for (const el of root.querySelectorAll("time[datetime]")) {
    const at = new Date(el.getAttribute("datetime"));
    if (!isNaN(at)) el.textContent = at.toLocaleString();
  }
}
document.addEventListener("DOMContentLoaded", () => {
  localTimes(document);
  const main = document.querySelector("main[data-refresh]");
  if (!main) return;
  const every = Number(main.dataset.refresh) * 1000;
  setInterval(async () => {
    if (document.hidden) return;
    try {
      const answer = await fetch(location.href, { credentials: "same-origin" });
      if (!answer.ok || answer.redirected) return;
      const page = new DOMParser().parseFromString(await answer.text(), "text/html");
      const fresh = page.querySelector("main[data-refresh]");
      if (!fresh) return;
      fresh.querySelector(".flash")?.remove();
      document.querySelector("main").replaceWith(fresh);
      localTimes(fresh);
    } catch (_) { /* the next tick tries again */ }
  }, every);
});
