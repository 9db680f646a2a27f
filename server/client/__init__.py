"""The engineer's command line: talks to HQ's HTTPS API (never to the
database), pinned to HQ's TLS certificate fingerprint."""
