// The machine page: health charts (uPlot) from GET /api/v1/agents/{id}/health
// for the last hour or day, refreshed every 15 s; catalog forms run through
// the API and their results render below each form.
"use strict";
(function () {
  const gettext = window.Fieldlink.gettext;
  const PAGE = 5000;
  let range = 3600;
  const plots = {};

  async function fetchHealth(base, seconds) {
    const since = new Date(Date.now() - seconds * 1000).toISOString();
    let after = 0;
    const items = [];
    for (let i = 0; i < 10; i++) {
      const url = base + "?limit=" + PAGE + "&after=" + after + "&since=" + encodeURIComponent(since);
      const page = await window.Fieldlink.api("GET", url);
      items.push(...page.items);
      if (!page.next) break;
      after = page.next;
    }
    return items;
  }

  function thin(items, max) {
    if (items.length <= max) return items;
    const step = Math.ceil(items.length / max);
    return items.filter((_, i) => i % step === 0);
  }

  function series(items) {
    const t = [], cpu = [], mem = [], disk = [], rx = [], tx = [];
    for (const it of thin(items, 1500)) {
      const r = it.report;
      t.push(Date.parse(it.sampled_at) / 1000);
      cpu.push(r.cpu ? r.cpu.percent : null);
      mem.push(r.memory ? r.memory.percent : null);
      disk.push(r.disks && r.disks.length ? Math.max(...r.disks.map((d) => d.percent)) : null);
      rx.push(r.net_io ? r.net_io.rx_bytes_per_s : null);
      tx.push(r.net_io ? r.net_io.tx_bytes_per_s : null);
    }
    return {
      cpu: [[t, cpu], [gettext("CPU")]],
      memory: [[t, mem], [gettext("Memory")]],
      disk: [[t, disk], [gettext("Disk")]],
      net: [[t, rx, tx], [gettext("received"), gettext("sent")]],
    };
  }

  const COLORS = ["#0b57d0", "#b3261e"];
  const measure = document.createElement("canvas").getContext("2d");

  // Network rates in decimal units per second (what people read on link speeds).
  function rate(v) {
    if (v === null || v === undefined) return "—";
    const units = ["B/s", "kB/s", "MB/s", "GB/s"];
    let i = 0;
    let n = Math.abs(v);
    while (n >= 1000 && i < units.length - 1) {
      n /= 1000;
      i++;
    }
    const shown = i === 0 || n >= 100 ? Math.round(n) : n.toFixed(n >= 10 ? 0 : 1);
    return (v < 0 ? "-" : "") + shown + " " + units[i];
  }

  function percent(v) {
    return v === null || v === undefined ? "—" : Math.round(v * 10) / 10 + " %";
  }

  function draw(container, data, labels) {
    const key = container.dataset.metric;
    const net = key === "net";
    const format = net ? rate : percent;
    const opts = {
      // the container's whole width (the page's grid decides it; see the resize observer)
      width: Math.max(200, Math.floor(container.getBoundingClientRect().width) || 300),
      height: 200,
      scales: net ? {} : { y: { range: [0, 100] } },
      series: [{ label: gettext("Time"), value: (u, ts) => (ts === null ? "—" : window.Fieldlink.formatTime(new Date(ts * 1000))) }].concat(
        labels.map((label, i) => ({
          label: label,
          stroke: COLORS[i],
          width: 1.5,
          value: (u, v) => format(v),
        })),
      ),
      axes: [
        {
          // times of day in the console's format; with seconds when the chart spans minutes
          values: (u, splits) => {
            const span = u.scales.x.max - u.scales.x.min;
            return splits.map((ts) => window.Fieldlink.formatTime(new Date(ts * 1000), span < 600 ? "seconds" : true));
          },
        },
        {
          values: (u, splits) => splits.map((v) => format(v)),
          // wide enough for the widest tick label ("999.9 kB/s"): tick, gap and text
          size: (u, values) => {
            if (!values) return 50;
            measure.font = u.axes[1].font[0];
            const widest = Math.max(0, ...values.map((v) => measure.measureText(String(v)).width));
            return Math.max(40, Math.ceil(widest / (window.devicePixelRatio || 1)) + 24);
          },
        },
      ],
    };
    if (plots[key]) plots[key].destroy();
    container.textContent = "";
    plots[key] = new window.uPlot(opts, [data[0]].concat(data.slice(1)), container);
    container.fieldlinkPlot = plots[key];
    container.setAttribute("role", "img");
    const last = data[1].length ? data[1][data[1].length - 1] : null;
    container.setAttribute("aria-label", labels.join(", ") + ": " + format(last));
  }

  // Charts follow their container's width (window resized, phone turned).
  const resized = new ResizeObserver((entries) => {
    for (const entry of entries) {
      const plot = plots[entry.target.dataset.metric];
      const width = Math.floor(entry.contentRect.width);
      if (plot && width > 0 && Math.abs(plot.width - width) > 2) {
        plot.setSize({ width: width, height: plot.height });
      }
    }
  });

  async function refresh(root) {
    const note = document.getElementById("chart-note");
    try {
      const items = await fetchHealth(root.dataset.health, range);
      const s = series(items);
      for (const c of root.querySelectorAll("[data-metric]")) {
        const [data, labels] = s[c.dataset.metric];
        draw(c, data, labels);
        resized.observe(c);
      }
      note.textContent = items.length
        ? gettext("Samples:") + " " + items.length
        : gettext("No health reports in this range yet.");
    } catch (e) {
      note.textContent = e.message;
    }
  }

  const STATUS = { online: gettext("online"), offline: gettext("offline"), revoked: gettext("revoked") };

  // The status badge follows the agent (online, offline, revoked) every 10 s.
  async function followStatus(badge) {
    try {
      const agent = await window.Fieldlink.api("GET", badge.dataset.agentUrl);
      if (agent.status !== badge.dataset.status) {
        badge.dataset.status = agent.status;
        badge.className = "badge status-" + agent.status;
        badge.textContent = STATUS[agent.status] || agent.status;
      }
    } catch (e) {
      /* keep the last known status */
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    const badge = document.getElementById("agent-status");
    if (badge) setInterval(() => followStatus(badge), 10000);
    const root = document.getElementById("charts");
    if (root && window.uPlot) {
      refresh(root);
      setInterval(() => refresh(root), 15000);
      for (const b of document.querySelectorAll("[data-range]")) {
        b.addEventListener("click", () => {
          range = parseInt(b.dataset.range, 10);
          for (const o of document.querySelectorAll("[data-range]")) {
            o.setAttribute("aria-pressed", String(o === b));
          }
          refresh(root);
        });
      }
    }
    document.addEventListener("api:done", (ev) => {
      const form = ev.target;
      if (!form.classList.contains("run-form")) return;
      const box = form.querySelector(".result");
      box.textContent = "";
      box.append(window.FieldlinkResults.render(ev.detail));
    });
    document.addEventListener("submit", (ev) => {
      const form = ev.target;
      if (form.classList && form.classList.contains("run-form")) {
        const box = form.querySelector(".result");
        box.textContent = gettext("Running…");
      }
    }, true);
  });
})();
