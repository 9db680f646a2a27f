"""Logging set-up shared by agent and HQ: structlog, JSON in production,
readable key-value lines on a terminal.

A redaction processor drops the values of keys that name secrets, so a
careless `log.info("x", token=...)` still cannot leak one.

A long-running daemon (`fieldlink-agent run`) logs through a `SafeSink`: a
log line is handed to a bounded queue and written by a thread of its own, so
a log file on a full disk (ENOSPC), a failing device (EIO) or a stalled one
never raises into, or blocks, the code that logs (the link, the sampler, the
spool). Lines that cannot be written are dropped and counted; writing is
tried again a moment later, and the first line that gets through is preceded
by `log_lines_dropped` with the count.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import sys
import threading
import time
from collections.abc import MutableMapping
from typing import Any

import structlog

_SECRET_WORDS = ("password", "secret", "token", "private_key", "totp", "authorization", "cookie")


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Replace the value of any key that names a secret with `[redacted]`."""
    for key in list(event_dict):
        lowered = key.lower()
        if any(word in lowered for word in _SECRET_WORDS) and not lowered.endswith(
            ("_id", "_count", "_fingerprint")
        ):
            event_dict[key] = "[redacted]"
    return event_dict


class SafeSink:
    """Writes log lines to a file descriptor from a thread of its own; `write`
    never raises and never waits for the file. See the module docstring."""

    def __init__(
        self, fd: int, *, json: bool = True, max_lines: int = 10_000, retry: float = 1.0
    ) -> None:
        self._fd = fd
        self._json = json
        self._max = max_lines
        self._retry = retry
        self._lines: collections.deque[str] = collections.deque()
        self._cond = threading.Condition()
        self._busy = False  # the writer holds lines it has taken off the queue
        self._closed = False
        self.dropped = 0  # lines lost (the file failed, or the queue was full)
        self._unreported = 0  # lost since the last `log_lines_dropped` line
        self.error: str | None = None  # why writes fail now; None when they work
        self.error_since: float | None = None
        self._thread = threading.Thread(target=self._run, name="fieldlink-log", daemon=True)
        self._thread.start()

    def write(self, line: str) -> None:
        with self._cond:
            if self._closed or len(self._lines) >= self._max:
                self._lost(1)
                return
            self._lines.append(line)
            self._cond.notify()

    def _lost(self, count: int) -> None:
        self.dropped += count
        self._unreported += count

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._lines and not self._closed:
                    self._cond.wait()
                if not self._lines:
                    return
                batch = list(self._lines)
                self._lines.clear()
                self._busy = True
                unreported = self._unreported
            data = "".join(line + "\n" for line in batch).encode("utf-8", "replace")
            if unreported:
                data = self._gap_line(unreported).encode() + data
            failed = self._write_all(data)
            if failed is not None:
                failed = min(failed, len(batch))
            with self._cond:
                self._busy = False
                if failed is None:
                    if unreported:
                        self._unreported -= unreported
                    self._cond.notify_all()
                    continue
                self._lost(failed)
                self._cond.notify_all()
                if self._closed:
                    return
                self._cond.wait(self._retry)  # try again later, not in a tight loop

    def _gap_line(self, count: int) -> str:
        if self._json:
            return f'{{"event": "log_lines_dropped", "count": {count}, "log_level": "warning"}}\n'
        return f"[warning  ] log_lines_dropped              count={count}\n"

    def _write_all(self, data: bytes) -> int | None:
        """Write `data`; None if it all went, else how many lines were lost."""
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._fd, view) :]
            except InterruptedError:
                continue
            except OSError as exc:
                if self.error is None:
                    self.error_since = time.time()
                self.error = exc.strerror or str(exc)
                return max(1, bytes(view).count(b"\n"))
        if self.error is not None:
            self.error = None
            self.error_since = None
        return None

    def flush(self, timeout: float = 2.0) -> None:
        """Wait (up to `timeout` s) until the queued lines are written or dropped."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while (self._lines or self._busy) and time.monotonic() < deadline:
                self._cond.wait(max(0.0, deadline - time.monotonic()))

    def close(self, timeout: float = 2.0) -> None:
        self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class SinkLogger:
    """A structlog logger writing rendered lines to a `SafeSink`."""

    def __init__(self, sink: SafeSink) -> None:
        self._sink = sink

    def msg(self, message: str) -> None:
        self._sink.write(message)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


class _SinkHandler(logging.Handler):
    """Standard-library records (asyncssh's) into the same sink."""

    def __init__(self, sink: SafeSink) -> None:
        super().__init__(logging.WARNING)
        self._sink = sink
        self.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._sink.write(self.format(record))
        except Exception:  # a log record must never raise into its caller
            self._sink.write(f"unformattable log record from {record.name}")


_sink: SafeSink | None = None


def sink() -> SafeSink | None:
    """The process's `SafeSink`, if `configure(safe=True)` made one."""
    return _sink


def configure(
    *, json: bool | None = None, level: str = "info", stream: Any = None, safe: bool = False
) -> None:
    """Configure structlog once per process. `json=None` picks JSON unless on a TTY.
    `safe` (for daemons): write through a `SafeSink` on the stream's file
    descriptor, so a failing log file never raises into or blocks the caller."""
    global _sink
    out = stream if stream is not None else sys.stderr
    if json is None:
        json = not out.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(
            colors=out.isatty(),
            # Never print local variables in tracebacks: they may hold secrets.
            exception_formatter=structlog.dev.plain_traceback,
        )
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=_factory(out, safe, json),
        cache_logger_on_first_use=False,
    )
    # asyncssh logs through the stdlib; keep it quiet unless something is wrong.
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    if _sink is not None:
        root = logging.getLogger()
        root.handlers = [h for h in root.handlers if not isinstance(h, _SinkHandler)]
        root.addHandler(_SinkHandler(_sink))


def _factory(out: Any, safe: bool, json: bool) -> Any:
    global _sink
    if not safe:
        return structlog.PrintLoggerFactory(out)
    try:
        fd = out.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file: write as before
        return structlog.PrintLoggerFactory(out)
    if _sink is None or _sink._fd != fd:
        _sink = SafeSink(fd, json=json)
        atexit.register(_sink.close)
    made = _sink
    return lambda *_args: SinkLogger(made)
