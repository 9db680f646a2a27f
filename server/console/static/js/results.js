// Rendering a run result readably: a table where `data` has columns and rows,
// key/value lists for flat objects, and the output as text. Shared by the
// machine, job and ticket pages. Built with DOM calls only (no HTML strings).
//
// Results name their fields with identifiers (`inodes_percent`, `rx_bytes`):
// people read labels with units. The built-in catalog's fields have labels
// below (translated through the console's catalog); any other field gets one
// made from its name, its unit read from the suffix (docs/agent-runs.md:
// `_percent`, `_bytes`, `_seconds`, `_ms`, `_mbps`, ...), so a new catalog
// entry reads well before anyone adds a label for it.
"use strict";
(function () {
  const gettext = window.Fieldlink.gettext;

  // field name -> label (without unit: the unit comes from the name, see UNITS)
  const LABELS = {
    mount: gettext("Mount point"),
    device: gettext("Device"),
    fstype: gettext("File system"),
    total: gettext("Total"),
    used: gettext("Used"),
    free: gettext("Free"),
    available: gettext("Available"),
    percent: gettext("Space used"),
    inodes_percent: gettext("Inodes used"),
    path: gettext("Path"),
    bytes: gettext("Size"),
    size: gettext("Size"),
    modified: gettext("Modified"),
    files: gettext("Files"),
    dirs: gettext("Directories"),
    name: gettext("Name"),
    up: gettext("Up"),
    speed_mbps: gettext("Speed"),
    mtu: gettext("MTU"),
    mac: gettext("MAC address"),
    addresses: gettext("Addresses"),
    address: gettext("Address"),
    rx_bytes: gettext("Received"),
    tx_bytes: gettext("Sent"),
    errors_in: gettext("Errors in"),
    errors_out: gettext("Errors out"),
    drops_in: gettext("Drops in"),
    drops_out: gettext("Drops out"),
    proto: gettext("Protocol"),
    local: gettext("Local address"),
    remote: gettext("Remote address"),
    state: gettext("State"),
    pid: gettext("PID"),
    process: gettext("Process"),
    user: gettext("User"),
    users: gettext("Users"),
    cpu_percent: gettext("CPU"),
    memory_percent: gettext("Memory use"),
    rss: gettext("Resident memory"),
    status: gettext("Status"),
    command: gettext("Command"),
    unit: gettext("Unit"),
    load: gettext("Loaded"),
    active: gettext("Active"),
    sub: gettext("Sub-state"),
    description: gettext("Description"),
    sensor: gettext("Sensor"),
    label: gettext("Label"),
    celsius: gettext("Temperature"),
    high: gettext("High"),
    critical: gettext("Critical"),
    rpm: gettext("Fan speed"),
    temperatures: gettext("Temperatures"),
    fans: gettext("Fans"),
    battery: gettext("Battery"),
    plugged: gettext("Plugged in"),
    seconds_left: gettext("Time left"),
    hostname: gettext("Host name"),
    os: gettext("Operating system"),
    kernel: gettext("Kernel"),
    arch: gettext("Architecture"),
    cpu_model: gettext("CPU model"),
    cpu_cores: gettext("CPU cores"),
    boot_time: gettext("Booted"),
    uptime_seconds: gettext("Uptime"),
    memory_total: gettext("Memory"),
    memory_available: gettext("Memory available"),
    swap_total: gettext("Swap"),
    swap_percent: gettext("Swap used"),
    root_disk_percent: gettext("Root disk used"),
    process_count: gettext("Processes"),
    ips: gettext("Addresses"),
    load_average: gettext("Load average"),
    load_1m: gettext("Load (1 min)"),
    load_5m: gettext("Load (5 min)"),
    load_15m: gettext("Load (15 min)"),
    host: gettext("Host"),
    port: gettext("Port"),
    connected: gettext("Connected"),
    seconds: gettext("Time taken"),
    error: gettext("Error"),
    errors: gettext("Errors"),
    method: gettext("Method"),
    sent: gettext("Sent"),
    received: gettext("Received"),
    loss_percent: gettext("Packet loss"),
    rtt_ms: gettext("Round trip"),
    replies: gettext("Replies"),
    seq: gettext("Sequence"),
    result: gettext("Result"),
    ms: gettext("Time"),
    hop: gettext("Hop"),
    tool: gettext("Tool"),
    type: gettext("Type"),
    answers: gettext("Answers"),
    resolver: gettext("Resolver"),
    nameservers: gettext("Name servers"),
    total_connections: gettext("Connections"),
    pattern: gettext("Pattern"),
    lines: gettext("Lines"),
    scanned_lines: gettext("Lines scanned"),
    source: gettext("Source"),
    scanned_entries: gettext("Entries scanned"),
    scanned_bytes: gettext("Size scanned"),
    incomplete: gettext("Stopped early"),
    largest: gettext("Largest files"),
    dry_run: gettext("Dry run"),
    min_age_hours: gettext("Minimum age"),
    dir: gettext("Directory"),
    signal: gettext("Signal"),
    exited: gettext("Exited"),
    flushed: gettext("Flushed"),
    shell: gettext("Shell"),
    synchronized: gettext("Synchronised"),
    kernel_synchronized: gettext("Kernel clock synchronised"),
    kernel_max_error_seconds: gettext("Kernel clock maximum error"),
    ntp_service: gettext("NTP service"),
    timezone: gettext("Time zone"),
    offset_seconds: gettext("Offset"),
    server: gettext("Server"),
    clock_utc: gettext("Clock (UTC)"),
    manager: gettext("Package manager"),
    count: gettext("Count"),
    lists_updated: gettext("Package lists updated"),
    package: gettext("Package"),
    version: gettext("Version"),
    current: gettext("Installed version"),
    candidate: gettext("New version"),
    sort: gettext("Sorted by"),
    min: gettext("Minimum"),
    avg: gettext("Average"),
    max: gettext("Maximum"),
    sub_state: gettext("Sub-state"),
    active_state: gettext("Active state"),
    load_state: gettext("Load state"),
    main_pid: gettext("Main PID"),
    exit_code: gettext("Exit code"),
  };

  // name suffix (or whole name) -> [unit shown in the header, how cells read]
  const UNITS = [
    [/(^|_)percent$/, "%", "number"],
    [/^(total|used|free|available|size|bytes|rss|read_bytes|write_bytes|memory_total|memory_available|swap_total)$|_bytes$/, "", "bytes"],
    [/(^|_)seconds(_left)?$|^seconds_left$/, "", "duration"],
    [/(^|_)ms$/, "ms", "number"],
    [/_mbps$/, "Mbit/s", "number"],
    [/^celsius$|^(high|critical)$/, "°C", "number"],
    [/^rpm$/, "rpm", "number"],
    [/_hours$/, "h", "number"],
  ];
  const ISO_TIME = /^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}/;
  const SUFFIX = /_(percent|bytes|seconds|ms|mbps|hours)$/;

  function unitOf(name) {
    for (const [pattern, unit, kind] of UNITS) {
      if (pattern.test(name)) return { unit: unit, kind: kind };
    }
    return { unit: "", kind: "" };
  }

  function labelOf(name) {
    const key = String(name);
    let text = LABELS[key];
    if (!text) {
      const base = key.replace(SUFFIX, "").replace(/_/g, " ").trim() || key;
      text = base.charAt(0).toUpperCase() + base.slice(1);
    }
    const unit = unitOf(key).unit;
    return unit ? text + " (" + unit + ")" : text;
  }

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function human(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (Math.abs(n) >= 1024 && i < units.length - 1) {
      n /= 1024;
      i++;
    }
    return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
  }

  function duration(s) {
    const lang = document.body.dataset.lang || undefined;
    if (Math.abs(s) < 1) return s.toLocaleString(lang, { maximumFractionDigits: 6 }) + " s";
    if (s < 120) return Math.round(s) + " s";
    if (s < 7200) return Math.round(s / 60) + " min";
    if (s < 172800) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
    return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
  }

  // One value as text, formatted for the field it is in.
  function cell(value, name) {
    if (value === null || value === undefined || value === "") return "—";
    if (typeof value === "boolean") return value ? gettext("yes") : gettext("no");
    const kind = name === undefined ? "" : unitOf(String(name)).kind;
    if (typeof value === "number") {
      if (kind === "bytes") return human(value);
      if (kind === "duration") return duration(value);
      return value.toLocaleString(document.body.dataset.lang || undefined, {
        maximumFractionDigits: 3,
      });
    }
    if (typeof value === "string" && ISO_TIME.test(value) && !isNaN(Date.parse(value))) {
      return window.Fieldlink.formatTime(new Date(value));
    }
    if (Array.isArray(value)) return value.length ? value.map((v) => cell(v)).join(", ") : "—";
    if (typeof value === "object") {
      return Object.entries(value)
        .map(([k, v]) => labelOf(k) + ": " + cell(v, k))
        .join(" · ");
    }
    return String(value);
  }

  function table(data) {
    const wrap = el("div", null, "table-wrap");
    wrap.tabIndex = 0;
    const t = el("table");
    t.className = "result-table";
    const head = el("thead");
    const tr = el("tr");
    const numeric = data.columns.map((c, i) =>
      data.rows.length > 0 && data.rows.every((r) => r[i] === null || typeof r[i] === "number"),
    );
    data.columns.forEach((c, i) => {
      const th = el("th", labelOf(c), numeric[i] ? "num" : "");
      th.scope = "col";
      th.dataset.field = String(c);
      tr.append(th);
    });
    head.append(tr);
    const body = el("tbody");
    for (const row of data.rows) {
      const r = el("tr");
      row.forEach((v, i) => {
        const td = el("td", cell(v, data.columns[i]), typeof v === "number" ? "num" : "");
        if (typeof v === "number" && unitOf(String(data.columns[i])).kind) td.title = String(v);
        r.append(td);
      });
      body.append(r);
    }
    t.append(head, body);
    wrap.append(t);
    return wrap;
  }

  const STATUS = {
    ok: gettext("ok"),
    failed: gettext("failed"),
    timeout: gettext("timed out"),
    refused: gettext("refused"),
    interrupted: gettext("interrupted"),
  };

  function render(result) {
    const box = el("div", null, "run-result");
    const head = el("p");
    head.append(
      el("span", STATUS[result.status] || result.status, "badge status-" + result.status),
      el("code", " " + result.name),
    );
    if (result.exit_code !== null && result.exit_code !== undefined) {
      head.append(document.createTextNode(" · " + gettext("exit code") + " " + result.exit_code));
    }
    if (result.truncated) head.append(el("span", " " + gettext("(output truncated)"), "warn"));
    box.append(head);
    if (result.reason) box.append(el("p", result.reason, "error"));
    const data = result.data;
    if (data && Array.isArray(data.columns) && Array.isArray(data.rows)) {
      box.append(table(data));
    }
    if (data && typeof data === "object") {
      const tables = Object.entries(data).filter(
        ([, v]) => v && Array.isArray(v.columns) && Array.isArray(v.rows),
      );
      for (const [name, v] of tables) {
        box.append(el("h4", labelOf(name)), table(v));
      }
      const flat = Object.entries(data).filter(
        ([k, v]) => k !== "columns" && k !== "rows" && !(v && v.columns),
      );
      if (flat.length) {
        const dl = el("dl", null, "facts");
        for (const [k, v] of flat) {
          const dt = el("dt", labelOf(k));
          dt.dataset.field = k;
          dl.append(dt, el("dd", cell(v, k)));
        }
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

  window.FieldlinkResults = { render, labelOf, cell };
})();
