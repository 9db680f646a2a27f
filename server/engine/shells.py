"""A shell being bridged between a machine and the people at HQ: the SSH
process, its recorder, the watchers following it read-only and a backlog
for those who join late."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import asyncssh

from server.store.recording import Recorder

WATCH_BACKLOG = 64 * 1024


@dataclass(eq=False)
class LiveShell:
    """A shell being bridged: the SSH process, its recorder and its watchers."""

    session_id: str
    process: asyncssh.SSHClientProcess[bytes]
    recorder: Recorder
    record_input: bool
    watchers: set[asyncio.Queue[bytes | None]] = field(default_factory=set)
    backlog: bytearray = field(default_factory=bytearray)

    def broadcast(self, data: bytes) -> None:
        self.backlog += data
        if len(self.backlog) > WATCH_BACKLOG:
            del self.backlog[: len(self.backlog) - WATCH_BACKLOG]
        for queue in list(self.watchers):
            if queue.qsize() < 1000:
                queue.put_nowait(data)

    def close(self) -> None:
        for queue in list(self.watchers):
            queue.put_nowait(None)
        self.process.close()
