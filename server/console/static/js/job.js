// A job's page: each machine's status follows GET /api/v1/jobs/{id}/events
// (server-sent events) live; when the job is done its results are shown.
"use strict";
(function () {
  const { api, gettext } = window.Fieldlink;

  function setStatus(table, agentId, status) {
    const row = table.querySelector('tr[data-agent="' + CSS.escape(agentId) + '"]');
    if (!row) return;
    const badge = row.querySelector("[data-item-status]");
    badge.textContent = window.Fieldlink.label("run_status", status);
    badge.className = "badge status-" + status;
  }

  async function showResults(table) {
    const job = await api("GET", table.dataset.job);
    for (const item of job.items) {
      setStatus(table, item.agent_id, item.status);
      const row = table.querySelector('tr[data-agent="' + CSS.escape(item.agent_id) + '"]');
      if (row && item.result) {
        const cell = row.querySelector(".result");
        cell.textContent = "";
        const details = document.createElement("details");
        const summary = document.createElement("summary");
        summary.textContent = gettext("Result");
        details.append(summary, window.FieldlinkResults.render(item.result));
        cell.append(details);
      }
    }
    const status = document.getElementById("job-status");
    status.textContent = window.Fieldlink.label("run_status", job.status);
    status.dataset.status = job.status;
  }

  document.addEventListener("DOMContentLoaded", () => {
    const table = document.getElementById("job-items");
    if (!table) return;
    if (document.getElementById("job-status").dataset.status === "done") {
      showResults(table);
      return;
    }
    const source = new EventSource(table.dataset.events);
    source.addEventListener("item", (ev) => {
      const item = JSON.parse(ev.data);
      setStatus(table, item.agent_id, item.status);
    });
    source.addEventListener("done", () => {
      source.close();
      showResults(table);
    });
  });
})();
