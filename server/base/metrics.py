"""Prometheus metrics for one HQ instance (own registry, so tests can run
several HQs in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.agents_connected = Gauge(
            "fieldlink_agents_connected",
            "Agents with a live SSH connection",
            registry=self.registry,
        )
        self.reports_ingested = Counter(
            "fieldlink_health_reports_ingested",
            "Health reports stored (duplicates not counted)",
            registry=self.registry,
        )
        self.ingest_lag = Histogram(
            "fieldlink_ingest_lag_seconds",
            "Seconds from an agent sampling a report to HQ committing it",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
            registry=self.registry,
        )
        self.api_requests = Counter(
            "fieldlink_api_requests",
            "HTTP API requests by status code",
            ["status"],
            registry=self.registry,
        )
        self.agent_refusals = Counter(
            "fieldlink_agent_connections_refused",
            "Agent SSH connections refused, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.http_refused = Counter(
            "fieldlink_http_connections_refused",
            "HTTPS connections closed at once: too many unauthenticated ones from their address",
            registry=self.registry,
        )
        self.bad_frames = Counter(
            "fieldlink_bad_frames",
            "Malformed or oversized frames from agents",
            registry=self.registry,
        )

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
