"""Outbound webhooks for ticket and problem events, from a durable outbox.

Deliveries are rows written in the transaction of the event they report, so
an event is never lost and never sent for a change that rolled back. A
sender posts due rows, signed:

    X-Fieldlink-Event: ticket.create
    X-Fieldlink-Delivery: <outbox id>
    X-Fieldlink-Timestamp: <unix seconds>
    X-Fieldlink-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>

and retries failures with exponential backoff (up to a day) before giving up.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
from datetime import timedelta

import aiohttp
import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.auth.crypto import DecryptError, unseal
from server.store.models import OutboxItem, Webhook, utcnow

log = structlog.get_logger(__name__)

MAX_ATTEMPTS = 12
BATCH = 50
POLL_SECONDS = 1.0


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(2**attempts * 5, 6 * 3600))


def secret_of(master_key: bytes, hook: Webhook) -> bytes:
    return unseal(master_key, hook.secret_enc, f"webhook:{hook.id}".encode())


class Sender:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], master_key: bytes) -> None:
        self._sessions = sessions
        self._master_key = master_key
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                try:
                    sent = await self.deliver_due(http)
                except Exception:
                    log.exception("webhook_sender_failed")
                    sent = 0
                if sent == 0:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)

    async def deliver_due(self, http: aiohttp.ClientSession) -> int:
        now = utcnow()
        async with self._sessions() as session:
            rows = (
                await session.execute(
                    select(OutboxItem, Webhook)
                    .join(Webhook, Webhook.id == OutboxItem.webhook_id)
                    .where(
                        OutboxItem.delivered_at.is_(None),
                        OutboxItem.failed_at.is_(None),
                        OutboxItem.next_attempt_at <= now,
                    )
                    .order_by(OutboxItem.id)
                    .limit(BATCH)
                )
            ).all()
        for item, hook in rows:
            await self._deliver(http, item, hook)
        return len(rows)

    async def _deliver(self, http: aiohttp.ClientSession, item: OutboxItem, hook: Webhook) -> None:
        body = json.dumps(item.payload, separators=(",", ":"), default=str).encode()
        stamp = int(time.time())
        error: str | None = None
        try:
            secret = secret_of(self._master_key, hook)
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "fieldlink-webhooks",
                "X-Fieldlink-Event": item.event,
                "X-Fieldlink-Delivery": str(item.id),
                "X-Fieldlink-Timestamp": str(stamp),
                "X-Fieldlink-Signature": sign(secret, stamp, body),
            }
            async with http.post(hook.url, data=body, headers=headers) as resp:
                if resp.status >= 300:
                    error = f"HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError, OSError, DecryptError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        async with self._sessions.begin() as session:
            row = await session.get(OutboxItem, item.id)
            if row is None:
                return
            row.attempts += 1
            if error is None:
                row.delivered_at = utcnow()
                row.last_error = None
            else:
                row.last_error = error
                if row.attempts >= MAX_ATTEMPTS:
                    row.failed_at = utcnow()
                else:
                    row.next_attempt_at = utcnow() + backoff(row.attempts)
        if error is None:
            log.info("webhook_delivered", webhook_id=hook.id, event=item.event, delivery=item.id)
        else:
            log.warning(
                "webhook_failed",
                webhook_id=hook.id,
                event=item.event,
                delivery=item.id,
                attempts=item.attempts + 1,
                error=error,
            )
