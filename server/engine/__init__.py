"""HQ's long-running parts: the job queue and runs on agents, changes in
progress, alerting, the SLA monitor, remote sessions, webhooks and health
ingestion. Each is a class that `server.hq` builds with exactly what it needs;
none imports an edge (api, console, gateway, client, control)."""
