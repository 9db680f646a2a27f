"""Code both the agent and HQ import: the wire protocol, tokens, logging.

Nothing in this package imports `agent` or `server`.
"""

from shared import knownwarnings
from shared.version import PROTOCOL_VERSION, __version__

knownwarnings.install()

__all__ = ["PROTOCOL_VERSION", "__version__"]
