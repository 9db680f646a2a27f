// Fieldlink console: what every page uses. Strings come translated from the
// page (body data-strings); writes go to the JSON API with the session's CSRF
// token in X-CSRF-Token. No inline script anywhere (the CSP forbids it).
"use strict";
(function () {
  const body = document.body;
  const strings = JSON.parse(body.dataset.strings || "{}");
  const csrf = body.dataset.csrf || "";
  const labels = JSON.parse(body.dataset.labels || "{}");

  function gettext(text) {
    return strings[text] || text;
  }

  // A stored value's word (server/console/labels.py): label("session_state", "awaiting_consent").
  function label(group, value) {
    if (value === null || value === undefined || value === "") return "—";
    const words = labels[group] || {};
    return words[value] || String(value).replace(/_/g, " ");
  }

  async function api(method, url, data) {
    const headers = { "X-CSRF-Token": csrf, Accept: "application/json" };
    const init = { method: method, headers: headers, credentials: "same-origin" };
    if (data !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(data);
    }
    const resp = await fetch(url, init);
    const text = await resp.text();
    let json = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch (e) {
      json = { raw: text };
    }
    if (!resp.ok) {
      const err = (json && json.error) || {};
      if (resp.status === 401 && (err.code === "session_expired" || err.code === "unauthorized")) {
        // the console session ended (idle, logged out elsewhere): log in again, then come back
        window.location.assign("/login?next=" + encodeURIComponent(window.location.pathname));
      }
      const problem = new Error(err.message || gettext("The request failed."));
      problem.status = resp.status;
      problem.fields = err.fields || {};
      problem.code = err.code || "";
      throw problem;
    }
    return json;
  }

  // The console's one date format: the reader's language's medium date and
  // short time (CLDR, as HQ writes it before this script runs), in the
  // browser's time zone. `timeOnly` for chart ticks within a day ("seconds": with them).
  function formatTime(d, timeOnly) {
    const options = timeOnly
      ? { timeStyle: timeOnly === "seconds" ? "medium" : "short" }
      : { dateStyle: "medium", timeStyle: "short" };
    return d.toLocaleString(body.dataset.lang || undefined, options);
  }

  function localTimes(root) {
    for (const el of (root || document).querySelectorAll("time[datetime]")) {
      const d = new Date(el.getAttribute("datetime"));
      if (!isNaN(d)) {
        el.textContent = formatTime(d);
        el.title = el.getAttribute("datetime");
      }
    }
  }

  function setPath(obj, path, value) {
    const keys = path.split(".");
    let cur = obj;
    for (const key of keys.slice(0, -1)) {
      cur[key] = cur[key] || {};
      cur = cur[key];
    }
    cur[keys[keys.length - 1]] = value;
  }

  function typed(el) {
    const kind = el.dataset.type || "";
    if (el.type === "checkbox") return el.checked;
    const raw = el.value;
    if (kind === "int") return parseInt(raw, 10);
    if (kind === "float") return parseFloat(raw);
    if (kind === "bool") return raw === "true";
    if (kind === "null-if-empty") return raw === "" ? null : raw;
    if (kind === "list") return raw.split(",").map((s) => s.trim()).filter(Boolean);
    if (kind === "json") return JSON.parse(raw);
    return raw;
  }

  // A form's fields as the API's JSON body: names may be dotted (target.site);
  // empty fields are left out unless data-keep-empty is set.
  function formJson(form) {
    const out = {};
    for (const el of form.elements) {
      if (!el.name || el.name === "csrf_token" || el.disabled) continue;
      if (el.type === "checkbox" && "list" in el.dataset) {
        // checkboxes sharing a name with data-list make a list of the ticked values
        const all = form.querySelectorAll('input[data-list][name="' + CSS.escape(el.name) + '"]');
        if (all[0] === el) {
          const picked = [...all].filter((c) => c.checked);
          setPath(out, el.name, picked.map((c) => (c.dataset.type === "int" ? parseInt(c.value, 10) : c.value)));
        }
        continue;
      }
      if (el.type === "radio" && !el.checked) continue;
      if (el.type !== "checkbox" && el.value === "" && !("keepEmpty" in el.dataset)) continue;
      setPath(out, el.name, typed(el));
    }
    return out;
  }

  function showError(form, problem) {
    let box = form.querySelector(".form-error");
    if (!box) {
      box = document.createElement("p");
      box.className = "form-error error";
      box.setAttribute("role", "alert");
      form.prepend(box);
    }
    const fields = Object.entries(problem.fields || {})
      .map(([k, v]) => k + ": " + v)
      .join("; ");
    box.textContent = problem.message + (fields ? " (" + fields + ")" : "");
  }

  function fill(template, data) {
    return template.replace(/\{(\w+)\}/g, (_, key) => encodeURIComponent(data[key] ?? ""));
  }

  // <form data-api="/api/v1/..." data-method="POST" data-then="reload|/path/{id}|event">
  document.addEventListener("submit", async (ev) => {
    const form = ev.target;
    if (!(form instanceof HTMLFormElement) || !form.dataset.api) return;
    ev.preventDefault();
    if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) return;
    const button = form.querySelector("[type=submit]");
    if (button) button.disabled = true;
    const old = form.querySelector(".form-error");
    if (old) old.remove();
    try {
      let data;
      try {
        data = form.dataset.nobody === undefined ? formJson(form) : undefined;
      } catch (e) {
        throw Object.assign(new Error(gettext("The form has a value that is not valid JSON.")), {
          fields: {},
        });
      }
      const answer = await api(form.dataset.method || "POST", form.dataset.api, data);
      const then = form.dataset.then || "reload";
      if (then === "reload") {
        window.location.reload();
      } else if (then === "event") {
        form.dispatchEvent(new CustomEvent("api:done", { detail: answer, bubbles: true }));
      } else {
        window.location.assign(fill(then, answer || {}));
      }
    } catch (problem) {
      showError(form, problem);
      form.dispatchEvent(new CustomEvent("api:failed", { detail: problem, bubbles: true }));
    } finally {
      if (button) button.disabled = false;
    }
  });

  document.addEventListener("DOMContentLoaded", () => {
    localTimes(document);
    const toggle = document.querySelector(".menu-toggle");
    const nav = document.getElementById("site-nav");
    if (toggle && nav) {
      toggle.addEventListener("click", () => {
        const open = toggle.getAttribute("aria-expanded") === "true";
        toggle.setAttribute("aria-expanded", String(!open));
        nav.classList.toggle("open", !open);
      });
    }
  });

  window.Fieldlink = { gettext, label, api, csrf, localTimes, formatTime, formJson, showError };
})();
