// Administration and enrollment: secrets the API shows only once (a new
// user's generated password, an enrollment token) are shown here, once.
"use strict";
(function () {
  const { gettext } = window.Fieldlink;

  function show(form, lines) {
    const box = form.querySelector(".result");
    box.textContent = "";
    const note = document.createElement("div");
    note.className = "notice";
    note.setAttribute("role", "status");
    for (const [label, value] of lines) {
      const p = document.createElement("p");
      p.textContent = label + " ";
      const code = document.createElement("code");
      code.className = "secret";
      code.textContent = value;
      p.append(code);
      note.append(p);
    }
    box.append(note);
  }

  document.addEventListener("api:done", (ev) => {
    const form = ev.target;
    const answer = ev.detail || {};
    if (form.id === "new-user") {
      const lines = [[gettext("Created:"), answer.username]];
      if (answer.password) lines.push([gettext("Password (shown once):"), answer.password]);
      show(form, lines);
    } else if (form.id === "enroll-form") {
      show(form, [
        [gettext("Token (shown once):"), answer.token],
        [gettext("On the machine:"), "fieldlink-agent enroll " + answer.token + " --config-dir /etc/fieldlink-agent"],
      ]);
    }
  });
})();
