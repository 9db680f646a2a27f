// The ticket page: attached results on demand, linking the incident to a
// problem, and a session request (a fresh TOTP code first, as the API's
// step-up asks, then the request).
"use strict";
(function () {
  const { api, gettext, showError } = window.Fieldlink;

  document.addEventListener("click", async (ev) => {
    const button = ev.target.closest("[data-result]");
    if (!button) return;
    const box = button.nextElementSibling;
    box.textContent = gettext("Loading…");
    try {
      const result = await api("GET", "/api/v1/results/" + encodeURIComponent(button.dataset.result));
      box.textContent = "";
      box.append(window.FieldlinkResults.render(result));
    } catch (e) {
      box.textContent = e.message;
    }
  });

  // Link this incident to a problem: the problem picked names the API's path.
  document.addEventListener("DOMContentLoaded", () => {
    const form = document.getElementById("link-problem");
    if (!form) return;
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const old = form.querySelector(".form-error");
      if (old) old.remove();
      const problem = form.elements.problem.value;
      try {
        await api("POST", "/api/v1/problems/" + encodeURIComponent(problem) + "/tickets", {
          ticket: form.dataset.ticket,
        });
        window.location.reload();
      } catch (e) {
        showError(form, e);
      }
    });
  });

  document.addEventListener("DOMContentLoaded", () => {
    const form = document.getElementById("session-request");
    if (!form) return;
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const data = window.Fieldlink.formJson(form);
      const code = data.code;
      delete data.code;
      data.ticket_id = form.dataset.ticket;
      const old = form.querySelector(".form-error");
      if (old) old.remove();
      try {
        if (code) await api("POST", "/api/v1/auth/step-up", { code: code });
        const made = await api("POST", "/api/v1/sessions", data);
        window.location.assign("/sessions/" + encodeURIComponent(made.id));
      } catch (problem) {
        showError(form, problem);
      }
    });
  });
})();
