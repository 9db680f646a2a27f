"""The key directory: which SSH host key belongs to which enrolled, unrevoked
agent. The gateway admits only these keys; enrollment adds one, a revocation
removes one and cuts the agent's live link off at once."""

from __future__ import annotations

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.links.registry import Registry
from server.store import fleet

log = structlog.get_logger(__name__)


class KeyDirectory:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], links: Registry) -> None:
        self._sessions = sessions
        self._links = links
        self.keys: dict[str, str] = {}  # key fingerprint -> agent id

    def __contains__(self, fingerprint: str) -> bool:
        return fingerprint in self.keys

    async def refresh(self) -> None:
        """Re-read the directory (revocations made by other HQ replicas too)."""
        async with self._sessions() as session:
            keys = await fleet.active_keys(session)
        self.keys = keys
        allowed = set(keys.values())
        for link in self._links.all():
            if link.agent_id not in allowed:
                log.info("agent_cut_off", agent_id=link.agent_id, reason="revoked")
                link.close()

    def enrolled(self, fingerprint: str, agent_id: str) -> None:
        self.keys[fingerprint] = agent_id

    def revoked(self, agent_id: str) -> None:
        self.keys = {fp: a for fp, a in self.keys.items() if a != agent_id}
        if self._links.disconnect(agent_id):
            log.info("agent_cut_off", agent_id=agent_id, reason="revoked")
