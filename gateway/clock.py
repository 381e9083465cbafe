"""The clocks the gateway runs on, and what it does when the wall clock is wrong.

A Raspberry Pi has no real-time clock: it boots at a stale time (the last shutdown,
or 1970) and NTP steps the clock later, by days or years. So:

- durations (alarm delays, heartbeats, spike rates, batch ages, timers) are measured
  on the monotonic clock, which never steps;
- `ClockWatch` notices a step of the wall clock (the gap between wall and monotonic
  time changes by more than `STEP_THRESHOLD`) and tells the gateway, which re-dates
  what it stamped before the step (the buffer's age bound must not evict a fresh
  backlog because the clock jumped a year ahead) and marks the readings taken before
  it as unsynchronised;
- `drivers.core.clock.SystemClock.synchronised` asks the kernel whether NTP
  (systemd-timesyncd, chrony, ntpd) has disciplined the clock (`adjtimex`: not
  TIME_ERROR); readings taken while it is not are marked on the wire
  (docs/wire-format.md, envelope key `tu`).

Tests inject a `Clock` whose wall time they step by a year either way.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from drivers.core.clock import Clock
from gateway.wire.messages import ClockHealth

log = logging.getLogger("gateway.clock")

STEP_THRESHOLD = 2.0  # seconds; NTP slews smaller corrections, it steps larger ones
CHECK_INTERVAL = 1.0  # seconds between looks at the clocks
SYNC_CHECK_INTERVAL = 10.0  # seconds between questions to the kernel about NTP


OnStep = Callable[[float], Awaitable[None]]
OnSync = Callable[[bool], None]


class ClockWatch:
    """Watches the wall clock against the monotonic one; reports steps and sync changes.

    `on_step(delta)` gets the step in seconds (positive: the clock jumped ahead);
    `on_sync(synchronised)` is called at start and on every change.
    """

    def __init__(self, clock: Clock, on_step: OnStep, on_sync: OnSync) -> None:
        self.clock = clock
        self._on_step = on_step
        self._on_sync = on_sync
        self._offset = clock.time() - clock.monotonic()
        self.synchronised = clock.synchronised()
        self.steps = 0
        self.last_step: float | None = None

    def health(self) -> ClockHealth:
        last = self.last_step
        return ClockHealth(self.synchronised, self.steps, None if last is None else round(last, 1))

    async def check(self) -> float:
        """Look once; return the step seen (0.0 for none)."""
        offset = self.clock.time() - self.clock.monotonic()
        delta = offset - self._offset
        self._offset = offset
        if abs(delta) < STEP_THRESHOLD:
            return 0.0
        self.steps += 1
        self.last_step = delta
        log.warning(
            "the wall clock stepped %s by %s (NTP after a boot without a real-time clock?); "
            "what was stamped before is re-dated for the buffer's age bound, and the "
            "readings taken before are marked unsynchronised",
            "forward" if delta > 0 else "back",
            format_span(abs(delta)),
        )
        await self._on_step(delta)
        return delta

    def check_sync(self) -> bool:
        synchronised = self.clock.synchronised()
        if synchronised != self.synchronised:
            self.synchronised = synchronised
            if synchronised:
                log.info("the clock is synchronised (NTP): readings are no longer marked")
            else:
                log.warning(
                    "the kernel reports the clock unsynchronised: readings are marked so on "
                    "the wire until NTP sets it"
                )
            self._on_sync(synchronised)
        return synchronised

    async def run(self) -> None:
        """Watch until cancelled. The caller applies the state at start (`synchronised`)."""
        if not self.synchronised:
            log.warning(
                "the clock is not synchronised (no NTP yet?): readings are marked so on the "
                'wire until it is (set [gateway] clock_sync = "assume" to trust this clock)'
            )
        since_sync_check = 0.0
        while True:
            await self.clock.sleep(CHECK_INTERVAL)
            await self.check()
            since_sync_check += CHECK_INTERVAL
            if since_sync_check >= SYNC_CHECK_INTERVAL:
                since_sync_check = 0.0
                self.check_sync()


def format_span(seconds: float) -> str:
    """1.5 -> '1.5s', 90061 -> '1d 1h 1min'."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes = int(seconds // 60)
    days, minutes = divmod(minutes, 1440)
    hours, minutes = divmod(minutes, 60)
    parts = [f"{days}d" if days else "", f"{hours}h" if hours else "", f"{minutes}min"]
    return " ".join(p for p in parts if p and p != "0min") or f"{seconds:.0f}s"
