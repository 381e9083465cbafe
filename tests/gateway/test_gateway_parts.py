"""The gateway's own duties, part by part, on real buffer files and virtual time (no broker):
a batch the encoder refuses is set aside, never the pipeline's end; the age bound is
applied on a timer even when nothing is appended; a clock step re-dates this boot's
batches so that the age bound judges true ages."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

import gateway.app as app_module
from drivers.core.clock import ManualClock
from drivers.core.model import Reading
from gateway.app import Gateway
from gateway.pipeline.batcher import SealedBatch
from gateway.settings import parse_config

YEAR = 365 * 24 * 3600.0


def gateway(tmp_path: Path, clock: ManualClock, buffer: str = "") -> Gateway:
    text = f"""
[gateway]
id = "gw"
[buffer]
path = "{tmp_path / "buffer.db"}"
{buffer}
[[devices]]
name = "pump"
protocol = "modbus_tcp"
host = "127.0.0.1"
port = 9
points = [{{ name = "p", address = 0 }}]
"""
    gw = Gateway(parse_config(text.encode()), clock=clock)
    gw._open_stores()
    return gw


def batch(*values: object) -> SealedBatch:
    return SealedBatch([Reading("pump", "p", 1_000 + i, v) for i, v in enumerate(values)])


async def test_a_batch_the_encoder_refuses_is_set_aside_and_the_others_are_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    gw = gateway(tmp_path, ManualClock())
    real = app_module.encode_batch

    def encoder_with_a_bug(gateway_id: str, boot_id: str, seq: int, readings, **kw):  # type: ignore[no-untyped-def]
        if any(r.value == 13.0 for r in readings):
            raise RuntimeError("a bug in the encoder")
        return real(gateway_id, boot_id, seq, readings, **kw)

    monkeypatch.setattr(app_module, "encode_batch", encoder_with_a_bug)
    try:
        await gw._write_batches([batch(1.0), batch(13.0), batch(2.0)])
        await gw._write_batches([batch(13.0, 14.0)])
        # The good ones, in one piece each: published from memory, on disk unless acked.
        assert gw.store.staged == 2
        assert await gw.store.commit_staged()
        assert gw.store.stats.batches == 2
        assert (gw.batches_set_aside, gw.readings_set_aside) == (2, 3)
        kept = (tmp_path / "buffer.db.set-aside.jsonl").read_text().splitlines()
        assert [len(json.loads(line)["readings"]) for line in kept] == [1, 2]
        assert sum("cannot be encoded" in m for m in caplog.messages) == 1  # logged once
    finally:
        gw.store.close()
        gw.alarm_store.close()


async def test_the_age_bound_applies_on_a_timer_when_nothing_is_appended(tmp_path: Path) -> None:
    clock = ManualClock()
    gw = gateway(tmp_path, clock, buffer='max_age = "1h"\nwrite = "all"')
    try:
        await gw._write_batches([batch(1.0), batch(2.0)])
        timers = asyncio.create_task(gw._maintain_buffers())
        await clock.advance(3599)
        assert gw.store.stats.batches == 2
        await clock.advance(3)  # every device dead: no append, the timer alone ages out
        # The eviction runs on the buffer's worker thread: the timer may still be waiting
        # for it when virtual time stops moving, so time goes on a second at a time.
        for _ in range(100):
            if gw.store.stats.batches == 0:
                break
            await asyncio.sleep(0.01)
            await clock.advance(1)
        assert gw.store.stats.batches == 0
        assert gw.store.stats.evicted_by_age_batches == 2
        timers.cancel()
    finally:
        gw.store.close()
        gw.alarm_store.close()


async def test_a_year_long_clock_step_does_not_age_out_what_this_boot_stored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    clock = ManualClock()
    gw = gateway(tmp_path, clock, buffer='max_age = "24h"\nwrite = "all"')
    try:
        await gw._write_batches([batch(1.0)])  # stamped at the stale boot time
        clock.step(YEAR)  # NTP sets the clock a year ahead
        await clock.advance(1)
        await gw._write_batches([batch(2.0)])  # notices the step first, then stores
        await gw.store.evict_older_than()
        assert gw.store.stats.batches == 2, "a fresh backlog was evicted for a clock step"
        assert gw.clock_watch.steps == 1
        assert any("re-dated 1 batch(es) of the data buffer" in m for m in caplog.messages)
    finally:
        gw.store.close()
        gw.alarm_store.close()
