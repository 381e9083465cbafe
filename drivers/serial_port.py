"""Serial ports: line rates, port URLs, and why a port cannot be opened, in words a
technician acts on (their line settings in the config: drivers/serial_port_config.py).
Shared by every protocol that runs on a serial line (Modbus RTU, serial line
instruments).

Every driver opens its port exclusively (pyserial's `exclusive=True`, an advisory
`flock`, plus `TIOCEXCL`, which makes further opens fail for everyone but root), so
a second program on the same port gets a clear error instead of silently stealing
bytes from the service. `open_error` turns what the OS said into a sentence that
names the holder of a busy port and the fix for a permission problem.

A port is a device path, or a port on a serial device server speaking RFC 2217,
``rfc2217://host:port`` (where the protocol's config allows it: `network_ports`);
`rfc2217_problem` checks such a URL as pyserial will read it. pyserial's client for
one blocks when it opens and closes: `open_network_port` and `close_network_port` do
that in threads of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import socket
import termios
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import serial

from drivers.base import Problem

RFC2217_SCHEME = "rfc2217://"
RFC2217_TIMEOUT = (0.1, 10.0)  # seconds: the bounds of a URL's ?timeout=


def is_rfc2217(port: str) -> bool:
    """Whether a port setting names a port on a serial device server (RFC 2217)."""
    return port.startswith(RFC2217_SCHEME)


def rfc2217_line(url: str) -> str:
    """`rfc2217://host:port` of an RFC 2217 URL, without its options."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{RFC2217_SCHEME}{f'[{host}]' if ':' in host else host}:{parts.port}"


def url_port_problem(port: str, *, network_ports: bool) -> str | None:
    """What is wrong with a port setting that is a URL (None: an RFC 2217 port that
    pyserial will open, where `network_ports` allows one)."""
    scheme = port.split("://", 1)[0]
    if scheme.lower() == "rfc2217" and scheme != "rfc2217":
        return f"{port!r}: write the scheme in lower case, rfc2217://"
    if scheme == "rfc2217" and not network_ports:
        return (
            f"{port!r} is a port on a serial device server; only Modbus RTU devices can use "
            "one (rfc2217://): name the serial device this instrument is wired to, e.g. "
            "/dev/ttyUSB0"
        )
    if scheme == "rfc2217":
        return rfc2217_problem(port)
    hint = (
        "; for a serial server that passes raw bytes over TCP use protocol = "
        '"modbus_rtu_over_tcp" with its host and port'
        if scheme == "socket" and network_ports
        else ""
    )
    also = ", or a serial device server as rfc2217://HOST:PORT" if network_ports else ""
    return f"{port!r} is not a serial device: name one, e.g. /dev/ttyUSB0{also}{hint}"


def rfc2217_problem(url: str) -> str | None:
    """What pyserial would refuse in an `rfc2217://host:port[?option&...]` URL (None: nothing)."""
    form = "rfc2217://HOST:PORT (e.g. rfc2217://10.0.0.9:4001)"
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return f"{url!r}: the TCP port is not a number from 1 to 65535; write {form}"
    if not parts.hostname:
        return f"{url!r} names no host; write {form}"
    if port is None or port == 0:
        return f"{url!r} names no TCP port; write {form}"
    if parts.path not in ("", "/") or parts.fragment:
        return f"{url!r}: nothing may follow the port but options (?timeout=5); write {form}"
    for option, values in parse_qs(parts.query, keep_blank_values=True).items():
        value = values[0]
        if option == "timeout":
            try:
                ok = RFC2217_TIMEOUT[0] <= float(value) <= RFC2217_TIMEOUT[1]
            except ValueError:
                ok = False
            if not ok:
                low, high = RFC2217_TIMEOUT
                return (
                    f"{url!r}: timeout={value!r}: the wait for each step of the server's "
                    f"negotiation is a number of seconds from {low:g} to {high:g}"
                )
        elif option in ("ign_set_control", "poll_modem"):
            if value:
                return f"{url!r}: {option} takes no value (write ?{option} to turn it on)"
        elif option == "logging":
            return f"{url!r}: logging is not for the gateway: [gateway] log_level says what it logs"
        else:
            return (
                f"{url!r}: unknown option {option!r} (pyserial knows timeout, "
                "ign_set_control and poll_modem)"
            )
    return None


class OnAPort(Protocol):
    """A device config on a serial port (drivers/serial_port_config.py)."""

    @property
    def port(self) -> str: ...


def absent_port_warnings(devices: Sequence[tuple[int, OnAPort]]) -> list[Problem]:
    """A warning for each serial port that is not there now (once per port; a serial
    device server's port is on the network, and not looked for)."""
    found: list[Problem] = []
    seen: set[str] = set()
    for i, dev in devices:
        if dev.port in seen or is_rfc2217(dev.port):
            continue
        seen.add(dev.port)
        try:
            Path(dev.port).stat()
        except (OSError, ValueError):  # an unreadable parent counts as absent: the run will say
            found.append(
                (
                    ("devices", i, "port"),
                    f"{dev.port} does not exist now: is the adapter plugged in? "
                    "(the gateway keeps trying to open it)",
                )
            )
    return found


def bits_per_character(bytesize: int, parity: str, stopbits: float) -> float:
    """Bits on the line for one byte: start bit, data bits, parity bit, stop bits."""
    return 1 + bytesize + (0 if parity == "N" else 1) + stopbits


def line_rate(baudrate: int, bytesize: int = 8, parity: str = "N", stopbits: float = 1) -> float:
    """Bytes per second a line can carry at most."""
    return baudrate / bits_per_character(bytesize, parity, stopbits)


@dataclass(frozen=True, slots=True)
class LineSettings:
    """A serial line's settings as technicians write them: `9600 8N1`."""

    baudrate: int
    bytesize: int = 8
    parity: str = "N"  # 'N', 'E', 'O' (a UART also knows 'M' mark and 'S' space)
    stopbits: float = 1

    def __str__(self) -> str:
        return f"{self.baudrate} {self.bytesize}{self.parity}{self.stopbits:g}"

    @property
    def character_time(self) -> float:
        """Seconds one byte takes on the line."""
        return 1 / line_rate(self.baudrate, self.bytesize, self.parity, self.stopbits)


def forbid_other_openers(fd: int) -> None:
    """TIOCEXCL: further open()s of this tty fail with EBUSY (root excepted)."""
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, termios.TIOCEXCL)


def open_error(port: str, err: BaseException) -> str:
    """Why `port` could not be opened, and what to do about it."""
    if is_rfc2217(port):
        return f"cannot open {port}: {network_open_error(err)}"
    if isinstance(err, termios.error):  # the driver refused a line setting
        detail = err.args[1] if len(err.args) > 1 else str(err)
        return (
            f"{port}: the adapter refuses these line settings ({detail}): does it support "
            "this baud rate, parity and stop bits?"
        )
    code = _errno_of(err)
    text = str(err)
    if code in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EBUSY) or "exclusively lock" in text:
        holders = port_holders(port)
        who = ", ".join(f"pid {pid} ({name})" for pid, name in holders) or "another program"
        return f"{port} is in use by {who}; a serial port has one reader at a time"
    if code == errno.ENOENT:
        return f"{port} does not exist (is the adapter plugged in? see ls /dev/serial/by-id/)"
    if code == errno.EACCES:
        group = _group_of(port)
        fix = (
            f"add the user to the {group!r} group (sudo usermod -aG {group} $USER, then log in "
            "again)"
            if group
            else "check the port's permissions"
        )
        return f"{port}: permission denied: {fix}"
    if code == errno.ENOTTY or "Inappropriate ioctl" in text:
        return f"{port} is not a serial port"
    detail = os.strerror(code) if code else text
    return f"cannot open {port}: {detail}"


def port_holders(port: str) -> list[tuple[int, str]]:
    """Processes (pid, command) with `port` open, as far as /proc lets us see."""
    try:
        target = os.path.realpath(port)
    except OSError:
        return []
    found = []
    me = os.getpid()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == me:
            continue
        try:
            fds = list((proc / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if str(fd.readlink()) == target:
                    found.append((int(proc.name), _command(proc)))
                    break
            except OSError:
                continue
    return found


def _command(proc: Path) -> str:
    try:
        raw = (proc / "cmdline").read_bytes()
    except OSError:
        return "?"
    words = raw.rstrip(b"\0").split(b"\0")
    return " ".join(w.decode("utf-8", "replace") for w in words)[:80] or "?"


def _errno_of(err: BaseException) -> int:
    seen: BaseException | None = err
    while seen is not None:
        code = getattr(seen, "errno", None)
        if isinstance(code, int) and code:
            return code
        seen = seen.__cause__ or seen.__context__
    # pyserial's SerialException carries "[Errno 13] ..." in its message only.
    text = str(err)
    if text.startswith("[Errno ") or "[Errno " in text:
        with contextlib.suppress(ValueError, IndexError):
            return int(text.split("[Errno ", 1)[1].split("]", 1)[0])
    return 0


def _group_of(port: str) -> str | None:
    try:
        return Path(port).group()
    except (OSError, KeyError):
        return None


# --- ports on a serial device server: pyserial's RFC 2217 client blocks -------------------

_closing: dict[str, asyncio.Future[Any]] = {}  # per URL: a session's close under way


def _in_thread(
    loop: asyncio.AbstractEventLoop,
    work: Callable[[], Any],
    name: str,
    abandoned: Callable[[Any], None] | None = None,
) -> asyncio.Future[Any]:
    """`work()` (a pyserial call that blocks) in a thread of its own; its future on the
    loop. The thread is a daemon: a server that never answers holds neither the loop,
    nor a worker of the loop's executor, nor the process at exit. A result nobody waits
    for any more (the future was cancelled) goes to `abandoned`."""
    future: asyncio.Future[Any] = loop.create_future()

    def run() -> None:
        result: Any = None
        error: BaseException | None = None
        try:
            result = work()
        except BaseException as err:  # handed to the loop, raised where awaited
            error = err
        try:
            loop.call_soon_threadsafe(_settle, future, result, error, abandoned)
        except RuntimeError:  # the loop has closed: nobody will take an opened port
            if error is None and abandoned is not None:
                with contextlib.suppress(Exception):
                    result.close()

    threading.Thread(target=run, name=f"rfc2217 {name}", daemon=True).start()
    return future


def _settle(
    future: asyncio.Future[Any],
    result: Any,
    error: BaseException | None,
    abandoned: Callable[[Any], None] | None,
) -> None:
    if future.cancelled():
        if error is None and abandoned is not None:
            abandoned(result)
    elif error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def close_network_port(loop: asyncio.AbstractEventLoop, url: str, port: Any) -> None:
    """Close a pyserial port in a thread (its close joins a thread, then sleeps 0.3 s);
    the next opening of the same URL waits for it."""
    closing = _in_thread(loop, port.close, f"close {url}")
    _closing[url] = closing

    def done(future: asyncio.Future[Any]) -> None:
        if _closing.get(url) is future:
            del _closing[url]
        if not future.cancelled():
            future.exception()  # a close that failed: nothing left to do about it

    closing.add_done_callback(done)


async def open_network_port(url: str, **settings: Any) -> Any:
    """pyserial's port for `url` (`serial_for_url`, no timeout), opened in a thread of its
    own once the same URL's previous session has closed (a server may take one session
    at a time). Cancelled, it closes the port when the opening ends."""
    loop = asyncio.get_running_loop()
    previous = _closing.get(url)
    if previous is not None:
        await asyncio.wait([previous])
    return await _in_thread(
        loop,
        partial(_open_with_keepalive, url, settings),
        f"open {url}",
        abandoned=partial(close_network_port, loop, url),
    )


KEEPALIVE = (10, 5, 3)  # seconds idle, seconds between probes, probes: a dead path in ~25 s
UNACKNOWLEDGED = 20_000  # ms a sent request may go unacknowledged before the kernel gives up


def _open_with_keepalive(url: str, settings: dict[str, Any]) -> Any:
    """pyserial's port, its TCP connection with keepalive: a server that lost power or
    its network path sends no FIN, and a streaming instrument's session writes nothing,
    so without it the session would wait for bytes forever."""
    port = serial.serial_for_url(url, timeout=0, **settings)
    sock = getattr(port, "_socket", None)
    if sock is not None:
        idle, interval, count = KEEPALIVE
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, UNACKNOWLEDGED)
    return port


SERVER_CLOSED = "the device server closed the connection"


def reader_ended(port: Any) -> bool:
    """Whether pyserial's RFC 2217 port has lost its connection: its reader thread,
    which queues what arrives, has ended."""
    thread = port._thread
    return thread is None or not thread.is_alive()


class LookPace:
    """When to look at a port that has no file descriptor (pyserial's RFC 2217 port):
    every `busy` seconds while bytes are due (`due`, which also ends an idle wait) or
    flowing (`heard`: until `trailing` seconds after the last), every `idle` seconds
    otherwise; `quiet` ends a due time early (the answer is in)."""

    def __init__(self, busy: float, idle: float = 0.05, trailing: float = 0.02) -> None:
        self.busy, self.idle, self.trailing = busy, idle, trailing
        self._until = 0.0  # monotonic: look every `busy` seconds until then
        self._due = asyncio.Event()

    def due(self, seconds: float) -> None:
        self._until = time.monotonic() + seconds
        self._due.set()

    def heard(self) -> None:
        self._until = max(self._until, time.monotonic() + self.trailing)

    def quiet(self) -> None:
        self._until = 0.0

    async def wait(self, *, slow: bool = False) -> None:
        """Until the next look (`slow`: at the idle pace, whatever is due)."""
        if time.monotonic() < self._until and not slow:
            await asyncio.sleep(self.busy)
            return
        self._due.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.idle):
                await self._due.wait()


def take_queued(port: Any, limit: int | None = None) -> tuple[bytes, int, bool]:
    """What pyserial's RFC 2217 port has received: (the bytes, oldest first; how many
    older ones were dropped to keep the newest `limit`; whether the connection has ended).

    Its reader thread queues every byte as an item of its own, and its read() without a
    timeout hands out one item per call (4 us each: a flooding server would hold the
    event loop for a quarter second per 64 KiB); once the thread has ended, read()
    refuses what is still queued. The queue is taken whole under its lock instead."""
    queue = port._read_buffer
    with queue.mutex:
        items = list(queue.queue)
        queue.queue.clear()
    ended = None in items
    if ended:
        items = items[: items.index(None)]
    ended = ended or reader_ended(port)
    data = b"".join(items)
    dropped = 0
    if limit is not None and len(data) > limit:
        dropped = len(data) - limit
        data = data[dropped:]
    return data, dropped, ended


def network_open_error(err: BaseException, *, raw_tcp: str = "") -> str:
    """Why pyserial could not open an RFC 2217 port, in words a technician acts on
    (`raw_tcp`: what the protocol offers for a server port in raw TCP mode)."""
    text = str(err) or type(err).__name__
    if text.startswith("Remote does not seem to support RFC2217"):
        also = f"; {raw_tcp}" if raw_tcp else ""
        return f"it does not speak RFC 2217 (is the server's port in RFC 2217 mode?{also})"
    if text.startswith("Remote does not accept parameter change"):
        return "it refused these line settings (does the server's port support them?)"
    if text.startswith("Could not open port ") and ": " in text[20:]:
        text = text[20:].split(": ", 1)[1]  # pyserial repeats the URL
    return text
