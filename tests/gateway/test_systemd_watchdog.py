"""The watchdog feeder (gateway/systemd.py): fed while every part makes progress, starved
while one does not, and each change said once in the log."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.core.clock import ManualClock
from gateway import systemd


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    sock.bind(str(path))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    try:
        yield sock
    finally:
        sock.close()


def feeds(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            count += sock.recv(4096) == b"WATCHDOG=1"
        except BlockingIOError:
            return count


async def test_a_stuck_part_starves_the_watchdog_said_once_and_recovery_said_once(
    notify_socket: socket.socket, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.systemd")
    clock = ManualClock()
    stuck_for: list[float] = []  # empty: every part makes progress

    def alive() -> str | None:
        if not stuck_for:
            return None
        stuck_for[0] += 20
        return f"the data buffer: a disk operation has not returned for {stuck_for[0]:.0f}s"

    feeder = asyncio.ensure_future(systemd.feed_watchdog(alive, clock, interval=60.0))
    try:
        await clock.advance(60.0)
        assert feeds(notify_socket) == 4  # at 0, 20, 40 and 60 s
        stuck_for.append(120.0)
        await clock.advance(100.0)
        assert feeds(notify_socket) == 0
        stuck_for.clear()
        await clock.advance(20.0)
        assert feeds(notify_socket) == 1
    finally:
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)
    said = [r.getMessage() for r in caplog.records]
    assert sum("not feeding the systemd watchdog" in m for m in said) == 1, said
    assert "has not returned for 140s: not feeding" in said[0]
    assert sum("feeding the watchdog" in m and "again" in m for m in said) == 1, said


async def test_a_different_part_getting_stuck_is_said_too(
    notify_socket: socket.socket, caplog: pytest.LogCaptureFixture
) -> None:
    """The storage hangs: the uplink's acks wait behind it and the session stops ticking
    first; when the buffer's own reason comes, it is said as well (the real cause)."""
    caplog.set_level(logging.INFO, logger="gateway.systemd")
    clock = ManualClock()
    reasons = iter(
        [None, "the MQTT session has not ticked for 61s", "the MQTT session has not ticked for 81s"]
        + [f"the data buffer: a disk operation has not returned for {n}s" for n in (121, 141)]
    )

    def alive() -> str | None:
        return next(reasons, "the data buffer: a disk operation has not returned for 161s")

    feeder = asyncio.ensure_future(systemd.feed_watchdog(alive, clock, interval=60.0))
    try:
        await clock.advance(100.0)
    finally:
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)
    said = [r.getMessage() for r in caplog.records if "not feeding" in r.getMessage()]
    assert len(said) == 2, said
    assert said[0].startswith("the MQTT session has not ticked for 61s")
    assert said[1].startswith("the data buffer: a disk operation has not returned for 121s")
