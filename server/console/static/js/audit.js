// The audit page: the hash chain's verification status, asked of the API
// after the page loads (walking the whole chain can take a moment).
"use strict";
(function () {
  const { api, gettext } = window.Fieldlink;
  document.addEventListener("DOMContentLoaded", async () => {
    const box = document.getElementById("chain");
    if (!box) return;
    try {
      const r = await api("GET", box.dataset.verify);
      box.dataset.ok = String(r.ok);
      box.className = r.ok ? "notice" : "error";
      box.textContent = r.ok
        ? gettext("The hash chain is intact.") + " " + gettext("Entries:") + " " + r.entries
        : gettext("The hash chain is broken at entry") + " " + r.broken_at + ": " + r.reason;
    } catch (e) {
      box.className = "error";
      box.textContent = e.message;
    }
  });
})();
