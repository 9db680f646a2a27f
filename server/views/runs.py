"""A run's result as the API answers it and the console renders it."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from server.auth.principal import Principal
from server.store.models import RunRecord
from server.views.rows import row_in_scope


async def readable_result(session: AsyncSession, who: Principal, result_id: str) -> RunRecord:
    """A stored run result, if the caller holds diag:run on its site; else 404."""
    return await row_in_scope(session, who, RunRecord, result_id, "diag:run", lambda r: r.site_id)


def result_json(record: RunRecord) -> dict[str, Any]:
    return {
        "result_id": record.id,
        "agent_id": record.agent_id,
        "name": record.name,
        "tier": record.tier,
        "params": record.params,
        "status": record.status,
        "exit_code": record.exit_code,
        "stdout": record.stdout,
        "stderr": record.stderr,
        "truncated": record.truncated,
        "data": record.data,
        "reason": record.reason,
        "ticket_id": record.ticket_id,
        "job_id": record.job_id,
        "requested_by": record.requested_by_name,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
    }
