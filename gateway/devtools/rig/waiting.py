"""Bounded waits: every wait in a rig has a deadline and says what it waited for."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

POLL = 0.05  # seconds between two looks at the predicate


class RigTimeout(AssertionError):
    """What a rig waited for did not happen in time (an AssertionError, so pytest shows
    it as a failed expectation, with the sentence)."""


def wait_until(predicate: Callable[[], object], within: float, what: str) -> None:
    """Return as soon as `predicate()` is true; raise RigTimeout after `within` seconds.

    Blocks the calling thread: in an async test use `wait_until_async`, or a simulator
    running in the test's event loop will not answer meanwhile."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise RigTimeout(f"timed out after {within:g}s: {what}")
        time.sleep(POLL)


async def wait_until_async(predicate: Callable[[], object], within: float, what: str) -> None:
    """`wait_until` for async code: the event loop runs on while it waits."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise RigTimeout(f"timed out after {within:g}s: {what}")
        await asyncio.sleep(POLL)
