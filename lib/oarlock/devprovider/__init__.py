"""The dev provider: a real local OAuth2 server and protected API for tests, benchmarks and offline work.

``DevProvider(clock=...)`` decides token expiry on an injectable clock (epoch seconds,
default ``time.time``); ``ManualClock`` is a thread-safe clock a test moves by hand
(``clock.advance(seconds)``) to expire tokens without sleeping.
"""

from oarlock.devprovider.server import DevProvider
from oarlock.devprovider.state import ManualClock

__all__ = ["DevProvider", "ManualClock"]
