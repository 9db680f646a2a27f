// The "Get help" page: before a request is sent, show the best published
// knowledge-base articles for its words. "This solved it" records the request
// as self-served (closed at once) instead of opening a ticket; "none of these"
// sends the request as before.
"use strict";
(function () {
  const { api, gettext, showError, formJson } = window.Fieldlink;

  function excerpt(text, max) {
    const flat = (text || "").replace(/\s+/g, " ").trim();
    return flat.length > max ? flat.slice(0, max - 1) + "…" : flat;
  }

  function item(article, form) {
    const li = document.createElement("li");
    li.dataset.article = article.number;
    const link = document.createElement("a");
    link.href = "/kb/" + encodeURIComponent(article.number);
    link.target = "_blank";
    link.rel = "noopener";
    link.textContent = article.number + " " + article.title;
    const text = document.createElement("p");
    text.className = "pre-line";
    text.textContent = excerpt(article.resolution || article.symptom, 400);
    const solved = document.createElement("button");
    solved.type = "button";
    solved.textContent = gettext("This solved it");
    solved.addEventListener("click", async () => {
      const data = formJson(form);
      solved.disabled = true;
      try {
        await api("POST", "/api/v1/kb/" + encodeURIComponent(article.number) + "/solved", {
          site: data.site,
          text: [data.title, data.description].filter(Boolean).join("\n\n"),
        });
        window.location.assign("/help?done=solved");
      } catch (problem) {
        solved.disabled = false;
        showError(form, problem);
      }
    });
    li.append(link, text, solved);
    return li;
  }

  document.addEventListener("DOMContentLoaded", () => {
    const form = document.getElementById("help-form");
    const box = document.getElementById("kb-suggestions");
    const list = document.getElementById("kb-suggestion-list");
    if (!form || !box || !list) return;
    document.getElementById("kb-not-solved").addEventListener("click", () => {
      box.hidden = true;
      form.requestSubmit();
    });
    form.addEventListener("submit", async (ev) => {
      if (form.dataset.suggest === undefined) return; // asked already: common.js sends it
      ev.preventDefault();
      ev.stopPropagation();
      delete form.dataset.suggest;
      const data = formJson(form);
      const words = [data.title, data.description].filter(Boolean).join(" ");
      let found = [];
      try {
        const params = new URLSearchParams({ q: words, match: "any", state: "published", limit: "3" });
        found = (await api("GET", "/api/v1/kb?" + params.toString())).items || [];
      } catch (e) {
        found = []; // suggestions are a help, never a reason not to ask
      }
      if (!found.length) {
        form.requestSubmit();
        return;
      }
      list.textContent = "";
      for (const article of found) list.append(item(article, form));
      box.hidden = false;
      box.querySelector("h3").focus();
    });
  });
})();
