"""HQ's SSH edge: the reverse-SSH listener agents dial into, the registry of
live agent connections, telemetry ingest and dispatch of HQ->agent requests."""
