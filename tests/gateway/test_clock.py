"""A Raspberry Pi boots at a stale time and NTP steps its clock later, by up to a year:
durations are measured on the monotonic clock, steps are noticed, and readings taken
before the clock was right are marked on the wire."""

from __future__ import annotations

import asyncio

import pytest

from drivers.core.clock import ManualClock
from drivers.core.model import Reading
from gateway.clock import ClockWatch, format_span
from gateway.pipeline.alarms import AlarmEvent, ThresholdAlarm
from gateway.pipeline.batcher import Batcher, SealedBatch
from gateway.pipeline.filters import PointProcessor, ProcessingSpec
from gateway.pipeline.processing import Processing

YEAR = 365 * 24 * 3600.0


@pytest.mark.parametrize("step", [YEAR, -YEAR], ids=["forward a year", "back a year"])
async def test_a_clock_step_is_noticed_once_with_its_size(
    step: float, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    steps: list[float] = []

    async def on_step(delta: float) -> None:
        steps.append(delta)

    watch = ClockWatch(clock, on_step, lambda synced: None)
    await clock.advance(1.0)
    assert await watch.check() == 0.0  # time passing is no step
    clock.step(step)
    await clock.advance(1.0)
    assert await watch.check() == pytest.approx(step)
    await clock.advance(1.0)
    assert await watch.check() == 0.0
    assert steps == [pytest.approx(step)]
    assert watch.steps == 1
    assert "stepped " + ("forward" if step > 0 else "back") + " by 365d" in caplog.text


async def test_losing_and_gaining_synchronisation_is_reported_once_each() -> None:
    clock = ManualClock()
    seen: list[bool] = []

    async def on_step(delta: float) -> None:
        pass

    watch = ClockWatch(clock, on_step, seen.append)
    clock.synced = False
    watch.check_sync()
    watch.check_sync()
    clock.synced = True
    watch.check_sync()
    assert seen == [False, True]


@pytest.mark.parametrize("step", [YEAR, -YEAR], ids=["forward a year", "back a year"])
async def test_alarm_delays_run_on_the_monotonic_clock_not_on_reading_timestamps(
    step: float,
) -> None:
    clock = ManualClock()
    events: list[AlarmEvent] = []
    alarm = ThresholdAlarm("hot", "d", "t", high=50.0, on_delay_ms=10_000)
    processing = Processing(
        {},
        {("d", "t"): [alarm]},
        lambda readings: None,
        events.append,
        clock_ms=lambda: int(clock.monotonic() * 1000),
    )

    def read(value: float) -> None:
        processing.add([Reading("d", "t", int(clock.time() * 1000), value)])

    read(60.0)
    await clock.advance(2.0)
    clock.step(step)  # the readings' timestamps jump by a year ...
    read(60.0)
    assert events == []  # ... but only 2 s of the 10 s delay have passed
    await clock.advance(8.5)
    read(60.0)
    assert [e.state for e in events] == ["raised"]


@pytest.mark.parametrize("step", [YEAR, -YEAR], ids=["forward a year", "back a year"])
async def test_heartbeats_and_spike_rates_ignore_a_clock_step(step: float) -> None:
    clock = ManualClock()
    out: list[Reading] = []
    spec = ProcessingSpec(deadband=1.0, heartbeat_ms=60_000, spike_max_rate=1.0)
    processing = Processing(
        {("d", "p"): PointProcessor(spec)},
        {},
        out.extend,
        lambda e: None,
        clock_ms=lambda: int(clock.monotonic() * 1000),
    )

    def read(value: float) -> None:
        processing.add([Reading("d", "p", int(clock.time() * 1000), value)])

    read(10.0)
    await clock.advance(1.0)
    clock.step(step)
    read(10.2)  # within the deadband; the heartbeat is not due after 1 s of real time
    assert len(out) == 1
    await clock.advance(1.0)
    read(10.4)  # a slow change is no spike, whatever the wall clock did
    assert all(r.quality == 0 for r in out)


async def test_the_open_batch_closes_when_the_clock_state_changes_and_says_so() -> None:
    written: list[SealedBatch] = []

    async def write(group: list[SealedBatch]) -> None:
        written.extend(group)

    batcher = Batcher(100, 60.0, write)
    task = asyncio.create_task(batcher.run())
    batcher.mark_clock(False)  # started before NTP
    batcher.add([Reading("d", "p", 1, 1.0)])
    batcher.mark_clock(True)  # NTP set the clock
    batcher.add([Reading("d", "p", 2, 2.0)])
    batcher.mark_clock(False)  # a step: what was read before it is suspect too
    batcher.add([Reading("d", "p", 3, 3.0)])
    await batcher.close(task)
    assert [(b[0].value, b.clock_synced) for b in written] == [
        (1.0, False),
        (2.0, False),
        (3.0, False),
    ]


async def test_a_writer_that_fails_unexpectedly_does_not_end_the_batcher() -> None:
    written: list[SealedBatch] = []
    calls = 0

    async def flaky(group: list[SealedBatch]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug in the writer")
        written.extend(group)

    clock = ManualClock()
    batcher = Batcher(2, 60.0, flaky, clock=clock)
    task = asyncio.create_task(batcher.run())
    batcher.add([Reading("d", "p", i, float(i)) for i in range(4)])
    await clock.advance(0.5)
    assert written == []  # the failed write waits a second before it is tried again
    await clock.advance(0.6)
    assert len(written) == 2
    await batcher.close(task)
    assert [r.value for b in written for r in b] == [0.0, 1.0, 2.0, 3.0]


def test_spans_read_like_people_write_them() -> None:
    assert format_span(1.5) == "1.5s"
    assert format_span(YEAR) == "365d"
    assert format_span(90_061) == "1d 1h 1min"
