"""What the gateway tells systemd: READY, STATUS, RELOADING, STOPPING and the watchdog.

`sd_notify` is one datagram to `$NOTIFY_SOCKET` (an abstract socket when the path
starts with '@'); without that variable (not under systemd, or a test) every call is
a no-op. The watchdog interval comes from `$WATCHDOG_USEC` (set by `WatchdogSec=`):
the gateway feeds it at a third of the interval, and only while `alive()` says every
part makes progress — a stuck event loop feeds nothing, a wedged part is named in the
log, and systemd restarts the service.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
from collections.abc import Callable

from drivers.core.clock import Clock

log = logging.getLogger("gateway.systemd")


def notify(*states: str) -> bool:
    """Send `KEY=value` lines to systemd; False when not running under it."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(states).encode(), address)
    except OSError as err:
        log.debug("sd_notify failed: %s", err)
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds systemd waits for WATCHDOG=1, or None when there is no watchdog for us."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        seconds = int(usec) / 1_000_000
    except ValueError:
        return None
    return seconds if seconds > 0 else None


async def feed_watchdog(
    alive: Callable[[], str | None], clock: Clock, interval: float | None = None
) -> None:
    """Feed the watchdog while `alive()` returns None; when it names a part that stopped
    making progress, stop feeding (once logged) so that systemd restarts the service."""
    period = interval if interval is not None else watchdog_interval()
    if period is None:
        return
    starving: str | None = None
    while True:
        reason = alive()
        if reason is None:
            notify("WATCHDOG=1")
            if starving is not None:
                log.info("every part makes progress again; feeding the watchdog")
            starving = None
        elif starving is None or _shape(reason) != _shape(starving):
            # Said once per stuck part: its figures ("for 130s") move at every look.
            starving = reason
            log.error(
                "%s: not feeding the systemd watchdog, so the service will be restarted "
                "if this lasts %gs",
                reason,
                period,
            )
        await clock.sleep(period / 3)


def _shape(reason: str) -> str:
    """A reason without its figures: two looks at the same stuck part compare equal."""
    return re.sub(r"\d+(\.\d+)?", "#", reason)


async def ready_when(condition: asyncio.Event, at_most: float, status: Callable[[], str]) -> None:
    """READY=1 once `condition` is set (or `at_most` seconds passed: a start must not
    hang on a broker that does not answer), with a STATUS line for `systemctl status`."""
    try:
        async with asyncio.timeout(at_most):
            await condition.wait()
    except TimeoutError:
        pass
    notify("READY=1", f"STATUS={status()}")
