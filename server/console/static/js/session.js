// A session's page: its state followed live (long polling GET
// /api/v1/sessions/{id}?wait=), the in-browser terminal on the API's
// WebSocket (binary frames carry output and input, text frames JSON control),
// read-only watch (?watch=1), and recording replay with its timing.
"use strict";
(function () {
  const { api, gettext, showError } = window.Fieldlink;

  function makeTerminal(el, readOnly) {
    const term = new window.Terminal({
      convertEol: false,
      cursorBlink: !readOnly,
      disableStdin: readOnly,
      fontSize: 14,
      scrollback: 5000,
    });
    const fit = new window.FitAddon.FitAddon();
    term.loadAddon(fit);
    if (window.CanvasAddon) term.loadAddon(new window.CanvasAddon.CanvasAddon());
    el.hidden = false;
    term.open(el);
    try {
      fit.fit();
    } catch (e) {
      /* a hidden element has no size yet */
    }
    window.addEventListener("resize", () => {
      try {
        fit.fit();
      } catch (e) {
        /* ignore */
      }
    });
    return term;
  }

  function connect(el, note, readOnly) {
    const term = makeTerminal(el, readOnly);
    const proto = window.location.protocol === "https:" ? "wss://" : "ws://";
    const sep = el.dataset.url.includes("?") ? "&" : "?";
    const url = proto + window.location.host + el.dataset.url + sep + "cols=" + term.cols + "&rows=" + term.rows;
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    const encoder = new TextEncoder();
    ws.addEventListener("message", (ev) => {
      if (typeof ev.data === "string") {
        const msg = JSON.parse(ev.data);
        if (msg.type === "closed" && note) note.textContent = gettext("Closed:") + " " + msg.reason;
        if (msg.type === "status" && note) note.textContent = gettext("Connected.");
      } else {
        term.write(new Uint8Array(ev.data));
      }
    });
    ws.addEventListener("close", () => {
      if (note && !note.textContent.startsWith(gettext("Closed:"))) note.textContent = gettext("Disconnected.");
    });
    if (!readOnly) {
      term.onData((data) => {
        if (ws.readyState === WebSocket.OPEN) ws.send(encoder.encode(data));
      });
      term.onResize(({ cols, rows }) => {
        if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "resize", cols, rows }));
      });
      term.focus();
    }
    el.term = term;
    return ws;
  }

  function showState(root, s) {
    root.dataset.state = s.state;
    document.getElementById("session-state").textContent = window.Fieldlink.label("session_state", s.state);
    const consent = document.getElementById("session-consent");
    if (consent && s.consent_by) consent.textContent = s.consent_by + (s.consent_via ? " (" + window.Fieldlink.label("consent_via", s.consent_via) + ")" : "");
    const ended = document.getElementById("session-ended");
    if (ended && s.ended_at) {
      ended.textContent = window.Fieldlink.formatTime(new Date(s.ended_at)) + " " + (s.end_reason || "");
    }
    const live = JSON.parse(root.dataset.liveStates);
    if (!live.includes(s.state)) {
      for (const el of root.querySelectorAll("[data-live-only]")) {
        if (!el.querySelector(".terminal:not([hidden])")) el.hidden = true;
      }
    }
    const open = document.getElementById("open-terminal");
    if (open && s.state === "active" && !document.getElementById("terminal").term) {
      open.hidden = false;
      document.getElementById("term-note").textContent = gettext("The session is active.");
    }
  }

  async function follow(root) {
    let state = root.dataset.state;
    const live = JSON.parse(root.dataset.liveStates);
    while (live.includes(state)) {
      try {
        const s = await api(
          "GET",
          "/api/v1/sessions/" + encodeURIComponent(root.dataset.id) + "?wait=25&state=" + encodeURIComponent(state),
        );
        state = s.state;
        showState(root, s);
      } catch (e) {
        await new Promise((r) => setTimeout(r, 3000));
      }
    }
  }

  async function replay(button) {
    const note = document.getElementById("replay-note");
    const screen = document.getElementById("replay-screen");
    note.textContent = gettext("Loading…");
    const resp = await fetch(button.dataset.url, { credentials: "same-origin" });
    if (!resp.ok) {
      note.textContent = gettext("The recording could not be read.");
      return;
    }
    const lines = (await resp.text()).split("\n").filter(Boolean);
    const header = JSON.parse(lines[0]);
    const events = lines.slice(1).map((l) => JSON.parse(l)).filter((e) => e[1] === "o");
    if (screen.term) screen.term.dispose();
    screen.hidden = false;
    const term = new window.Terminal({ cols: header.width || 80, rows: header.height || 24, disableStdin: true });
    if (window.CanvasAddon) term.loadAddon(new window.CanvasAddon.CanvasAddon());
    term.open(screen);
    screen.term = term;
    const speed = parseFloat(document.getElementById("replay-speed").value) || 1;
    note.textContent = gettext("Playing…");
    let last = 0;
    for (const [t, , data] of events) {
      const gap = Math.min(Math.max(t - last, 0), 2) / speed;
      last = t;
      if (gap > 0.001) await new Promise((r) => setTimeout(r, gap * 1000));
      term.write(data);
    }
    note.textContent = gettext("Replay finished.");
    screen.dataset.done = "1";
  }

  document.addEventListener("DOMContentLoaded", () => {
    const root = document.getElementById("session");
    if (!root) return;
    follow(root);
    showState(root, { state: root.dataset.state });
    const open = document.getElementById("open-terminal");
    if (open) {
      open.addEventListener("click", () => {
        open.hidden = true;
        connect(document.getElementById("terminal"), document.getElementById("term-note"), false);
      });
    }
    const watch = document.getElementById("open-watch");
    if (watch) {
      watch.addEventListener("click", () => {
        watch.hidden = true;
        connect(document.getElementById("terminal"), null, true);
      });
    }
    const rep = document.getElementById("replay");
    if (rep) rep.addEventListener("click", () => replay(rep));
    const accept = document.getElementById("accept-form");
    if (accept) {
      accept.addEventListener("submit", async (ev) => {
        ev.preventDefault();
        const code = window.Fieldlink.formJson(accept).code;
        try {
          if (code) await api("POST", "/api/v1/auth/step-up", { code: code });
          await api("POST", "/api/v1/sessions/" + encodeURIComponent(accept.dataset.session) + "/accept");
          window.location.reload();
        } catch (problem) {
          showError(accept, problem);
        }
      });
    }
  });
})();
