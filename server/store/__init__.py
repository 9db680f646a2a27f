"""Storage: engine set-up, tables, migrations and queries. Decides nothing."""
