"""HQ's SSH edge: the reverse-SSH listener agents dial into and the telemetry
channel, whose frames are decoded and handed to operations and the engine."""
