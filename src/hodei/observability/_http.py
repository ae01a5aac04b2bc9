"""MetricsEndpoint: one process's metrics served over HTTP for Prometheus to scrape.

``MetricsEndpoint(registry, "0.0.0.0:9464").start()`` serves ``registry`` on ``http://HOST:PORT/metrics`` from a
background thread (prometheus_client's WSGI application, one thread per connection), until
:meth:`MetricsEndpoint.stop`. Port 0 takes a free port; :attr:`MetricsEndpoint.address` is the bound one.

Given a :class:`~hodei.security.TlsConfig`, it serves HTTPS (``https://HOST:PORT/metrics``), and with the
config's CA requires client certificates signed by it. Each connection's TLS handshake is made in that
connection's own thread, and a connection silent for ``CONNECTION_TIMEOUT`` seconds is closed: a client that
connects and says nothing holds one thread for a while, never the endpoint (prometheus_client's own TLS server
shakes hands in its accepting thread, where one silent client would stop every scrape).
"""

from __future__ import annotations

import enum
import socket
import ssl
import sys
import threading
from types import TracebackType
from typing import Any, Self
from wsgiref.simple_server import WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler

from hodei.security._tls import TlsConfig

__all__ = ["CONNECTION_TIMEOUT", "MetricsEndpoint", "parse_listen"]

CONNECTION_TIMEOUT = 10.0  # seconds a connection may stay silent (handshake included) before it is closed


class _Handler(_SilentHandler):
    timeout = CONNECTION_TIMEOUT  # socketserver.StreamRequestHandler sets it on the connection


class _Server(ThreadingWSGIServer):
    """prometheus_client's threading server, shaking TLS hands in each connection's thread."""

    ssl_context: ssl.SSLContext | None = None

    def get_request(self) -> tuple[Any, Any]:
        connection, address = super().get_request()
        if self.ssl_context is not None:
            connection = self.ssl_context.wrap_socket(
                connection, server_side=True, do_handshake_on_connect=False
            )
        return connection, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that failed the handshake, timed out or went away is its own trouble: socketserver would
        # print a traceback on stderr for each.
        if not isinstance(sys.exc_info()[1], OSError):  # ssl.SSLError and TimeoutError are OSErrors
            super().handle_error(request, client_address)


class _Server6(_Server):
    address_family = socket.AF_INET6


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as ``(host, port)``; raises ValueError when malformed."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit():
        raise ValueError(f"{listen[:64]!r} has no port: expected HOST:PORT")
    if not host:
        raise ValueError(f"{listen[:64]!r} has no host: expected HOST:PORT (127.0.0.1, 0.0.0.0, [::1], ...)")
    if len(port) > 5 or int(port) > 65535:
        raise ValueError(f"{listen[:64]!r} is not HOST:PORT: port {port[:8]} is out of range (0-65535)")
    return host.removeprefix("[").removesuffix("]"), int(port)


class _State(enum.Enum):
    NEW = "new"
    SERVING = "serving"
    STOPPED = "stopped"


class MetricsEndpoint:
    """Serves ``registry`` on ``http://{listen}/metrics`` (``https://`` with ``tls``); a context manager,
    started once, stopped once."""

    def __init__(
        self, registry: CollectorRegistry, listen: str = "127.0.0.1:0", *, tls: TlsConfig | None = None
    ) -> None:
        if tls is not None:
            tls.check()  # a bad file is an error now, naming the file
        self.registry = registry
        self.listen = listen
        self.tls = tls
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
        scheme = "http" if self.tls is None else "https"
        return f"{scheme}://{self.address}/metrics"

    def start(self) -> str:
        """Bind and serve; returns :attr:`address`. Raises OSError when the address cannot be bound."""
        if self._state is not _State.NEW:
            raise RuntimeError(f"a {self._state.value} MetricsEndpoint cannot be started")
        self._state = _State.SERVING
        server_class = _Server6 if ":" in self._host else _Server
        try:
            server = make_server(
                self._host, self._port, make_wsgi_app(self.registry), server_class, handler_class=_Handler
            )
        except BaseException:
            self._state = _State.STOPPED
            raise
        assert isinstance(server, _Server)
        if self.tls is not None:
            server.ssl_context = self.tls.ssl_context_for_http()
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="hodei-metrics", daemon=True)
        self._thread.start()
        self.port = int(server.server_address[1])
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
