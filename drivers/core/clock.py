"""The clocks the gateway runs on: wall time (which steps), monotonic time (which never
does), sleeping on the monotonic one, and whether the kernel says NTP has set the
wall clock.

Everything that measures or waits for a duration takes a `Clock`. `SystemClock` is
the machine's; `ManualClock` is virtual time for tests and rigs: its `sleep` returns
when a test `advance`s the clock past it, and its wall time can be stepped by a year
either way (gateway/clock.py watches for such steps). Timing tests run in
milliseconds and never depend on how busy the machine is.
"""

from __future__ import annotations

import asyncio
import ctypes
import heapq
import itertools
import time
from pathlib import Path
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock time, seconds since the epoch (may step)."""

    def monotonic(self) -> float:
        """Seconds on a clock that never steps."""

    def synchronised(self) -> bool:
        """Whether the wall clock is known to be right (NTP has set it)."""

    async def sleep(self, seconds: float) -> None:
        """Wait this long on the monotonic clock."""


async def wait_event(clock: Clock, event: asyncio.Event, seconds: float | None) -> bool:
    """Wait until `event` is set or `seconds` pass on `clock` (for ever with None);
    whether the event was set."""
    if seconds is None:
        await event.wait()
        return True
    waiter = asyncio.ensure_future(event.wait())
    sleeper = asyncio.ensure_future(clock.sleep(seconds))
    try:
        await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        sleeper.cancel()
    return event.is_set()


class SystemClock:
    """The machine's clocks. `trust=True` ([gateway] clock_sync = "assume") reports
    the wall clock as synchronised whatever the kernel says (an RTC without NTP)."""

    def __init__(self, *, trust: bool = False) -> None:
        self._trust = trust

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def synchronised(self) -> bool:
        if self._trust:
            return True
        kernel = kernel_clock_synchronised()
        if kernel is not None:
            return kernel
        # The kernel cannot be asked (under systemd with ProtectClock=yes, adjtimex is
        # filtered): systemd-timesyncd leaves a flag file once it has set the clock.
        timesync = Path("/run/systemd/timesync")
        if timesync.is_dir():
            return (timesync / "synchronized").exists()
        return True  # nothing can tell: do not mark every reading as suspect

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class ManualClock:
    """Virtual time: nothing moves until `advance` (monotonic and wall time together) or
    `step` (wall time alone, as NTP does). Sleepers wake in order of their deadlines."""

    def __init__(
        self, wall: float = 1_795_430_000.0, monotonic: float = 1000.0, *, synchronised: bool = True
    ) -> None:
        self.wall = wall
        self.mono = monotonic
        self.synced = synchronised
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def synchronised(self) -> bool:
        return self.synced

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.mono + seconds, next(self._order), wake))
        await wake

    def step(self, seconds: float) -> None:
        """The wall clock jumps (NTP); monotonic time does not move."""
        self.wall += seconds

    async def advance(self, seconds: float) -> None:
        """Let `seconds` pass, waking every sleeper whose deadline falls within, in order,
        and letting what it does run before time moves on. What is ready to run now runs
        first, at the present time."""
        await settle()
        target = self.mono + seconds
        while self._sleepers and self._sleepers[0][0] <= target:
            due, _, wake = heapq.heappop(self._sleepers)
            self._move_to(due)
            if not wake.done():
                wake.set_result(None)
            await settle()
        self._move_to(target)
        await settle()

    def _move_to(self, mono: float) -> None:
        if mono > self.mono:
            self.wall += mono - self.mono
            self.mono = mono


async def settle(rounds: int = 20) -> None:
    """Give every ready task a few turns of the event loop."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class _Timex(ctypes.Structure):
    """struct timex of <sys/timex.h> (Linux), enough of it for adjtimex(2) to fill."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("padding", ctypes.c_int * 11),
    ]


_TIME_ERROR = 5  # adjtimex: "clock not synchronized"


def kernel_clock_synchronised() -> bool | None:
    """What the kernel says about NTP synchronisation; None when it cannot be asked."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        timex = _Timex()  # modes = 0: read only
        state = libc.adjtimex(ctypes.byref(timex))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return bool(state != _TIME_ERROR)
