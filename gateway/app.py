"""Composition root: build every part from the config and run them in one task group.

Start order: buffer -> uplink -> batcher -> drivers. Stop (SIGTERM/SIGINT) in
reverse: drivers stop polling, the batcher seals its open batch and writes it to
the buffer, the uplink says goodbye (retained 'offline') and disconnects, the
buffer closes. Readings not yet in a batch when the process is SIGKILLed are the
only ones that can be lost: at most `batch.max_age` worth (docs/durability in
buffer/DESIGN.md).

Reload (SIGHUP, `systemctl reload`): the file is validated first; a config with
problems is refused, logged, and the running one carries on. A good one is switched
in without losing the open batch or the buffer: drivers are replaced, processing
and alarm state is kept for points whose rules did not change, batch settings apply
at once, [mqtt] changes reconnect the uplink.

Nothing a device sends, and no disk trouble, ends the process: values the wire
cannot carry are replaced (no value, quality invalid_value), a batch that still
cannot be encoded is set aside (counted, logged once, kept in
`<buffer>.set-aside.jsonl`), a full disk keeps data in memory (bounded) and
retries, also at start-up. Start-up fails only for reasons a fresh start cannot
fix (a buffer path that is not ours, a read-only directory): `StartupError`, one
sentence, exit code 3.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from buffer import (
    BufferError,
    BufferInUseError,
    DurableQueue,
    NewerFormatError,
    PayloadTooLargeError,
)
from drivers.base import DeviceHealth, Driver
from drivers.core.clock import Clock, SystemClock
from drivers.core.model import Reading
from gateway import __version__, systemd
from gateway.build import build_drivers
from gateway.clock import ClockWatch, format_span
from gateway.errors import ConfigError, StartupError
from gateway.health import HealthModel, HealthSources
from gateway.pipeline.alarms import AlarmEvent
from gateway.pipeline.batcher import Batcher, SealedBatch
from gateway.pipeline.processing import Processing, compile_processing
from gateway.settings import LoadedConfig, load_config
from gateway.store import Store
from gateway.tasks import cancel_and_wait
from gateway.uplink.mqtt import MqttUplink
from gateway.uplink.topics import Topics
from gateway.wire import encode_batch
from gateway.wire.events import (
    ActiveAlarm,
    ActiveAlarms,
    DeviceState,
    Event,
    EventKind,
    Metadata,
    encode_json,
)
from gateway.wire.messages import (
    AlarmMessage,
    AlarmsHealth,
    Identity,
    PipelineHealth,
    ReloadsHealth,
    encode,
    to_json,
)

log = logging.getLogger("gateway")

WRITE_RETRY_SECONDS = 1.0
UPLINK_STOP_SECONDS = 15.0  # drain (5 s), goodbye (2 s), disconnect (2 s); then leave regardless
DRIVER_RESTART_SECONDS = 5.0
# Readings held in memory while the buffer refuses writes (a read-only SD card):
# beyond this the oldest are dropped, counted, and reported.
MAX_PENDING = 200_000
ALARM_BUFFER_BYTES = 16_000_000  # alarm events are small: this holds >50,000 of them
SYNC_INTERVAL = 1.0  # sync = "normal": the WAL is fsynced this often
AGE_CHECK_INTERVAL = 1.0  # the age bound applies this often, appends or not (free if none expired)
REOPEN_INTERVAL = 5.0  # a buffer that could not be opened (full disk) is retried this often
SET_ASIDE_MAX_BYTES = 10_000_000  # the set-aside file stops growing here (still counted)


def open_queue(path: Path, **options: Any) -> DurableQueue:
    """Open a durable queue. A buffer written by a newer gateway (ours, but a format this
    one cannot read) is moved aside and a fresh one started: the gateway must keep
    collecting. Damaged buffers are salvaged by the buffer itself. Anything not ours at
    the path, or a buffer in use by another process, is refused (BufferError)."""
    try:
        return DurableQueue(path, **options)
    except NewerFormatError as err:
        aside = path.with_name(f"{path.name}.refused-{int(time.time())}")
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{path}{suffix}")
            if source.is_file():
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


async def _supervise(driver: Driver, clock: Clock) -> None:
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
            await clock.sleep(DRIVER_RESTART_SECONDS)


class _Unencodable(Exception):
    """A batch that the wire encoder refused (a bug: values are checked before)."""


class Gateway:
    """The gateway: every part built from the config here, started by `run`."""

    def __init__(self, loaded: LoadedConfig, *, clock: Clock | None = None) -> None:
        self.loaded = loaded
        self.config = cfg = loaded.config
        self.gateway_id = cfg.gateway.id
        self.boot_id = secrets.token_hex(8)
        self.clock: Clock = clock or SystemClock(trust=cfg.gateway.clock_sync == "assume")
        self.stop_requested = asyncio.Event()
        self.reload_requested = asyncio.Event()
        self.reloads_applied = 0
        self.reloads_refused = 0
        self.reload_error: str | None = None
        self.batches_set_aside = 0
        self.readings_set_aside = 0
        self._invalid_logged: set[tuple[str, str]] = set()
        self._driver_tasks: list[asyncio.Task[None]] = []
        self._tg: asyncio.TaskGroup | None = None
        # The data path, producer to consumer: drivers -> processing -> batcher -> store
        # -> uplink; alarm events -> their queue -> the alarm store -> the uplink.
        self.batcher = Batcher(
            cfg.batch.max_readings,
            cfg.batch.max_age,
            self._write_batches,
            max_pending=MAX_PENDING,
            commit_interval=cfg.buffer.commit_interval,
            clock=self.clock,
        )
        self._alarm_events: asyncio.Queue[AlarmEvent] = asyncio.Queue()
        self.processing = self._build_processing(loaded, None)
        self.drivers = build_drivers(cfg, self.processing.add)
        self.store, self.alarm_store = self._stores()
        self.health_model = HealthModel(
            HealthSources(
                identity=self._identity,
                clock=lambda: self.clock_watch.health(),
                buffer=lambda: self.store.health(self.clock.time(), self.config.buffer.max_bytes),
                uplink=lambda: self.uplink.health(),
                alarms=self._alarms_health,
                processing=lambda: self.processing.counters(),
                pipeline=self._pipeline_health,
                reloads=lambda: ReloadsHealth(
                    self.reloads_applied, self.reloads_refused, self.reload_error
                ),
                devices=lambda: [d.as_dict() for e in self.drivers for d in e.health()],
            ),
            self.clock,
        )
        self.uplink = MqttUplink(
            cfg.mqtt,
            Topics(cfg.mqtt.topic_prefix, self.gateway_id),
            self.store,
            alarm_store=self.alarm_store,
            identity=self._identity(),
            health=self.health_model.payload,
            clock=self.clock,
        )
        self.clock_watch = ClockWatch(self.clock, self._clock_stepped, self.batcher.mark_clock)
        # Events and the present state at the centre (docs/topics.md).
        self.batcher.config_hash = loaded.config_hash
        self._event_seq = 0
        self._device_since: dict[str, float] = {}
        self._active_alarms: dict[str, ActiveAlarm] = {}
        self._evicting = False
        self.uplink.retained = self._retained_state
        self._watch_devices()

    # --- parts --------------------------------------------------------------------------

    def _build_processing(self, loaded: LoadedConfig, previous: Processing | None) -> Processing:
        return compile_processing(
            loaded.config,
            self.batcher.add,
            self._alarm_events.put_nowait,
            on_invalid=self._invalid_value,
            clock_ms=lambda: int(self.clock.monotonic() * 1000),
            previous=previous,
        )

    def _stores(self) -> tuple[Store, Store]:
        """The data and alarm buffers, not opened yet (opening is I/O: `run` does it)."""
        buffer = self.config.buffer
        data = Store(
            partial(
                open_queue,
                buffer.path,
                max_bytes=buffer.max_bytes,
                max_age=buffer.max_age,
                synchronous=buffer.sync,
                clock=self.clock.time,
            ),
            "data",
        )
        alarms = Store(
            partial(
                open_queue,
                alarm_buffer_path(buffer.path),
                max_bytes=ALARM_BUFFER_BYTES,
                clock=self.clock.time,
            ),
            "alarm",
        )
        return data, alarms

    def _open_stores(self) -> None:
        try:
            for store in (self.store, self.alarm_store):
                if not store.open():
                    log.error(
                        "cannot open the %s buffer: %s; readings are kept in memory (up to "
                        "%d) and the buffer is opened as soon as there is room",
                        store.name,
                        store.open_error,
                        MAX_PENDING,
                    )
        except BufferInUseError as err:
            raise StartupError(f"{err}; is another gateway running on this buffer?") from err
        except BufferError as err:
            raise StartupError(str(err)) from err

    # --- running ------------------------------------------------------------------------

    async def run(self) -> None:
        """Open the buffers, run every part until a stop is requested, stop in order."""
        self._open_stores()
        store, alarm_store = self.store, self.alarm_store
        try:
            self._log_start()
            for warning in self.loaded.warnings:
                log.warning("config %s: %s", self.loaded.source, warning)
            self.batcher.mark_clock(self.clock_watch.synchronised)
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                uplink_task = tg.create_task(self.uplink.run(), name="uplink")
                batcher_task = tg.create_task(self.batcher.run(), name="batcher")
                alarm_task = tg.create_task(self._write_alarms(), name="alarms")
                helpers = [
                    tg.create_task(self._maintain_buffers(), name="buffer-timers"),
                    tg.create_task(self.clock_watch.run(), name="clock"),
                    tg.create_task(self._reload_on_request(), name="reload"),
                    tg.create_task(
                        systemd.ready_when(
                            self.uplink.first_attempt_done,
                            2 * self.config.mqtt.connect_timeout + 5,
                            self._status_line,
                        ),
                        name="systemd-ready",
                    ),
                    tg.create_task(
                        systemd.feed_watchdog(self.alive, self.clock), name="systemd-watchdog"
                    ),
                ]
                self._start_drivers()
                await self.stop_requested.wait()
                systemd.notify("STOPPING=1", "STATUS=stopping: the open batch goes to the buffer")
                log.info("stopping: polling ends, the open batch goes to the buffer")
                await cancel_and_wait(helpers)
                await cancel_and_wait(self._driver_tasks)
                self.processing.flush(int(self.clock.time() * 1000))
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
            self._tg = None
            store.close()
            alarm_store.close()
        stats = store.stats
        log.info("stopped; %d batch(es) remain on disk for the next start", stats.batches)

    def _start_drivers(self) -> None:
        assert self._tg is not None
        self._driver_tasks = [
            self._tg.create_task(_supervise(d, self.clock), name=d.name) for d in self.drivers
        ]

    def request_stop(self) -> None:
        self.stop_requested.set()

    def request_reload(self) -> None:
        self.reload_requested.set()

    def _identity(self) -> Identity:
        return Identity(self.gateway_id, self.boot_id, __version__, self.loaded.config_hash)

    # --- reload ---------------------------------------------------------------------------

    async def _reload_on_request(self) -> None:
        while True:
            await self.reload_requested.wait()
            self.reload_requested.clear()
            systemd.notify("RELOADING=1", "STATUS=reloading the config")
            await self.reload()
            systemd.notify("READY=1", f"STATUS={self._status_line()}")

    def _status_line(self) -> str:
        """For `systemctl status`: what the gateway is doing, in one line."""
        stats = self.store.stats
        return (
            f"{len(self.config.devices)} device(s), uplink {self.uplink.state}, "
            f"{stats.batches} batch(es) on disk, config {self.loaded.config_hash}"
        )

    def alive(self) -> str | None:
        """None while every part makes progress; else what is stuck (the watchdog's
        question). A blocked event loop cannot even ask: the watchdog starves."""
        return self.uplink.stalled()

    async def reload(self, source: str | Path | None = None) -> bool:
        """Validate the config file and switch to it; False (logged) when it is refused."""
        path = source if source is not None else self.loaded.source
        try:
            loaded = await asyncio.to_thread(load_config, path)
        except ConfigError as err:
            return self._reload_refused(f"{err}")
        if loaded.config.buffer.path != self.config.buffer.path:
            return self._reload_refused(
                f"{path}: buffer.path changes from {self.config.buffer.path} to "
                f"{loaded.config.buffer.path}; moving the buffer needs a restart"
            )
        processing = self._build_processing(loaded, self.processing)
        try:
            drivers = build_drivers(loaded.config, processing.add)
        except ValueError as err:  # the planner refuses what the models let through
            return self._reload_refused(f"{path}: {err}")
        await self._switch(loaded, processing, drivers)
        return True

    def _reload_refused(self, why: str) -> bool:
        self.reloads_refused += 1
        self.reload_error = why
        log.error("reload refused, the running config (%s) stays: %s", self.loaded.config_hash, why)
        self._event(
            "config_refused",
            f"a new config was refused; {self.loaded.config_hash} stays: {why}",
            running=self.loaded.config_hash,
            reason=why,
        )
        return False

    async def _switch(
        self, loaded: LoadedConfig, processing: Processing, drivers: list[Driver]
    ) -> None:
        old = self.loaded
        cfg = loaded.config
        await cancel_and_wait(self._driver_tasks)
        # Aggregation windows of points whose processing changed or went away close now.
        kept = set(map(id, processing.processors.values()))
        closing = [p for p in self.processing.processors.values() if id(p) not in kept]
        self.processing.flush(int(self.clock.time() * 1000), only=closing)
        self.batcher.seal(loaded.config_hash)  # what was read so far belongs to the old one
        removed = {h.name for d in self.drivers for h in d.health()} - {
            h.name for d in drivers for h in d.health()
        }
        self.processing = processing
        self.drivers = drivers
        self.loaded, self.config = loaded, cfg
        self.batcher.max_readings = cfg.batch.max_readings
        self.batcher.max_age = cfg.batch.max_age
        self.batcher.commit_interval = cfg.buffer.commit_interval
        logging.getLogger().setLevel(cfg.gateway.log_level.upper())
        if cfg.gateway.id != self.gateway_id or cfg.mqtt != old.config.mqtt:
            self.gateway_id = cfg.gateway.id
            self.uplink.reconfigure(
                cfg.mqtt, Topics(cfg.mqtt.topic_prefix, self.gateway_id), self._identity()
            )
        else:
            self.uplink.identity = self._identity()
        if cfg.buffer != old.config.buffer:
            log.warning("[buffer] settings other than the path take effect at the next restart")
        self._invalid_logged.clear()
        self._watch_devices()
        for name in sorted(removed):  # a removed device's retained state is cleared
            self.uplink.send(self.uplink.topics.device(name), b"", retain=True)
        self.uplink.send(self.uplink.topics.meta(loaded.config_hash), self._metadata(), retain=True)
        self._start_drivers()
        self.reloads_applied += 1
        self.reload_error = None
        self._event(
            "config_applied",
            f"config {loaded.config_hash} applied (was {old.config_hash})",
            config_hash=loaded.config_hash,
            previous=old.config_hash,
            source=str(loaded.source),
        )
        log.info(
            "reloaded the config from %s: %s -> %s, %d device(s)",
            loaded.source,
            old.config_hash,
            loaded.config_hash,
            len(cfg.devices),
        )

    # --- events and the present state -------------------------------------------------------

    def _event(self, kind: EventKind, message: str, **data: Any) -> None:
        self._event_seq += 1
        event = Event(
            self.gateway_id, self.boot_id, self._event_seq, self.clock.time(), kind, message, data
        )
        self.uplink.send(self.uplink.topics.event, encode_json(event))

    def _watch_devices(self) -> None:
        for driver in self.drivers:
            for health in driver.health():
                health.on_change = self._device_changed
                self._device_since.setdefault(health.name, self.clock.time())

    def _device_changed(self, health: DeviceHealth, previous: str) -> None:
        self._device_since[health.name] = self.clock.time()
        kind: EventKind | None = {
            "online": "device_online",
            "degraded": "device_degraded",
            "offline": "device_offline",
        }.get(health.state)  # type: ignore[assignment]
        if kind is None:
            return
        reason = None if health.state == "online" else health.last_error
        self._event(
            kind,
            f"device {health.name!r} ({health.address}) is {health.state}"
            + (f": {reason}" if reason else ""),
            device=health.name,
            state=health.state,
            previous=previous,
            reason=reason,
        )
        topic = self.uplink.topics.device(health.name)
        self.uplink.send(topic, self._device_state(health), retain=True)

    def _device_state(self, health: DeviceHealth) -> bytes:
        reason = None if health.state in ("online", "unknown") else health.last_error
        since = self._device_since.get(health.name, self.clock.time())
        state = DeviceState(
            self.gateway_id, health.name, health.state, since, reason, self.clock.time()
        )
        return encode_json(state)

    def _alarms_state(self) -> bytes:
        alarms = sorted(self._active_alarms.values(), key=lambda a: a.since_ms)
        return encode_json(ActiveAlarms(self.gateway_id, self.clock.time(), alarms))

    def _metadata(self) -> bytes:
        devices = [
            d.model_dump(mode="json", exclude_none=True)
            for d in self.config.devices
            if isinstance(d, BaseModel)  # every device config is one (the plugins' models)
        ]
        meta = Metadata(self.gateway_id, self.loaded.config_hash, self.clock.time(), devices)
        return encode_json(meta)

    def _retained_state(self) -> list[tuple[str, bytes]]:
        """What a dashboard that subscribes late must see at once: published at every
        connect (the broker may have restarted without persistence)."""
        topics = self.uplink.topics
        states = [
            (topics.device(health.name), self._device_state(health))
            for driver in self.drivers
            for health in driver.health()
        ]
        return [
            *states,
            (topics.alarms_active, self._alarms_state()),
            (topics.meta(self.loaded.config_hash), self._metadata()),
        ]

    def _alarm_changed(self, event: AlarmEvent) -> None:
        if event.state == "raised":
            self._active_alarms[event.alarm] = ActiveAlarm(
                event.alarm,
                event.device,
                event.point,
                event.severity,
                event.ts_ms,
                event.value,
                event.message,
            )
        else:
            self._active_alarms.pop(event.alarm, None)
        self.uplink.send(self.uplink.topics.alarms_active, self._alarms_state(), retain=True)

    def _watch_eviction(self) -> None:
        """An eviction episode starting or ending is an event (the time range lost)."""
        episode = self.store.stats.eviction
        active = episode is not None and episode.active
        if active == self._evicting or episode is None:
            return
        self._evicting = active
        lost = {
            "cause": episode.cause,
            "first_seq": episode.first_seq,
            "last_seq": episode.last_seq,
            "batches": episode.batches,
            "bytes": episode.bytes,
            "oldest_created_at": episode.oldest_created_at,
            "newest_created_at": episode.newest_created_at,
        }
        if active:
            self._event(
                "eviction_started",
                f"the buffer is full ({episode.cause}): the oldest batches are evicted, "
                f"from seq {episode.first_seq}",
                **lost,
            )
        else:
            self._event(
                "eviction_stopped",
                f"eviction stopped: {episode.batches} batch(es), seqs "
                f"{episode.first_seq}-{episode.last_seq}, were lost",
                **lost,
            )

    # --- timers ----------------------------------------------------------------------------

    async def _maintain_buffers(self) -> None:
        """Open a buffer that could not be opened; fsync on a timer with sync = "normal";
        apply the age bound on a timer (a gateway whose devices are all dead appends
        nothing, and its backlog must still age out)."""
        buffer = self.config.buffer
        last_age_check = last_reopen = self.clock.monotonic()
        while True:
            await self.clock.sleep(SYNC_INTERVAL)
            self._watch_eviction()
            now = self.clock.monotonic()
            try:
                if now - last_reopen >= REOPEN_INTERVAL:
                    last_reopen = now
                    for store in (self.store, self.alarm_store):
                        if store.queue is None and await store.reopen():
                            log.info("the %s buffer is open now", store.name)
                if buffer.sync == "normal":
                    await self.store.sync()
                    await self.alarm_store.sync()
                if buffer.max_age is not None and now - last_age_check >= AGE_CHECK_INTERVAL:
                    last_age_check = now
                    await self.store.evict_older_than()
            except (BufferError, OSError, sqlite3.Error) as err:
                log.debug("buffer timer: %s", err)  # the writers log disk trouble once

    async def _clock_stepped(self, delta: float) -> None:
        """Readings taken before the step are marked; what this boot stored before it is
        re-dated so that the age bound judges true ages."""
        self.batcher.mark_clock(False)
        self._event(
            "clock_stepped",
            f"the wall clock stepped {'forward' if delta > 0 else 'back'} by "
            f"{format_span(abs(delta))}",
            step_s=round(delta, 3),
        )
        for store in (self.store, self.alarm_store):
            try:
                shifted = await store.shift_created_at(delta)
            except (BufferError, OSError, sqlite3.Error) as err:
                log.error("could not re-date the %s buffer after the step: %s", store.name, err)
                continue
            if shifted:
                log.info(
                    "re-dated %d batch(es) of the %s buffer by %s",
                    shifted,
                    store.name,
                    format_span(abs(delta)),
                )

    # --- writing ----------------------------------------------------------------------------

    async def _write_alarms(self) -> None:
        """Persist alarm events, one by one, as soon as they happen (the alarm lane)."""
        while True:
            event = await self._alarm_events.get()
            log.log(
                logging.WARNING if event.state == "raised" else logging.INFO,
                "alarm %s %s: %s",
                event.alarm,
                event.state,
                event.message,
            )
            self._alarm_changed(event)
            make_payload = partial(self._alarm_payload, event=event)
            await self._retry_on_disk_errors(
                partial(self.alarm_store.append, make_payload), f"alarm {event.alarm}"
            )
            self._alarm_events.task_done()

    def _alarm_payload(self, seq: int, *, event: AlarmEvent) -> bytes:
        return encode(
            AlarmMessage(
                gateway_id=self.gateway_id,
                boot_id=self.boot_id,
                seq=seq,
                alarm=event.alarm,
                device=event.device,
                point=event.point,
                state=event.state,
                ts_ms=event.ts_ms,
                value=event.value,
                severity=event.severity,
                message=event.message,
            )
        )

    def _log_start(self) -> None:
        stats = self.store.stats
        log.info(
            "gateway %r starting (boot %s, config %s): buffer %s holds %d batch(es), next seq %d",
            self.gateway_id,
            self.boot_id,
            self.loaded.config_hash,
            self.config.buffer.path,
            stats.batches,
            stats.last_seq + 1,
        )
        queue = self.store.queue
        if queue is not None and queue.recovered_from:
            log.error(
                "the buffer file was damaged: %d batch(es) salvaged, %d unreadable; the damaged "
                "file is kept aside as %s (see buffer/DESIGN.md)",
                queue.salvaged_batches,
                queue.unreadable_batches,
                queue.recovered_from,
            )

    async def _write_batches(self, batches: list[SealedBatch]) -> None:
        """Persist closed batches in one commit; never drop them for a transient disk error."""
        # A clock step is handled before anything stamped after it is stored: otherwise
        # the re-dating of this boot's batches would shift those twice.
        await self.clock_watch.check()
        try:
            await self._retry_on_disk_errors(
                lambda: self.store.append_many([self._encoder(b) for b in batches]),
                f"{len(batches)} batch(es)",
            )
        except (PayloadTooLargeError, _Unencodable):
            for batch in batches:  # find the one at fault
                await self._write_batch(batch)

    async def _write_batch(self, readings: SealedBatch) -> None:
        """Persist one batch, halving it until it fits the buffer's byte bound."""
        try:
            await self._retry_on_disk_errors(
                lambda: self.store.append(self._encoder(readings)),
                f"a batch of {len(readings)} readings",
            )
        except _Unencodable as err:
            self._set_aside(readings, err)
        except PayloadTooLargeError:
            if len(readings) == 1:
                log.error(
                    "a single reading of %s/%s is larger than the buffer takes in one batch "
                    "(see [buffer] max_bytes); dropped",
                    readings[0].device,
                    readings[0].point,
                )
                return
            half = len(readings) // 2
            tags = {"clock_synced": readings.clock_synced, "config_hash": readings.config_hash}
            await self._write_batch(SealedBatch(readings[:half], **tags))  # type: ignore[arg-type]
            await self._write_batch(SealedBatch(readings[half:], **tags))  # type: ignore[arg-type]

    async def _retry_on_disk_errors(
        self, write: Callable[[], Awaitable[object]], what: str
    ) -> None:
        """Run a buffer write until it succeeds: a full or failing disk keeps the data in
        memory (bounded by the batcher) and is logged once, and once when it recovers."""
        failing = False
        while True:
            try:
                await write()
            except (PayloadTooLargeError, _Unencodable):
                raise
            except (BufferError, OSError, sqlite3.Error) as err:
                if not failing:
                    log.error(
                        "cannot write %s to the buffer (%s); keeping it in memory and retrying",
                        what,
                        err,
                    )
                    failing = True
                await self.clock.sleep(WRITE_RETRY_SECONDS)
                continue
            except Exception:  # a bug: say so once, keep the data, keep trying
                if not failing:
                    log.exception("writing %s to the buffer failed unexpectedly; retrying", what)
                    failing = True
                await self.clock.sleep(WRITE_RETRY_SECONDS)
                continue
            if failing:
                log.info("the buffer accepts writes again")
            return

    def _encoder(self, readings: SealedBatch) -> Callable[[int], bytes]:
        return partial(self._encode, readings=readings)

    def _encode(self, seq: int, *, readings: SealedBatch) -> bytes:
        try:
            return encode_batch(
                self.gateway_id,
                self.boot_id,
                seq,
                readings,
                clock_synced=readings.clock_synced,
                config_hash=readings.config_hash,
            )
        except Exception as err:  # the encoder is total for what the pipeline makes
            raise _Unencodable(f"{type(err).__name__}: {err}") from err

    def _set_aside(self, readings: Sequence[Reading], err: Exception) -> None:
        """A batch that cannot be encoded is kept in a side file for people, not lost
        silently, and never stops the pipeline."""
        self.batches_set_aside += 1
        self.readings_set_aside += len(readings)
        path = self.config.buffer.path.with_name(f"{self.config.buffer.path.name}.set-aside.jsonl")
        record = {
            "ts": round(self.clock.time(), 3),
            "reason": str(err),
            "readings": [[r.device, r.point, r.ts_ms, repr(r.value), r.quality] for r in readings],
        }
        kept = False
        try:
            if not path.exists() or path.stat().st_size < SET_ASIDE_MAX_BYTES:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                with os.fdopen(fd, "a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")
                kept = True
        except OSError:
            pass
        if self.batches_set_aside == 1:
            log.error(
                "a batch of %d readings cannot be encoded (%s); set aside%s and counted on the "
                "health topic (a bug: please report it with that file)",
                len(readings),
                err,
                f" in {path}" if kept else "",
            )

    def _invalid_value(self, reading: Reading, problem: str) -> None:
        health = self._device_health(reading.device)
        if health is not None:
            health.invalid_values += 1
        key = (reading.device, reading.point)
        if key not in self._invalid_logged:
            self._invalid_logged.add(key)
            log.warning(
                "device %r point %r sent an unusable value (%s): it is sent as no value with "
                "quality invalid_value; counting further ones quietly",
                reading.device,
                reading.point,
                problem,
            )

    def _device_health(self, name: str) -> DeviceHealth | None:
        for driver in self.drivers:
            for health in driver.health():
                if health.name == name:
                    return health
        return None

    # --- health ----------------------------------------------------------------------------

    def _alarms_health(self) -> AlarmsHealth:
        stats = self.alarm_store.stats
        return AlarmsHealth(self.processing.alarm_events, stats.batches, stats.evicted_batches)

    def _pipeline_health(self) -> PipelineHealth:
        batcher = self.batcher
        return PipelineHealth(
            readings_in=batcher.readings_in,
            readings_pending=batcher.pending,
            batches_written=batcher.batches_written,
            readings_dropped=batcher.readings_dropped,
            batches_set_aside=self.batches_set_aside,
            readings_set_aside=self.readings_set_aside,
        )

    def health(self) -> dict[str, Any]:
        """The health report as JSON, as the health topic carries it."""
        return to_json(self.health_model.snapshot())
