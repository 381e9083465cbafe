"""Virtual serial lines on pseudo-terminals, for simulators, tests and rigs.

`PtyPort` is one pseudo-terminal pair: a program opens `path` with pyserial
exactly like `/dev/ttyUSB0`, and the simulator talks through the master side.
`SerialDevicePort` is a real serial port that a simulator talks through the same
way (the program under test sits at the other end of a cable).

`NullModem` joins two programs that both want a port path (the gateway and a
pymodbus RTU server): two pty pairs and a relay between their masters. The relay
can inject bytes (line noise), drop traffic (a cut cable) or delay it. What the
receiving side has no room for is lost (`lost` counts it), as on a real line: a side
that stops reading never stalls the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import termios
import threading
import time
import tty
from collections.abc import Callable


class _FdPort:
    """A line the simulator reads and writes through one non-blocking file descriptor."""

    master: int
    path: str
    _fds: tuple[int, ...] = ()

    def write(self, data: bytes, *, stop: threading.Event | None = None) -> None:
        """Write all of data towards the program, waiting while its buffer is full (from a
        thread: a flood); `stop` ends the wait early, the rest unwritten."""
        view = memoryview(data)
        while view:
            try:
                written = os.write(self.master, view)
            except BlockingIOError:
                if stop is not None and stop.is_set():
                    return
                time.sleep(0.001)
                continue
            view = view[written:]

    def offer(self, data: bytes) -> int:
        """Write what the line takes now and drop the rest (nobody reads, or not fast
        enough: a real line loses it too); the number of bytes written."""
        try:
            return os.write(self.master, data)
        except (BlockingIOError, OSError):
            return 0

    def read_available(self) -> bytes:
        """What the program wrote so far (empty when nothing is waiting)."""
        chunks = []
        while True:
            try:
                chunk = os.read(self.master, 4096)
            except (BlockingIOError, OSError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)


class PtyPort(_FdPort):
    """A pseudo-terminal pair in raw mode; `path` is what the program opens."""

    def __init__(self) -> None:
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave, termios.TCSANOW)  # no echo, no newline translation
        self.path = os.ttyname(self._slave)
        os.set_blocking(self.master, False)
        self._fds = (self.master, self._slave)
        # Keeping our slave fd open keeps the line up while the program reopens it.


class SerialDevicePort(_FdPort):
    """A real serial port (e.g. /dev/ttyUSB1) opened exclusively with its line settings;
    OSError or ValueError when it cannot be (see drivers.serial_port.open_error)."""

    def __init__(
        self,
        path: str,
        baudrate: int = 9600,
        bytesize: int = 8,
        parity: str = "N",
        stopbits: int = 1,
    ) -> None:
        import serial

        self._serial = serial.Serial(
            path, baudrate, bytesize, parity, stopbits, timeout=0, exclusive=True
        )
        self.path = path
        self.master = self._serial.fileno()
        os.set_blocking(self.master, False)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._serial.close()


class NullModem:
    """Two pty ports cross-connected by a relay running on the event loop."""

    def __init__(self) -> None:
        self.a = PtyPort()  # e.g. the gateway opens a.path
        self.b = PtyPort()  # e.g. the simulated bus opens b.path
        self.cut = False  # True: everything written is lost, like an unplugged cable
        self.bytes_a_to_b = 0
        self.bytes_b_to_a = 0
        self.lost = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.a.master, self._relay, self.a, self.b)
        self._loop.add_reader(self.b.master, self._relay, self.b, self.a)

    def _relay(self, src: PtyPort, dst: PtyPort) -> None:
        data = src.read_available()
        if not data or self.cut:
            return
        if src is self.a:
            self.bytes_a_to_b += len(data)
        else:
            self.bytes_b_to_a += len(data)
        self.lost += len(data) - dst.offer(data)

    def inject_to_a(self, data: bytes) -> None:
        """Bytes appear on a's line as if the bus carried them (noise, a stray talker)."""
        self.a.write(data)

    def stop(self) -> None:
        if self._loop is not None:
            for port in (self.a, self.b):
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(port.master)
        self.a.close()
        self.b.close()

    async def __aenter__(self) -> NullModem:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop()


class TalkingPort:
    """A pseudo-terminal that an instrument writes to from its own thread, as fast as
    `talk` produces bytes (and the pty takes them): a virtual COM port that can flood,
    which the event loop of the gateway under test never waits for.

    `talk(n)` returns the bytes to write for turn n (1, 2, ...) and may sleep to pace
    itself; `sent` counts the bytes written. Use as a context manager.
    """

    def __init__(self, talk: Callable[[int], bytes]) -> None:
        self.port = PtyPort()
        self.talk = talk
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sim-talking-port", daemon=True)

    @property
    def path(self) -> str:
        return self.port.path

    def _run(self) -> None:
        turn = 0
        while not self._stop.is_set():
            turn += 1
            data = self.talk(turn)
            try:
                self.port.write(data, stop=self._stop)  # waits while the pty is full
            except OSError:  # the port closed under us: the run is over
                return
            self.sent += len(data)

    def __enter__(self) -> TalkingPort:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.port.close()
