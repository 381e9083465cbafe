"""The time window and replay protection: on virtual time, across restarts of the store,
with the clock synchronised and without."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from drivers.core.clock import ManualClock
from gateway.control import Fresh, Refusal, ReplayGuard
from gateway.control.replay import CHECKPOINT_INTERVAL
from gateway.wire.messages import Command

NOW = 1_795_430_000.0
WINDOW = 300.0


def command(issued_at: float, nonce: str = "a" * 32) -> Command:
    return Command("ping", "gw", int(issued_at), nonce, {}, "ops")


def nonce(n: int) -> str:
    return f"{n:032x}"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(wall=NOW)


def open_guard(tmp_path: Path, clock: ManualClock) -> ReplayGuard:
    return ReplayGuard.open(tmp_path / "nonces.json", clock, window=WINDOW)


def code(outcome: Fresh | Refusal) -> str:
    return outcome.code if isinstance(outcome, Refusal) else "fresh"


@pytest.mark.parametrize(
    ("offset", "expected"),
    [
        (0, "fresh"),
        (-WINDOW, "fresh"),
        (WINDOW, "fresh"),
        (-WINDOW - 1, "expired"),
        (WINDOW + 1, "from_the_future"),
        (-86400 * 365, "expired"),
        (86400 * 365, "from_the_future"),
    ],
)
async def test_a_command_is_fresh_only_within_the_window_of_the_clock(
    tmp_path: Path, clock: ManualClock, offset: float, expected: str
) -> None:
    guard = open_guard(tmp_path, clock)
    await clock.advance(WINDOW * 2)  # past the horizon of a fresh store
    outcome = guard.judge(command(clock.time() + offset))
    assert code(outcome) == expected
    if isinstance(outcome, Fresh):
        assert outcome.time_checked and outcome.note is None


async def test_the_refusals_say_how_old_or_how_far_ahead(
    tmp_path: Path, clock: ManualClock
) -> None:
    guard = open_guard(tmp_path, clock)
    await clock.advance(3600)
    old = guard.judge(command(clock.time() - 7 * 60))
    ahead = guard.judge(command(clock.time() + 12 * 60))
    assert isinstance(old, Refusal) and "issued 7min ago" in old.reason
    assert "5min either side of the gateway's clock" in old.reason
    assert (
        isinstance(ahead, Refusal) and "issued 12min ahead of the gateway's clock" in ahead.reason
    )


def test_a_replayed_nonce_is_refused_also_after_a_restart(
    tmp_path: Path, clock: ManualClock
) -> None:
    guard = open_guard(tmp_path, clock)
    first = command(NOW)
    assert code(guard.judge(first)) == "fresh"
    guard.remember(first)
    assert code(guard.judge(first)) == "replayed"
    restarted = open_guard(tmp_path, clock)
    outcome = restarted.judge(first)
    assert code(outcome) == "replayed"
    assert isinstance(outcome, Refusal) and "was accepted already" in outcome.reason
    # the same nonce in another command is a replay too: nonces are single-use
    assert code(restarted.judge(replace(first, issued_at=int(NOW) + 1))) == "replayed"


async def test_nonces_are_forgotten_once_no_command_with_them_could_be_accepted(
    tmp_path: Path, clock: ManualClock
) -> None:
    guard = open_guard(tmp_path, clock)
    for n in range(5):
        guard.remember(command(clock.time(), nonce(n)))
        await clock.advance(60)
    assert guard.remembered == 5
    await clock.advance(WINDOW)  # the first ones are now older than the window
    guard.remember(command(clock.time(), nonce(99)))
    kept = guard.remembered
    assert kept < 6
    # what was forgotten is older than the horizon, so it is refused as expired, never
    # accepted again: even if the clock steps back to when it was fresh
    clock.step(-WINDOW * 2)
    outcome = guard.judge(command(NOW, nonce(0)))
    assert code(outcome) == "expired"
    assert isinstance(outcome, Refusal) and "keeps no nonces of commands that old" in outcome.reason
    assert code(open_guard(tmp_path, clock).judge(command(NOW, nonce(0)))) == "expired"


def test_a_lost_nonce_store_refuses_commands_issued_before_it_started(
    tmp_path: Path, clock: ManualClock
) -> None:
    guard = open_guard(tmp_path, clock)
    guard.remember(command(NOW))
    (tmp_path / "nonces.json").write_text("torn{")  # set aside at the next open
    clock.wall += 10
    reopened = open_guard(tmp_path, clock)
    assert reopened.set_aside == 1
    assert code(reopened.judge(command(NOW))) == "expired"  # its nonce is unknown now
    assert code(reopened.judge(command(NOW + 10, nonce(2)))) == "fresh"


async def test_with_the_clock_unsynchronised_a_recent_command_is_accepted_on_its_nonce_alone(
    tmp_path: Path, clock: ManualClock
) -> None:
    guard = open_guard(tmp_path, clock)
    guard.remember(command(NOW))  # the last synchronised time, NOW, is on disk
    # a reboot without a real-time clock: the wall clock is a year behind, unsynchronised
    booted = ManualClock(wall=NOW - 86400 * 365, monotonic=5.0, synchronised=False)
    await booted.advance(30)  # this much has certainly passed since NOW
    after_boot = open_guard(tmp_path, booted)
    outcome = after_boot.judge(command(NOW + 600, nonce(1)))  # a real command, made now
    assert isinstance(outcome, Fresh) and not outcome.time_checked
    assert outcome.note is not None and "clock is not synchronised" in outcome.note
    # the replay of the command accepted before the reboot is still refused
    assert code(after_boot.judge(command(NOW))) == "replayed"


async def test_with_the_clock_unsynchronised_a_command_older_than_the_last_known_time_is_expired(
    tmp_path: Path, clock: ManualClock
) -> None:
    guard = open_guard(tmp_path, clock)
    guard.remember(command(NOW))
    booted = ManualClock(wall=0.0, monotonic=5.0, synchronised=False)
    after_boot = open_guard(tmp_path, booted)
    await booted.advance(3600)  # monotonic time since the store was read counts too
    # issued before NOW (the last known time) + 1 h (elapsed) - the window: certainly stale
    outcome = after_boot.judge(command(NOW + 3600 - WINDOW - 10, nonce(2)))
    assert code(outcome) == "expired"
    assert isinstance(outcome, Refusal) and "last knew the time" in outcome.reason
    assert code(after_boot.judge(command(NOW + 3600 - WINDOW + 10, nonce(3)))) == "fresh"


async def test_the_last_synchronised_time_is_written_at_most_hourly(
    tmp_path: Path, clock: ManualClock
) -> None:
    guard = open_guard(tmp_path, clock)
    guard.remember(command(NOW))
    await clock.advance(60)
    assert not guard.checkpoint()
    await clock.advance(CHECKPOINT_INTERVAL)
    assert guard.checkpoint()
    booted = ManualClock(wall=0.0, synchronised=False)
    after_boot = open_guard(tmp_path, booted)
    assert after_boot.lower_bound() == pytest.approx(NOW + 60 + CHECKPOINT_INTERVAL)


def test_an_unsynchronised_clock_never_moves_the_last_synchronised_time(tmp_path: Path) -> None:
    wrong = ManualClock(wall=NOW + 86400 * 365, synchronised=False)  # a year ahead, unsynced
    guard = open_guard(tmp_path, wrong)
    assert guard.lower_bound() < NOW
    guard.remember(command(NOW))  # accepted on its nonce alone
    right = ManualClock(wall=NOW + 5)
    assert code(open_guard(tmp_path, right).judge(command(NOW + 5, nonce(1)))) == "fresh"


def test_a_window_beyond_a_day_is_refused(tmp_path: Path, clock: ManualClock) -> None:
    with pytest.raises(ValueError, match="time window"):
        ReplayGuard.open(tmp_path / "n.json", clock, window=86401)


def test_a_store_started_without_ntp_sets_its_horizon_once_the_clock_is_synchronised(
    tmp_path: Path,
) -> None:
    clock = ManualClock(wall=NOW, synchronised=False)
    guard = open_guard(tmp_path, clock)
    before = guard.judge(command(NOW - 100, nonce(1)))  # nothing known: nonce alone
    assert isinstance(before, Fresh) and not before.time_checked
    clock.synced = True
    assert code(guard.judge(command(NOW - 100, nonce(1)))) == "expired"
    assert code(guard.judge(command(NOW, nonce(2)))) == "fresh"
