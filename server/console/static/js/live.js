// Live regions: <div data-live="/events/..."> receives server-rendered
// fragments over server-sent events and swaps them in, without a reload.
"use strict";
(function () {
  function connect(el) {
    const source = new EventSource(el.dataset.live);
    source.addEventListener("fragment", (ev) => {
      el.innerHTML = ev.data;
      window.Fieldlink.localTimes(el);
      el.dispatchEvent(new CustomEvent("live:update", { bubbles: true }));
    });
    source.addEventListener("end", () => {
      source.close();
      window.location.assign("/login?next=" + encodeURIComponent(window.location.pathname));
    });
    el.dataset.connected = "1";
  }
  document.addEventListener("DOMContentLoaded", () => {
    for (const el of document.querySelectorAll("[data-live]")) connect(el);
  });
})();
