"""A run's result as the API answers it and the console renders it."""

from __future__ import annotations

from typing import Any

from server.store.models import RunRecord


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
