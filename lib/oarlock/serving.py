"""An HTTP server from :mod:`http.server` answering on a daemon thread until :meth:`ServerThread.close`.

The metrics server, the keys service's account route and the login's redirect listener each run one;
this is where the thread is started and the server is shut down and its socket freed.
"""

from __future__ import annotations

import socketserver
import threading


class ServerThread:
    """``server`` answering on a daemon thread named ``name``; ``host``, ``port`` and ``url`` say where."""

    def __init__(self, server: socketserver.TCPServer, *, name: str, poll_interval: float = 0.05) -> None:
        self.server = server
        self.host, self.port = str(server.server_address[0]), int(server.server_address[1])
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": poll_interval}, name=name, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        """Stop answering and free the port."""
        self.server.shutdown()
        self.server.server_close()
