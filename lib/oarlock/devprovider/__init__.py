"""The dev provider: a real local OAuth2 server and protected API for tests, benchmarks and offline work."""

from oarlock.devprovider.server import DevProvider

__all__ = ["DevProvider"]
