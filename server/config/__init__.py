"""What HQ is told at start-up: its settings (read once, frozen) and its data
directory (keys, certificates, the SQLite file, the control socket)."""
