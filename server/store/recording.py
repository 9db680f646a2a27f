"""Session recordings: asciicast v2, encrypted at rest.

The plain recording is an asciicast v2 stream (a JSON header line, then one
`[time, code, data]` line per event: "o" output, "i" input, "r" resize).
It is written as a series of chunks, each sealed with AES-256-GCM under HQ's
master key, the associated data binding it to its session and position:

    b"FLREC1\\n" + ( u32 length + sealed chunk )* + ( u32 length + sealed end chunk )

so chunks cannot be reordered, moved to another session, dropped or cut off
without detection. The SHA-256 of the plain recording goes to the session row
and the audit trail when the recording is closed.

Writes that fail raise RecordingError; the session then ends (fail closed).
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import struct
import time
from pathlib import Path
from typing import Any

from server.auth.crypto import DecryptError, seal, unseal

MAGIC = b"FLREC1\n"
FLUSH_BYTES = 64 * 1024


class RecordingError(Exception):
    """The recording cannot be written, or read back intact."""


def _aad(session_id: str, index: int, last: bool) -> bytes:
    return f"rec:{session_id}:{index}:{'end' if last else 'more'}".encode()


class Recorder:
    def __init__(self, path: Path, key: bytes, session_id: str, header: dict[str, Any]) -> None:
        self.path = path
        self._key = key
        self._session = session_id
        self._index = 0
        self._start = time.monotonic()
        self._buf = bytearray()
        self._sha = hashlib.sha256()
        self._size = 0
        self._decoders = {
            code: codecs.getincrementaldecoder("utf-8")("replace") for code in ("o", "i")
        }
        self.closed = False
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            self._file = os.fdopen(fd, "wb")
            self._file.write(MAGIC)
        except OSError as exc:
            raise RecordingError(f"cannot create the recording: {exc}") from exc
        self._add(json.dumps(header, separators=(",", ":")).encode() + b"\n")

    def _add(self, line: bytes) -> None:
        self._buf += line
        self._sha.update(line)
        self._size += len(line)
        if len(self._buf) >= FLUSH_BYTES:
            self.flush()

    def _event(self, code: str, data: str) -> None:
        if self.closed:
            raise RecordingError("the recording is closed")
        at = round(time.monotonic() - self._start, 6)
        self._add(json.dumps([at, code, data], ensure_ascii=False).encode() + b"\n")

    def output(self, data: bytes) -> None:
        text = self._decoders["o"].decode(data)
        if text:
            self._event("o", text)

    def input(self, data: bytes) -> None:
        text = self._decoders["i"].decode(data)
        if text:
            self._event("i", text)

    def resize(self, cols: int, rows: int) -> None:
        self._event("r", f"{cols}x{rows}")

    def _write_chunk(self, data: bytes | bytearray, last: bool) -> None:
        sealed = seal(self._key, bytes(data), _aad(self._session, self._index, last))
        try:
            self._file.write(struct.pack(">I", len(sealed)) + sealed)
            self._file.flush()
        except OSError as exc:
            raise RecordingError(f"cannot write the recording: {exc}") from exc
        self._index += 1

    def flush(self) -> None:
        if self._buf:
            self._write_chunk(self._buf, last=False)
            self._buf.clear()

    def close(self) -> tuple[str, int]:
        """Seal the rest and the end marker; (SHA-256 of the plain cast, its size)."""
        if not self.closed:
            self.closed = True
            self._write_chunk(self._buf, last=True)
            self._buf.clear()
            try:
                os.fsync(self._file.fileno())
                self._file.close()
            except OSError as exc:
                raise RecordingError(f"cannot finish the recording: {exc}") from exc
        return self._sha.hexdigest(), self._size


def read(path: Path, key: bytes, session_id: str) -> bytes:
    """The plain asciicast; RecordingError if any chunk is missing, moved,
    edited or the end is cut off."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RecordingError(f"cannot read the recording: {exc}") from exc
    if not raw.startswith(MAGIC):
        raise RecordingError("not a Fieldlink recording")
    pos, index, out = len(MAGIC), 0, bytearray()
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise RecordingError("the recording is cut off")
        (length,) = struct.unpack(">I", raw[pos : pos + 4])
        chunk = raw[pos + 4 : pos + 4 + length]
        pos += 4 + length
        if len(chunk) != length:
            raise RecordingError("the recording is cut off")
        last = pos >= len(raw)
        try:
            out += unseal(key, chunk, _aad(session_id, index, last))
        except DecryptError:
            raise RecordingError(
                f"chunk {index} does not verify: the recording was altered"
            ) from None
        index += 1
    if index == 0:
        raise RecordingError("the recording is empty")
    return bytes(out)
