"""The one place Fieldlink's version lives (read by hatchling and at run time)."""

__version__ = "0.1.0"
PROTOCOL_VERSION = 1
