// The ticket page's session request: the kinds offered follow the machine
// picked (each machine option lists, in data-kinds, what its policy and the
// caller's rights allow); the first allowed kind is chosen, and with none the
// form says so and cannot be sent.
"use strict";
(function () {
  function follow(agent, kind, none, submit) {
    const picked = agent.options[agent.selectedIndex];
    const allowed = ((picked && picked.dataset.kinds) || "").split(" ").filter(Boolean);
    for (const option of kind.options) {
      const ok = allowed.includes(option.value);
      option.hidden = !ok;
      option.disabled = !ok;
    }
    if (!allowed.includes(kind.value)) kind.value = allowed.length ? allowed[0] : "";
    kind.disabled = allowed.length === 0;
    none.hidden = allowed.length > 0;
    submit.disabled = allowed.length === 0;
  }

  document.addEventListener("DOMContentLoaded", () => {
    const agent = document.getElementById("s-agent");
    const kind = document.getElementById("s-kind");
    const none = document.getElementById("s-kind-none");
    const submit = document.getElementById("s-submit");
    if (!agent || !kind || !none || !submit) return;
    agent.addEventListener("change", () => follow(agent, kind, none, submit));
    follow(agent, kind, none, submit);
  });
})();
