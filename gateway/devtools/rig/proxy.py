"""A TCP relay on loopback that fails like a field link: down, blackholed, slow.

    proxy = LinkProxy(broker.port)   # the gateway connects to proxy.port
    proxy.start()
    proxy.blackhole()                # bytes vanish both ways; no reset, no FIN
    proxy.restore()

It runs its own event loop in a thread of its own, so sync tests, async tests and
harnesses without pytest drive it alike; every call returns within its timeout.

The modes, switched at any moment (a slow link can also blackhole; `restore()` ends all):

- `down()`: the link is cut: every connection is reset, new ones are refused.
- `blackhole(direction)`: connections stay open and carry nothing: the usual cellular
  failure. `"both"` (the default) also accepts new connections that go nowhere;
  `"to_server"` / `"to_client"` lose one direction only (`"to_client"`: the broker
  gets every PUBLISH, the gateway no PUBACK, so it sends them all again later).
- `slow(delay_ms, rate)`: every chunk is delivered `delay_ms` after it arrived, each
  direction on its own (a round trip takes twice that), and at most `rate` bytes a
  second each way when a rate is given.

Bytes a blackhole swallows are gone; after `restore()` a connection that lived through
it carries what is sent from then on (the stream it carries has a hole).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

Direction = Literal["both", "to_server", "to_client"]
Towards = Literal["to_server", "to_client"]

HOST = "127.0.0.1"
_CHUNK = 16384  # bytes read at once; at most _QUEUED chunks wait in the proxy per direction
_QUEUED = 4
_SLICE = 0.02  # seconds: a rate-limited chunk goes out in slices of this much line time
_CALL_TIMEOUT = 10.0

T = TypeVar("T")


class LinkProxyError(RuntimeError):
    """The proxy could not do what it was asked (a port taken, a call that hung)."""


@dataclass
class _Link:
    """One connection through the proxy: the client's side and the server's."""

    client: asyncio.StreamWriter
    server: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def abort(self) -> None:
        for writer in (self.client, self.server):
            if writer is not None:
                writer.transport.abort()


class LinkProxy:
    """Relays 127.0.0.1:`port` to `target_host`:`target_port`; `port` is chosen free at
    `start()` unless given. `connections` counts the connections accepted so far."""

    def __init__(self, target_port: int, *, target_host: str = HOST, port: int = 0) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = HOST
        self.port = port
        self.connections = 0
        self.is_down = False
        self.blackholed: frozenset[Towards] = frozenset()
        self.delay = 0.0  # seconds, each direction
        self.rate: float | None = None  # bytes per second, each direction
        self._links: list[_Link] = []
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- the faults --------------------------------------------------------------------

    def down(self) -> None:
        self._call(self._down())

    def blackhole(self, direction: Direction = "both") -> None:
        towards: frozenset[Towards] = (
            frozenset({"to_server", "to_client"}) if direction == "both" else frozenset({direction})
        )
        self._call(self._set(blackholed=towards))

    def slow(self, delay_ms: float, rate: float | None = None) -> None:
        """Delay each direction by `delay_ms`; with `rate`, carry at most that many bytes
        a second each way."""
        if delay_ms < 0 or (rate is not None and rate <= 0):
            raise ValueError("delay_ms must be >= 0 and rate > 0")
        self._call(self._set(delay=delay_ms / 1000, rate=rate))

    def restore(self) -> None:
        """A plain relay again: listening, nothing swallowed, no delay."""
        self._call(self._restore())

    def reset(self) -> None:
        """Abort every connection at once (RST both ways); new ones are carried."""
        self._call(self._reset())

    # -- life --------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=loop.run_forever, name=f"link-proxy-{self.target_port}", daemon=True
        )
        self._thread.start()
        try:
            self._call(self._listen())
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = _CALL_TIMEOUT) -> None:
        """Close every connection and stop listening; returns within `timeout`."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            self._call(self._close(), timeout)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
            if not thread.is_alive():
                loop.close()
            self._loop = self._thread = None

    def __enter__(self) -> LinkProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = _CALL_TIMEOUT) -> T:
        if self._loop is None:
            coro.close()
            raise LinkProxyError("the proxy is not started")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except TimeoutError as err:
            future.cancel()
            raise LinkProxyError(f"the proxy did not answer within {timeout:g}s") from err

    # -- in the proxy's own loop -------------------------------------------------------

    async def _set(self, **state: Any) -> None:
        for name, value in state.items():
            setattr(self, name, value)

    async def _listen(self) -> None:
        try:
            self._server = await asyncio.start_server(self._accept, HOST, self.port)
        except OSError as err:
            raise LinkProxyError(f"cannot listen on {HOST}:{self.port}: {err}") from err
        self.port = self._server.sockets[0].getsockname()[1]

    async def _down(self) -> None:
        self.is_down = True
        if self._server is not None:
            self._server.close()
            self._server = None
        await self._reset()

    async def _restore(self) -> None:
        self.blackholed, self.delay, self.rate = frozenset(), 0.0, None
        if self.is_down:
            await self._listen()
            self.is_down = False

    async def _reset(self) -> None:
        for link in self._links:
            link.abort()
        self._links.clear()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        await self._reset()
        tasks = asyncio.all_tasks() - {asyncio.current_task()}  # this loop is the proxy's
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        link = _Link(writer)
        self._links.append(link)
        try:
            if self.blackholed == {"to_server", "to_client"}:
                while await reader.read(_CHUNK):  # accepted, and going nowhere
                    pass
                return
            server_reader, link.server = await asyncio.open_connection(
                self.target_host, self.target_port
            )
            await asyncio.gather(
                self._relay(reader, link.server, "to_server"),
                self._relay(server_reader, writer, "to_client"),
            )
        except OSError:
            pass  # the server is not there, or a side was reset: the link ends
        except asyncio.CancelledError:
            # The proxy stops (`_close` cancels every task). Ending here, not cancelled:
            # asyncio's stream callback on Python 3.11 asks a cancelled handler for its
            # exception and logs the CancelledError with a traceback.
            pass
        finally:
            link.abort()
            with contextlib.suppress(ValueError):
                self._links.remove(link)

    async def _relay(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, towards: Towards
    ) -> None:
        """One direction: a reader that timestamps chunks, a sender that keeps the delay
        and the rate. The queue between them is bounded, so back-pressure still reaches
        the sending peer (its socket fills up as on a slow link)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(_QUEUED)
        sender = asyncio.create_task(self._send(queue, writer, towards))
        try:
            while data := await reader.read(_CHUNK):
                if towards not in self.blackholed:
                    await queue.put((loop.time(), data))
            await queue.put(None)
            await sender  # what was read before the end is delivered, then the side closes
        finally:
            sender.cancel()
            writer.close()

    async def _send(
        self,
        queue: asyncio.Queue[tuple[float, bytes] | None],
        writer: asyncio.StreamWriter,
        towards: Towards,
    ) -> None:
        loop = asyncio.get_running_loop()
        peer_gone = False
        while (item := await queue.get()) is not None:
            arrived, data = item
            if peer_gone:
                continue  # dropped, but taken off the queue: the reading side never blocks
            if (due := arrived + self.delay - loop.time()) > 0:
                await asyncio.sleep(due)
            try:
                await self._deliver(data, writer, towards)
            except OSError:
                writer.transport.abort()
                peer_gone = True

    async def _deliver(self, data: bytes, writer: asyncio.StreamWriter, towards: Towards) -> None:
        while data and towards not in self.blackholed:  # in flight when the link died: lost
            if self.rate is None:
                piece, data = data, b""
            else:
                size = max(1, int(self.rate * _SLICE))
                piece, data = data[:size], data[size:]
                await asyncio.sleep(len(piece) / self.rate)
            writer.write(piece)
            await writer.drain()
