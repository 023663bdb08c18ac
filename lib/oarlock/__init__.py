"""oarlock: a runtime for integration components whose OAuth2 credentials keep themselves alive."""

from oarlock.errors import OarlockError
from oarlock.protocol.message import Message

__all__ = ["Message", "OarlockError", "__version__"]
__version__ = "0.1.0"
