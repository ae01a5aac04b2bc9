"""MetricsEndpoint: one process's metrics served over HTTP for Prometheus to scrape.

``MetricsEndpoint(registry, "0.0.0.0:9464").start()`` serves ``registry`` on ``http://HOST:PORT/metrics`` from a
background thread (prometheus_client's own server), until :meth:`MetricsEndpoint.stop`. Port 0 takes a free
port; :attr:`MetricsEndpoint.address` is the bound one.
"""

from __future__ import annotations

import enum
import threading
from types import TracebackType
from typing import Self
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

__all__ = ["MetricsEndpoint", "parse_listen"]


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as ``(host, port)``; raises ValueError when malformed."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{listen!r} is not HOST:PORT")
    return host.removeprefix("[").removesuffix("]"), int(port)


class _State(enum.Enum):
    NEW = "new"
    SERVING = "serving"
    STOPPED = "stopped"


class MetricsEndpoint:
    """Serves ``registry`` on ``http://{listen}/metrics``; a context manager, started once, stopped once."""

    def __init__(self, registry: CollectorRegistry, listen: str = "127.0.0.1:0") -> None:
        self.registry = registry
        self.listen = listen
        self._host, self._port = parse_listen(listen)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._state = _State.NEW
        self.port = 0

    @property
    def address(self) -> str:
        """``host:port`` as bound (the real port when 0 was asked for)."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}/metrics"

    def start(self) -> str:
        """Bind and serve; returns :attr:`address`. Raises OSError when the address cannot be bound."""
        if self._state is not _State.NEW:
            raise RuntimeError(f"a {self._state.value} MetricsEndpoint cannot be started")
        self._state = _State.SERVING
        try:
            self._server, self._thread = start_http_server(self._port, self._host, registry=self.registry)
        except BaseException:
            self._state = _State.STOPPED
            raise
        self.port = int(self._server.server_address[1])
        return self.address

    def stop(self) -> None:
        """Stop serving and close the socket. Idempotent."""
        self._state = _State.STOPPED
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
