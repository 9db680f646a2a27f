// Rendering a run result readably: a table where `data` has columns and rows,
// key/value lists for flat objects, and the output as text. Shared by the
// machine and job pages. Built with DOM calls only (no HTML strings).
"use strict";
(function () {
  const gettext = window.Fieldlink.gettext;

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function cell(value) {
    if (value === null || value === undefined) return "—";
    if (typeof value === "object") return JSON.stringify(value);
    return String(value);
  }

  // Sizes are bytes (docs/agent-runs.md): columns with these names read as KiB/MiB/GiB.
  const BYTE_COLUMNS = /^(total|used|free|available|size|bytes|rss|read_bytes|write_bytes)$/;

  function human(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (Math.abs(n) >= 1024 && i < units.length - 1) {
      n /= 1024;
      i++;
    }
    return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
  }

  function table(data) {
    const wrap = el("div", null, "table-wrap");
    const t = el("table");
    t.className = "result-table";
    const head = el("thead");
    const tr = el("tr");
    for (const c of data.columns) {
      const th = el("th", c);
      th.scope = "col";
      tr.append(th);
    }
    head.append(tr);
    const body = el("tbody");
    const bytes = data.columns.map((c) => BYTE_COLUMNS.test(String(c)));
    for (const row of data.rows) {
      const r = el("tr");
      row.forEach((v, i) => {
        const numeric = typeof v === "number";
        const td = el("td", numeric && bytes[i] ? human(v) : cell(v), numeric ? "num" : "");
        if (numeric && bytes[i]) td.title = String(v);
        r.append(td);
      });
      body.append(r);
    }
    t.append(head, body);
    wrap.append(t);
    return wrap;
  }

  function render(result) {
    const box = el("div", null, "run-result");
    const head = el("p");
    head.append(
      el("span", result.status, "badge status-" + result.status),
      document.createTextNode(" " + result.name + " · " + gettext("exit code") + " " + cell(result.exit_code)),
    );
    if (result.truncated) head.append(el("span", " " + gettext("(output truncated)"), "warn"));
    box.append(head);
    if (result.reason) box.append(el("p", result.reason, "error"));
    const data = result.data;
    if (data && Array.isArray(data.columns) && Array.isArray(data.rows)) {
      box.append(table(data));
    } else if (data && typeof data === "object") {
      const tables = Object.entries(data).filter(
        ([, v]) => v && Array.isArray(v.columns) && Array.isArray(v.rows),
      );
      for (const [name, v] of tables) {
        box.append(el("h4", name), table(v));
      }
      const flat = Object.entries(data).filter(([, v]) => !(v && v.columns));
      if (flat.length) {
        const dl = el("dl", null, "facts");
        for (const [k, v] of flat) dl.append(el("dt", k), el("dd", cell(v)));
        box.append(dl);
      }
    }
    if (result.stdout) {
      const details = el("details");
      details.open = !data;
      details.append(el("summary", gettext("Output")), el("pre", result.stdout));
      box.append(details);
    }
    if (result.stderr) box.append(el("pre", result.stderr, "stderr"));
    return box;
  }

  window.FieldlinkResults = { render };
})();
