"""Composition root: build every part from the config and run them in one task group.

Start order: buffer -> uplink -> batcher -> drivers. Stop (SIGTERM/SIGINT) in
reverse: drivers stop polling, the batcher seals its open batch and writes it to
the buffer, the uplink says goodbye (retained 'offline') and disconnects, the
buffer closes. Readings not yet in a batch when the process is SIGKILLed are the
only ones that can be lost: at most `batch.max_age` worth (docs/durability in
buffer/DESIGN.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import sqlite3
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

from buffer import BufferError, DurableQueue, ForeignFileError, PayloadTooLargeError
from drivers.base import Driver
from gateway import __version__
from gateway.build import build_drivers
from gateway.model import Reading
from gateway.pipeline.alarms import AlarmEvent
from gateway.pipeline.batcher import Batcher
from gateway.pipeline.processing import compile_processing
from gateway.settings import LoadedConfig
from gateway.store import Store
from gateway.tasks import cancel_and_wait
from gateway.uplink.mqtt import MqttUplink
from gateway.uplink.topics import Topics
from gateway.wire import encode_batch

log = logging.getLogger("gateway")

WRITE_RETRY_SECONDS = 1.0
UPLINK_STOP_SECONDS = 10.0  # drain what is on disk, say goodbye; then leave regardless
DRIVER_RESTART_SECONDS = 5.0
# Readings held in memory while the buffer refuses writes (a read-only SD card):
# beyond this the oldest are dropped, counted, and reported.
MAX_PENDING = 200_000
ALARM_BUFFER_BYTES = 16_000_000  # alarm events are small: this holds >50,000 of them


def open_queue(path: Path, **options: Any) -> DurableQueue:
    """Open a durable queue. A file that is sound but not ours (a newer format after a
    downgrade, another program's database) is moved aside, never a reason not to start:
    the gateway must keep collecting. Damaged files are salvaged by the buffer itself;
    a buffer in use by another process is still refused (two writers)."""
    try:
        return DurableQueue(path, **options)
    except ForeignFileError as err:
        aside = path.with_name(f"{path.name}.refused-{int(time.time())}")
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{path}{suffix}")
            if source.exists():
                source.rename(Path(f"{aside}{suffix}"))
        log.critical(
            "%s; moved it aside as %s (its contents are kept there, not sent) and started "
            "a fresh buffer",
            err,
            aside,
        )
        return DurableQueue(path, **options)


def alarm_buffer_path(data_path: Path) -> Path:
    """The alarm lane's own durable queue, next to the data buffer (buffer.alarms.db)."""
    return data_path.with_name(f"{data_path.stem}.alarms{data_path.suffix or '.db'}")


async def _supervise(driver: Driver) -> None:
    """Run a driver; a bug in it is logged and the driver restarted, not the gateway."""
    while True:
        try:
            await driver.run()
            return
        except Exception:
            log.exception(
                "driver %s failed unexpectedly; restarting it in %gs",
                driver.name,
                DRIVER_RESTART_SECONDS,
            )
            await asyncio.sleep(DRIVER_RESTART_SECONDS)


class Gateway:
    def __init__(self, loaded: LoadedConfig) -> None:
        self.loaded = loaded
        self.config = loaded.config
        self.gateway_id = self.config.gateway.id
        self.boot_id = secrets.token_hex(8)
        self.started_at = time.time()
        self.stop_requested = asyncio.Event()

    async def run(self) -> None:
        cfg = self.config
        self.batcher = Batcher(
            cfg.batch.max_readings,
            cfg.batch.max_age,
            self._write_batches,
            max_pending=MAX_PENDING,
            commit_interval=cfg.buffer.commit_interval,
        )
        self._alarm_events: asyncio.Queue[AlarmEvent] = asyncio.Queue()
        self.processing = compile_processing(cfg, self.batcher.add, self._alarm_events.put_nowait)
        self.drivers = build_drivers(cfg, self.processing.add)
        queue = open_queue(
            cfg.buffer.path,
            max_bytes=cfg.buffer.max_bytes,
            max_age=cfg.buffer.max_age,
            synchronous=cfg.buffer.sync,
        )
        self.store = store = Store(queue)
        self.alarm_store = alarm_store = Store(
            open_queue(alarm_buffer_path(cfg.buffer.path), max_bytes=ALARM_BUFFER_BYTES)
        )
        try:
            self._log_start(queue)
            self.uplink = MqttUplink(
                cfg.mqtt,
                Topics(cfg.mqtt.topic_prefix, self.gateway_id),
                store,
                alarm_store=alarm_store,
                identity={
                    "gateway_id": self.gateway_id,
                    "boot_id": self.boot_id,
                    "version": __version__,
                    "config_hash": self.loaded.config_hash,
                },
                health=self.health,
            )
            async with asyncio.TaskGroup() as tg:
                uplink_task = tg.create_task(self.uplink.run(), name="uplink")
                batcher_task = tg.create_task(self.batcher.run(), name="batcher")
                alarm_task = tg.create_task(self._write_alarms(), name="alarms")
                driver_tasks = [tg.create_task(_supervise(d), name=d.name) for d in self.drivers]
                await self.stop_requested.wait()
                log.info("stopping: polling ends, the open batch goes to the buffer")
                await cancel_and_wait(driver_tasks)
                self.processing.flush(time.time_ns() // 1_000_000)
                await self.batcher.close(batcher_task)
                await self._alarm_events.join()  # every alarm event is on disk
                await cancel_and_wait([alarm_task])
                self.uplink.stop()
                try:
                    async with asyncio.timeout(UPLINK_STOP_SECONDS):
                        await asyncio.shield(uplink_task)
                except TimeoutError:
                    log.warning("the broker did not answer in time; leaving without a goodbye")
                    await cancel_and_wait([uplink_task])
        finally:
            store.close()
            alarm_store.close()
        stats = queue.stats()
        log.info("stopped; %d batch(es) remain on disk for the next start", stats.batches)

    async def _write_alarms(self) -> None:
        """Persist alarm events, one by one, as soon as they happen (the alarm lane)."""
        while True:
            event = await self._alarm_events.get()
            doc = event.as_dict()
            log.log(
                logging.WARNING if event.state == "raised" else logging.INFO,
                "alarm %s %s: %s",
                event.alarm,
                event.state,
                event.message,
            )
            make_payload = partial(self._alarm_payload, doc=doc)
            await self._retry_on_disk_errors(
                partial(self.alarm_store.append, make_payload), f"alarm {event.alarm}"
            )
            self._alarm_events.task_done()

    def _alarm_payload(self, seq: int, *, doc: dict[str, object]) -> bytes:
        envelope = {"gateway_id": self.gateway_id, "boot_id": self.boot_id, "seq": seq, **doc}
        return json.dumps(envelope, separators=(",", ":")).encode()

    def _log_start(self, queue: DurableQueue) -> None:
        stats = queue.stats()
        log.info(
            "gateway %r starting (boot %s, config %s): buffer %s holds %d batch(es), next seq %d",
            self.gateway_id,
            self.boot_id,
            self.loaded.config_hash,
            self.config.buffer.path,
            stats.batches,
            stats.last_seq + 1,
        )
        if queue.recovered_from:
            log.error(
                "the buffer file was damaged: %d batch(es) salvaged, %d unreadable; the damaged "
                "file is kept aside as %s (see buffer/DESIGN.md)",
                queue.salvaged_batches,
                queue.unreadable_batches,
                queue.recovered_from,
            )

    async def _write_batches(self, batches: list[list[Reading]]) -> None:
        """Persist closed batches in one commit; never drop them for a transient disk error."""
        try:
            await self._retry_on_disk_errors(
                lambda: self.store.append_many([self._encoder(b) for b in batches]),
                f"{len(batches)} batch(es)",
            )
        except PayloadTooLargeError:
            for batch in batches:  # find the one too large, split it
                await self._write_batch(batch)

    async def _write_batch(self, readings: list[Reading]) -> None:
        """Persist one batch, halving it until it fits the buffer's byte bound."""
        try:
            await self._retry_on_disk_errors(
                lambda: self.store.append(self._encoder(readings)),
                f"a batch of {len(readings)} readings",
            )
        except PayloadTooLargeError:
            if len(readings) == 1:
                log.error(
                    "a single reading of %s/%s is larger than the whole buffer; dropped",
                    readings[0].device,
                    readings[0].point,
                )
                return
            half = len(readings) // 2
            await self._write_batch(readings[:half])
            await self._write_batch(readings[half:])

    @staticmethod
    async def _retry_on_disk_errors(write: Callable[[], Awaitable[object]], what: str) -> None:
        """Run a buffer write until it succeeds: a full or failing disk keeps the data in
        memory (bounded by the batcher) and is logged once, and once when it recovers."""
        failing = False
        while True:
            try:
                await write()
            except PayloadTooLargeError:
                raise
            except (BufferError, OSError, sqlite3.Error) as err:
                if not failing:
                    log.error(
                        "cannot write %s to the buffer (%s); keeping it in memory and retrying",
                        what,
                        err,
                    )
                    failing = True
                await asyncio.sleep(WRITE_RETRY_SECONDS)
                continue
            if failing:
                log.info("the buffer accepts writes again")
            return

    def _encoder(self, readings: list[Reading]) -> Callable[[int], bytes]:
        return partial(self._encode, readings=readings)

    def _encode(self, seq: int, *, readings: list[Reading]) -> bytes:
        return encode_batch(self.gateway_id, self.boot_id, seq, readings)

    def health(self) -> dict[str, Any]:
        stats = self.store.stats
        now = time.time()
        return {
            "gateway_id": self.gateway_id,
            "boot_id": self.boot_id,
            "version": __version__,
            "config_hash": self.loaded.config_hash,
            "ts": round(now, 3),
            "uptime_s": round(now - self.started_at, 1),
            "buffer": {
                "batches": stats.batches,
                "bytes": stats.bytes,
                "max_bytes": self.config.buffer.max_bytes,
                "oldest_unsent_age_s": (
                    round(now - stats.oldest_created_at, 1) if stats.oldest_created_at else None
                ),
                "last_seq": stats.last_seq,
                "evicted_batches": stats.evicted_batches,
                "evicted_bytes": stats.evicted_bytes,
                "evicted_by_age_batches": stats.evicted_by_age_batches,
                "recovered_from": stats.recovered_from,
                "salvaged_batches": stats.salvaged_batches,
                "unreadable_batches": stats.unreadable_batches,
            },
            "uplink": self.uplink.health(),
            "alarms": {
                "events": self.processing.alarm_events,
                "waiting": self.alarm_store.stats.batches,
                "evicted": self.alarm_store.stats.evicted_batches,
            },
            "processing": self.processing.counters(),
            "pipeline": {
                "readings_in": self.batcher.readings_in,
                "readings_pending": self.batcher.pending,
                "batches_written": self.batcher.batches_written,
                "readings_dropped": self.batcher.readings_dropped,
            },
            "devices": [d.as_dict() for e in self.drivers for d in e.health()],
        }
