"""The clocks the gateway runs on: wall time (which steps), monotonic time (which never
does), and whether the kernel says NTP has set the wall clock.

Everything that measures a duration takes a `Clock`, so tests can inject one whose
wall time steps by a year either way (gateway/clock.py watches for such steps).
"""

from __future__ import annotations

import ctypes
import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock time, seconds since the epoch (may step)."""

    def monotonic(self) -> float:
        """Seconds on a clock that never steps."""

    def synchronised(self) -> bool:
        """Whether the wall clock is known to be right (NTP has set it)."""


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
        return self._trust or kernel_clock_synchronised() is not False


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
