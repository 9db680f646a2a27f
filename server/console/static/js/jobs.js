// The jobs page: the parameter fields follow the chosen entry (only the shown
// fieldset is enabled, so only its values are sent).
"use strict";
(function () {
  document.addEventListener("DOMContentLoaded", () => {
    const select = document.getElementById("j-name");
    if (!select) return;
    const show = () => {
      for (const set of document.querySelectorAll("[data-params-for]")) {
        const on = set.dataset.paramsFor === select.value;
        set.hidden = !on;
        for (const el of set.querySelectorAll("input, select")) el.disabled = !on;
      }
    };
    select.addEventListener("change", show);
    show();
  });
})();
