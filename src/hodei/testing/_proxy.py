"""FaultProxy: a TCP proxy on loopback that does to connections what a bad network does, when a test says so.

::

    SchedulerPortClient ──► FaultProxy (127.0.0.1:PORT) ──► upstream (a scheduler)

Each connection is served by four tasks in a TaskGroup: per direction, a reader that takes chunks off one socket
into a small bounded queue, and a writer that hands them to the other socket when the faults allow it — after
the latency, within the bandwidth, not while black-holed (:mod:`hodei.testing._faults`), not beyond the
close-after budget. The writers read the faults at every chunk, and every change wakes the writers that wait, so
that a fault bites the connections already open (gRPC keeps one connection for hours) as well as new ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self

from hodei.testing._faults import Chunk, Direction, Faults, Way

__all__ = ["FaultProxy"]

_CHUNK = 64 * 1024
_QUEUED_CHUNKS = 16  # per direction and connection: what a held connection buffers before it stops reading
_CUT_GRACE = 1.0  # after a close-after cut, how long the client may take to close its end
_LINGER_ZERO = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST instead of FIN


class _Cut(Exception):
    """The close-after budget of a connection is spent."""


@dataclass(eq=False, slots=True)
class _Link:
    """One proxied connection: the accepted socket until streams own it, then the two sides' writers."""

    accepted: socket.socket
    task: asyncio.Task[None] | None = None
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    down_budget: int | None = None

    def _sockets(self) -> Iterator[Any]:
        yield self.accepted
        for writer in self.writers:
            if (sock := writer.get_extra_info("socket")) is not None:
                yield sock

    def abort(self, *, reset: bool) -> None:
        """Close both sides now, discarding what is buffered; with ``reset``, each peer gets an RST. (Before the
        streams own the accepted socket, cancelling the task closes it: see ``FaultProxy._forget``.)"""
        if reset:
            for sock in self._sockets():
                with contextlib.suppress(OSError):  # already closed
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
        for writer in self.writers:
            writer.transport.abort()


class FaultProxy:
    """``async with FaultProxy(upstream=scheduler.target) as proxy:`` — then dial ``proxy.target``.

    A TCP proxy on a free loopback port that forwards every connection to ``upstream`` (``HOST:PORT``) and,
    on demand, misbehaves the way networks do. Every fault can be switched on and off at any moment while
    traffic flows; it applies to the connections already open and to new ones. Call the methods from the
    event loop's thread.

    - :meth:`delay`: latency on each chunk, in one direction or both, with optional jitter;
    - :meth:`limit_bandwidth`: bytes per second in one direction or both;
    - :meth:`reset_all`: close every open connection with an RST (and, optionally, each new one);
    - :meth:`black_hole`: forward nothing, answer nothing, connections stay open;
    - :meth:`close_after`: close each connection (FIN) once it has carried so many more bytes downstream;
    - :meth:`refuse`: stop listening, so that connecting is refused; listen again on the same port after;
    - :meth:`heal`: every fault off at once.

    Counters for tests to assert on: ``connections_accepted``, ``connections_reset``, ``connections_cut``,
    ``bytes_upstream`` (forwarded client to upstream), ``bytes_downstream`` (upstream to client), and
    :attr:`active_connections`. ``random`` draws the jitter (injectable for tests).
    """

    def __init__(
        self,
        upstream: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        random: Callable[[], float] = random.random,
    ) -> None:
        upstream_host, colon, upstream_port = upstream.rpartition(":")
        if not colon or not upstream_port.isdigit():
            raise ValueError(f"upstream {upstream!r} is not HOST:PORT")
        self.upstream = upstream
        self._upstream = (upstream_host.strip("[]"), int(upstream_port))
        self._host = host
        self._port = port
        self._random = random
        self._state: Literal["new", "started", "stopped"] = "new"
        self._listener: socket.socket | None = None
        self._links: set[_Link] = set()
        self._failures: list[BaseException] = []  # what connection tasks died of, other than the network
        self._faults = Faults()
        self._close_after: int | None = None
        self._reset_new = False
        # The counters.
        self.connections_accepted = 0
        self.connections_reset = 0
        self.connections_cut = 0
        self.bytes_upstream = 0
        self.bytes_downstream = 0

    # --- lifecycle ------------------------------------------------------------------------------------------

    @property
    def target(self) -> str:
        """The address to dial instead of the upstream, ``127.0.0.1:<port>``."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{host}:{self.port}"

    @property
    def port(self) -> int:
        """The port it listens on (kept while refusing, and listened on again after)."""
        if self._state == "new":
            raise RuntimeError("the FaultProxy is not started")
        return self._port

    @property
    def active_connections(self) -> int:
        """Connections open now."""
        return len(self._links)

    async def start(self) -> Self:
        """Listen; a second start, or a start after :meth:`stop`, raises ``RuntimeError``."""
        if self._state != "new":
            raise RuntimeError(f"a FaultProxy starts once; this one is {self._state}")
        self._listen()
        self._state = "started"
        return self

    async def stop(self) -> None:
        """Stop listening and close every connection and its tasks. Idempotent.

        Raises what a connection's task failed with, if one failed other than by the network: a bug in the
        proxy fails the test rather than vanishing.
        """
        if self._state == "stopped":
            return
        self._state = "stopped"
        self._stop_listening()
        links = list(self._links)
        for link in links:
            link.abort(reset=False)
            if link.task is not None:
                link.task.cancel()
        await asyncio.gather(*(link.task for link in links if link.task is not None), return_exceptions=True)
        if self._failures:
            raise BaseExceptionGroup("FaultProxy connection tasks failed", self._failures)

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # --- the faults -----------------------------------------------------------------------------------------

    def delay(self, seconds: float, *, jitter: float = 0.0, direction: Direction = "both") -> None:
        """Hold each chunk ``seconds`` (plus a random share of ``jitter``: jitter only lengthens) before it is
        forwarded in ``direction``; ``delay(0)`` ends it. Chunks already waiting get the new delay at once, and
        keep their order, as TCP's bytes do."""
        self._faults.delay(seconds, jitter, direction)

    def limit_bandwidth(self, bytes_per_second: float | None, *, direction: Direction = "both") -> None:
        """Forward at most ``bytes_per_second`` in ``direction`` (each direction its own budget, shared by the
        connections, as a link's); ``None`` lifts the limit. Bursts are at most 50 ms worth."""
        self._faults.limit_bandwidth(bytes_per_second, direction)

    def black_hole(self, on: bool = True) -> None:
        """Forward nothing either way and answer nothing, on open connections and on new ones (which are still
        accepted), until ``black_hole(False)`` or :meth:`heal`. Connections stay open and nobody is told: calls
        end by their deadlines. Nothing is lost: what was sent waits in the proxy and the kernel's buffers and
        flows on when the black hole ends, as TCP delivers what it retransmitted once a partition heals. For
        connections that never come back (a middlebox that forgot them), :meth:`reset_all` before healing."""
        self._faults.black_hole(on)

    def close_after(self, n_bytes: int | None) -> None:
        """Close each connection (FIN, both sides) once it has forwarded ``n_bytes`` more downstream — half-way
        through a response: counted from now on the open connections, from the start on new ones (``0``: at
        its next byte downstream). ``None`` ends it."""
        if n_bytes is not None and n_bytes < 0:
            raise ValueError(f"n_bytes must not be negative, got {n_bytes}")
        self._close_after = n_bytes
        for link in self._links:
            link.down_budget = n_bytes
        self._faults.wake()

    def reset_all(self, *, including_new: bool = False) -> None:
        """Close every open connection with an RST, both to the client and to the upstream. With
        ``including_new``, also reset each new connection as soon as it is accepted, until :meth:`heal` (or a
        ``reset_all()`` without it)."""
        self._reset_new = including_new
        for link in list(self._links):
            self._reset(link)

    def refuse(self, on: bool = True) -> None:
        """Stop listening, so that new connections are refused (open ones carry on, as when a server stops
        accepting); ``refuse(False)`` listens again, on the same port. The port is free meanwhile, as a stopped
        server's is: should another socket take it, listening again raises ``OSError``."""
        if self._state != "started":
            raise RuntimeError("the FaultProxy is not running")
        if on:
            self._stop_listening()
        elif self._listener is None:
            self._listen()

    def heal(self) -> None:
        """Every fault off: no latency, no bandwidth limit, no black hole, no close-after, no resets of new
        connections, listening."""
        self._close_after = None
        for link in self._links:
            link.down_budget = None
        self._reset_new = False
        if self._state == "started":
            self.refuse(False)
        self._faults.heal()

    # --- listening ------------------------------------------------------------------------------------------

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET6 if ":" in self._host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self._host, self._port))
            listener.listen(128)
            listener.setblocking(False)
            asyncio.get_running_loop().add_reader(listener.fileno(), self._accept)
        except BaseException:
            listener.close()
            raise
        self._port = listener.getsockname()[1]
        self._listener = listener

    def _stop_listening(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            asyncio.get_running_loop().remove_reader(listener.fileno())
            listener.close()

    def _accept(self) -> None:
        while self._listener is not None:
            try:
                accepted, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:  # the client gave up before it was accepted
                continue
            accepted.setblocking(False)
            # asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP, which accept() does not say:
            # without it Nagle's algorithm and delayed ACKs hold each small write some 40 ms.
            with contextlib.suppress(OSError):  # a connection reset already: serving it will find out
                accepted.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.connections_accepted += 1
            link = _Link(accepted)
            if self._reset_new:
                self.connections_reset += 1
                link.abort(reset=True)
                accepted.close()
                continue
            link.down_budget = self._close_after
            link.task = asyncio.get_running_loop().create_task(self._serve(link))
            link.task.add_done_callback(functools.partial(self._forget, link))
            self._links.add(link)

    def _forget(self, link: _Link, task: asyncio.Task[None]) -> None:
        self._links.discard(link)
        if not link.writers:  # cancelled before the streams took the socket over
            link.accepted.close()
        if not task.cancelled() and (error := task.exception()) is not None:
            self._failures.append(error)

    def _reset(self, link: _Link) -> None:
        self.connections_reset += 1
        link.abort(reset=True)
        if link.task is not None:
            link.task.cancel()

    # --- forwarding -----------------------------------------------------------------------------------------

    async def _serve(self, link: _Link) -> None:
        try:
            client_reader, client_writer = await asyncio.open_connection(sock=link.accepted, limit=_CHUNK)
            link.writers.append(client_writer)
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(
                    *self._upstream, limit=_CHUNK
                )
            except OSError:  # the upstream is not there: the client hears a reset, as it would from it
                link.abort(reset=True)
                return
            link.writers.append(upstream_writer)
            try:
                async with asyncio.TaskGroup() as group:
                    up: asyncio.Queue[Chunk | None] = asyncio.Queue(_QUEUED_CHUNKS)
                    down: asyncio.Queue[Chunk | None] = asyncio.Queue(_QUEUED_CHUNKS)
                    group.create_task(self._read(client_reader, up))
                    group.create_task(self._write(link, upstream_writer, up, "upstream"))
                    group.create_task(self._read(upstream_reader, down))
                    group.create_task(self._write(link, client_writer, down, "downstream"))
            except* _Cut:
                self.connections_cut += 1
                upstream_writer.close()
                await self._close_gracefully(client_reader, client_writer)
            except* OSError:  # one side reset or failed: the other hears a reset too
                link.abort(reset=True)
        except OSError:  # the client was gone before its connection could be served
            link.abort(reset=True)
        finally:
            link.abort(reset=False)
            for writer in link.writers:
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    async def _read(self, reader: asyncio.StreamReader, queue: asyncio.Queue[Chunk | None]) -> None:
        loop = asyncio.get_running_loop()
        while data := await reader.read(_CHUNK):
            await queue.put(Chunk(data, loop.time(), self._random()))
        await queue.put(None)

    async def _write(
        self, link: _Link, writer: asyncio.StreamWriter, queue: asyncio.Queue[Chunk | None], way: Way
    ) -> None:
        while (chunk := await queue.get()) is not None:
            data = chunk.data
            while data:
                size = await self._faults.hold(chunk, way, len(data))
                if way == "downstream" and link.down_budget is not None:
                    if link.down_budget == 0:
                        raise _Cut
                    size = min(size, link.down_budget)
                    link.down_budget -= size
                writer.write(data[:size])
                data = data[size:]
                if way == "upstream":
                    self.bytes_upstream += size
                else:
                    self.bytes_downstream += size
                await writer.drain()
                if way == "downstream" and link.down_budget == 0:
                    raise _Cut
        if writer.can_write_eof():
            writer.write_eof()

    async def _close_gracefully(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """FIN to the client, then read what it still sends until it closes its end: closing a socket with
        unread data would send an RST instead of the FIN this fault promises."""
        writer.write_eof()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(_CUT_GRACE):
                while await reader.read(_CHUNK):
                    pass
