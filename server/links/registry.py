"""Live agent connections held by this HQ replica, by agent id."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import asyncssh

from shared import protocol as p


@dataclass(eq=False)
class AgentLink:
    agent_id: str
    conn: asyncssh.SSHClientConnection
    peer: str
    connected_at: float = field(default_factory=time.time)
    info: dict[str, Any] = field(default_factory=dict)
    writer: Any = None  # the telemetry channel's writer, once open

    def send(self, frame: p.Model) -> bool:
        """Write an HQ->agent frame on the telemetry channel; False if not open."""
        if self.writer is None:
            return False
        try:
            self.writer.write(p.encode(frame))
        except (OSError, asyncssh.Error):
            return False
        return True

    def close(self) -> None:
        self.conn.close()


class Registry:
    def __init__(self) -> None:
        self._links: dict[str, AgentLink] = {}

    def __len__(self) -> int:
        return len(self._links)

    def get(self, agent_id: str) -> AgentLink | None:
        return self._links.get(agent_id)

    def ids(self) -> list[str]:
        return list(self._links)

    def attach(self, link: AgentLink) -> AgentLink | None:
        """Make `link` the agent's connection; returns (and closes) any older one."""
        old = self._links.get(link.agent_id)
        self._links[link.agent_id] = link
        if old is not None and old is not link:
            old.close()
            return old
        return None

    def detach(self, link: AgentLink) -> bool:
        """Forget `link`; True if it was the agent's current connection."""
        if self._links.get(link.agent_id) is link:
            del self._links[link.agent_id]
            return True
        return False

    def disconnect(self, agent_id: str) -> bool:
        link = self._links.get(agent_id)
        if link is None:
            return False
        link.close()
        return True

    def all(self) -> list[AgentLink]:
        return list(self._links.values())
