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
import contextlib
import json
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from buffer import (
    BufferError,
    BufferInUseError,
    DurableQueue,
    NewerFormatError,
    PayloadTooLargeError,
)
from drivers.base import DeviceHealth, Driver
from drivers.core.clock import Clock, SystemClock, wait_event
from drivers.core.model import Quality, Reading, value_problem
from gateway import __version__, systemd
from gateway.build import build_drivers
from gateway.clock import ClockWatch, format_span
from gateway.control import CommandGate, TrustedKeys
from gateway.errors import ConfigError, StartupError
from gateway.flashing import (
    INCOMING_FILE,
    Applied,
    Baseline,
    ConfigHistory,
    HealthWindow,
    HistoryEntry,
    KeptConfigs,
    Outcome,
    baseline,
    one_poll_seconds,
    sha256_hash,
    state_dir,
    window_seconds,
    write_atomically,
)
from gateway.health import HealthModel, HealthSources
from gateway.loaded import ConfigRecord, LoadedConfig, ValidatorFailed, load_apart_async
from gateway.pipeline.alarms import AlarmEvent
from gateway.pipeline.batcher import Batcher, SealedBatch
from gateway.pipeline.processing import Processing, compile_processing
from gateway.remote import MAX_READ_WAIT, VERBS, Remote
from gateway.state import FILE_MODE
from gateway.store import DISK_TROUBLE, Store
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

if TYPE_CHECKING:  # the daemon runs on the config's records (gateway/loaded.py)
    from gateway.settings import CommandsConfig, GatewayConfig

log = logging.getLogger("gateway")

WRITE_RETRY_SECONDS = 1.0
STORE_WEDGED = 120.0  # seconds a buffer's disk call may run before the watchdog starves
ACK_ROOM_MAX = 0.5  # write = "unacked": an ageing batch closes up to this long before max_age
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
WINDOW_CHECK = 0.25  # a new config's health window is judged this often


def _quality_name(code: int) -> str:
    try:
        return Quality(code).name.lower()
    except ValueError:
        return str(code)


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


def _ack_room(max_age: float, write: str) -> float:
    """How much before [batch] max_age an ageing batch is closed: with write = "unacked" it
    is due on disk max_age after its first reading, and the broker gets this long to
    answer first (a power cut still loses at most max_age of readings)."""
    return min(ACK_ROOM_MAX, max_age / 4) if write == "unacked" else 0.0


class _Unencodable(Exception):
    """A batch that the wire encoder refused (a bug: values are checked before)."""


class Gateway:
    """The gateway: every part built from the config here, started by `run`."""

    def __init__(self, loaded: LoadedConfig[GatewayConfig], *, clock: Clock | None = None) -> None:
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
        self.rolled_back = 0
        # Flashing and remote commands (gateway/flashing.py, gateway/remote.py): the file
        # the service was started with, the small state beside the buffer (opened in run).
        self.config_file = Path(loaded.source)
        self.state_dir = state_dir(cfg)
        self.history: ConfigHistory | None = None
        self.kept: KeptConfigs | None = None
        self.gate: CommandGate | None = None
        self._apply_lock = asyncio.Lock()
        self._read_waiters: list[Callable[[Sequence[Reading]], None]] = []
        self._log_level_until: float | None = None
        self._log_level_task: asyncio.Task[None] | None = None
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
            idle=cfg.batch.idle,
            ack_room=_ack_room(cfg.batch.max_age, cfg.buffer.write),
            clock=self.clock,
        )
        self._alarm_events: asyncio.Queue[AlarmEvent] = asyncio.Queue()
        self.processing = self._build_processing(loaded, None)
        self.drivers = build_drivers(cfg, self._tapped(self.processing.add), loaded.plugins)
        self.store, self.alarm_store = self._stores()
        self._write_mode = cfg.buffer.write  # like every [buffer] setting: until a restart
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
                    self.reloads_applied, self.reloads_refused, self.reload_error, self.rolled_back
                ),
                commands=lambda: None if self.gate is None else self.gate.health().to_json(),
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

    def _build_processing(
        self, loaded: LoadedConfig[GatewayConfig], previous: Processing | None
    ) -> Processing:
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
            clock=self.clock,
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
            await asyncio.to_thread(self._open_state)
            await asyncio.to_thread(self._open_gate)
            for warning in self.loaded.warnings:
                log.warning("config %s: %s", self.loaded.source, warning)
            self.batcher.mark_clock(self.clock_watch.synchronised)
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                uplink_task = tg.create_task(self.uplink.run(), name="uplink")
                batcher_task = tg.create_task(self.batcher.run(), name="batcher")
                alarm_task = tg.create_task(self._write_alarms(), name="alarms")
                # Staged batches fall due on disk until the uplink has stopped.
                commits = tg.create_task(self.store.run_commits(), name="buffer-commits")
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
                if self.gate is not None:
                    await asyncio.to_thread(self.gate.flush)
                systemd.notify("STOPPING=1", "STATUS=stopping: the open batch goes to the buffer")
                log.info("stopping: polling ends, the open batch goes to the buffer")
                await cancel_and_wait(helpers)
                await cancel_and_wait(self._driver_tasks)
                self.processing.flush(int(self.clock.time() * 1000))
                store.closing()  # a full disk must not hold the stop: close() writes it all
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
                await cancel_and_wait([commits])
        finally:
            self._tg = None
            try:
                store.close()
            finally:
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
        """SIGHUP: a file handed over by `edge-gateway apply` (or `config rollback`) if
        there is one, else the config file again; through the one path of flashing."""
        while True:
            await self.reload_requested.wait()
            self.reload_requested.clear()
            systemd.notify("RELOADING=1", "STATUS=reloading the config")
            if self.gate is not None:  # a key added or removed: every reload reads them
                await asyncio.to_thread(self.gate.reload_keys)
            raw, source = await asyncio.to_thread(self._take_incoming)
            await self.apply_config(raw, source)
            systemd.notify("READY=1", f"STATUS={self._status_line()}")

    async def _parse(self, raw: bytes, source: str) -> LoadedConfig[GatewayConfig]:
        """Validate a new config as the running one was: in a child process when the
        daemon runs on records (gateway/loaded.py), else here (tests, tools)."""
        if isinstance(self.loaded.config, ConfigRecord):
            return await load_apart_async(self.config_file, raw, source)
        from gateway.settings import parse_config

        return parse_config(raw, source)

    def _take_incoming(self) -> tuple[bytes | None, str]:
        incoming = self.state_dir / INCOMING_FILE
        try:
            raw = incoming.read_bytes()
        except FileNotFoundError:
            return None, "sighup"
        except OSError as err:
            log.error(
                "cannot read the config handed over in %s (%s); reading %s",
                incoming,
                err,
                self.config_file,
            )
            return None, "sighup"
        with contextlib.suppress(OSError):
            incoming.unlink()
        return raw, "apply"

    def _status_line(self) -> str:
        """For `systemctl status`: what the gateway is doing, in one line."""
        stats = self.store.stats
        return (
            f"{len(self.config.devices)} device(s), uplink {self.uplink.state}, "
            f"{stats.batches} batch(es) on disk, config {self.loaded.config_hash}"
        )

    def alive(self) -> str | None:
        """None while every part makes progress; else what is stuck (the watchdog's
        question): a buffer's disk call that has not returned for `STORE_WEDGED`, or the
        uplink (`MqttUplink.stalled`). A blocked event loop cannot even ask: the watchdog
        starves. A device that hangs is its own driver's business (backed off, on health)."""
        for store in (self.store, self.alarm_store):
            busy = store.busy_for()
            if busy > STORE_WEDGED:
                return (
                    f"the {store.name} buffer: a disk operation has not returned for "
                    f"{busy:.0f}s (the storage has stopped answering?)"
                )
        return self.uplink.stalled()

    async def reload(self) -> bool:
        """Read the config file again and flash it; True when it was committed."""
        return (await self.apply_config(None, "sighup")).outcome == "committed"

    async def apply_config(self, raw: bytes | None, source: str) -> Applied:
        """The one path of every new config (gateway/flashing.py): validate, keep aside,
        switch, watch the health window, commit or roll back. `raw` None reads the
        config file. One at a time."""
        async with self._apply_lock:
            return await self._apply(raw, source)

    async def _apply(self, raw: bytes | None, source: str) -> Applied:
        old = self.loaded
        where = str(self.config_file) if raw is None else f"the config from {source}"
        if raw is None:
            try:
                raw = await asyncio.to_thread(self.config_file.read_bytes)
            except OSError as err:
                return self._refused(
                    source, None, f"{self.config_file}: cannot read the file: {err.strerror or err}"
                )
        config_hash = sha256_hash(raw)
        try:
            loaded = await self._parse(raw, str(self.config_file) if source == "sighup" else where)
        except (ConfigError, ValidatorFailed) as err:
            return self._refused(source, config_hash, str(err))
        if loaded.config.buffer.path != self.config.buffer.path:
            return self._refused(
                source,
                config_hash,
                f"{where}: buffer.path changes from {self.config.buffer.path} to "
                f"{loaded.config.buffer.path}; moving the buffer needs a restart",
            )
        if config_hash == old.config_hash:
            log.info("config %s is the one running; nothing to apply", config_hash)
            return Applied("committed", config_hash, old.config_hash, "already running", 0.0)
        processing = self._build_processing(loaded, self.processing)
        try:
            drivers = build_drivers(loaded.config, self._tapped(processing.add), loaded.plugins)
        except ValueError as err:  # the planner refuses what the models let through
            return self._refused(source, config_hash, f"{where}: {err}")
        await asyncio.to_thread(self._keep, raw)
        entry = self._history_record(config_hash, source, "applying", old.config_hash)
        before = baseline(self.uplink.state, self._device_healths())
        reconnects = (
            loaded.config.gateway.id != self.gateway_id or loaded.config.mqtt != old.config.mqtt
        )
        connects = self.uplink.connects  # a reconnect must show a session of its own
        await self._switch(loaded, processing, drivers, source)
        window = window_seconds(loaded.config, reconnects=reconnects)
        problems = await self._watch_window(before, window, connects if reconnects else None)
        if not problems:
            note = await asyncio.to_thread(self._write_config_file, raw, source)
            self._history_finish(entry, "committed", note)
            log.info(
                "config %s committed: it works as well as %s did", config_hash, old.config_hash
            )
            return Applied("committed", config_hash, old.config_hash, note, window)
        why = "; ".join(problems)
        log.error(
            "config %s does not work (%s) within %.0fs; rolling back to %s",
            config_hash,
            why,
            window,
            old.config_hash,
        )
        await self._roll_back(old, why)
        self._history_finish(entry, "rolled_back", why)
        self.rolled_back += 1
        self._event(
            "config_rolled_back",
            f"config {config_hash} rolled back to {old.config_hash}: {why}",
            config_hash=config_hash,
            running=old.config_hash,
            reason=why,
        )
        return Applied("rolled_back", config_hash, old.config_hash, why, window)

    async def _watch_window(
        self, before: Baseline, window: float, connects: int | None = None
    ) -> list[str]:
        """The health window. With `connects` (the new config reconnects), the broker counts
        as reached only through a session begun after the switch: the old session is still
        online while it says goodbye, and must not vouch for new [mqtt] settings."""

        def uplink_state() -> str:
            if connects is not None and self.uplink.connects <= connects:
                return "connecting"
            return self.uplink.state

        judge = HealthWindow(before, uplink_state, self._device_healths)
        deadline = self.clock.monotonic() + window
        while True:
            problems = judge.missing()
            if not problems or self.stop_requested.is_set():
                return []
            if self.clock.monotonic() >= deadline:
                return problems
            await wait_event(self.clock, self.stop_requested, WINDOW_CHECK)

    async def _roll_back(self, good: LoadedConfig[GatewayConfig], why: str) -> None:
        processing = self._build_processing(good, self.processing)
        drivers = build_drivers(good.config, self._tapped(processing.add), good.plugins)
        await self._switch(good, processing, drivers, "rollback", rolled_back=True)
        raw = self.kept.read(good.config_hash) if self.kept is not None else None
        if raw is not None:
            note = await asyncio.to_thread(self._write_config_file, raw, "rollback")
            if note:
                log.warning("%s", note)

    def _refused(self, source: str, config_hash: str | None, why: str) -> Applied:
        self.reloads_refused += 1
        self.reload_error = why
        log.error("config refused, the running config (%s) stays: %s", self.loaded.config_hash, why)
        self._event(
            "config_refused",
            f"a new config was refused; {self.loaded.config_hash} stays: {why}",
            running=self.loaded.config_hash,
            reason=why,
        )
        if config_hash is not None:
            entry = self._history_record(config_hash, source, "refused", self.loaded.config_hash)
            self._history_finish(entry, "refused", why)
        return Applied("refused", config_hash, self.loaded.config_hash, why, 0.0)

    # --- the small state of flashing ------------------------------------------------------

    def _open_state(self) -> None:
        """Config history and kept configs beside the buffer; trouble here is logged,
        never fatal (the gateway's data path does not depend on it)."""
        try:
            self.history = ConfigHistory.open(self.state_dir)
            self.kept = KeptConfigs(self.state_dir)
            raw = self.config_file.read_bytes()
            if sha256_hash(raw) == self.loaded.config_hash:
                self.kept.keep(raw)
            last = self.history.entries()
            if (
                not last
                or last[-1].hash != self.loaded.config_hash
                or last[-1].outcome != "committed"
            ):
                entry = self._history_record(
                    self.loaded.config_hash, "start", "applying", last[-1].hash if last else None
                )
                self._history_finish(entry, "committed", None)
        except OSError as err:
            log.error(
                "cannot keep the config history in %s (%s): configs are still applied and "
                "rolled back, but not recorded",
                self.state_dir,
                err,
            )

    def _keep(self, raw: bytes) -> None:
        if self.kept is None:
            return
        try:
            self.kept.keep(raw)
        except OSError as err:
            log.warning("cannot keep the candidate config in %s (%s)", self.kept.directory, err)

    def _history_record(
        self, config_hash: str, source: str, outcome: Outcome, previous: str | None
    ) -> HistoryEntry:
        entry = HistoryEntry(0, config_hash, source, self.clock.time(), outcome, previous)
        return self.history.record(entry) if self.history is not None else entry

    def _history_finish(self, entry: HistoryEntry, outcome: Outcome, reason: str | None) -> None:
        if self.history is None:
            return
        self.history.finish(entry, outcome, reason)
        if self.kept is not None:
            self.kept.prune({e.hash for e in self.history.entries()} | {self.loaded.config_hash})

    def _write_config_file(self, raw: bytes, source: str) -> str | None:
        """The committed config into the file the service starts from (a restart runs
        it too); None, or a note saying why the file could not be written."""
        try:
            if self.config_file.read_bytes() == raw:
                return None  # SIGHUP: the file is the candidate already
        except OSError:
            pass
        try:
            mode = self.config_file.stat().st_mode & 0o777
        except OSError:
            mode = FILE_MODE
        try:
            write_atomically(self.config_file, raw, mode)
        except OSError as err:
            return (
                f"{self.config_file} could not be written ({err.strerror or err}): it still "
                f"holds another config, which a restart would run"
            )
        log.info("%s now holds config %s (%s)", self.config_file, sha256_hash(raw), source)
        return None

    def _device_healths(self) -> list[DeviceHealth]:
        return [h for d in self.drivers for h in d.health()]

    def _tapped(
        self, sink: Callable[[Sequence[Reading]], None]
    ) -> Callable[[Sequence[Reading]], None]:
        """The drivers' sink, with the read command listening in when it waits."""
        waiters = self._read_waiters

        def add(readings: Sequence[Reading]) -> None:
            sink(readings)
            if waiters:
                for waiter in list(waiters):
                    waiter(readings)

        return add

    async def _switch(
        self,
        loaded: LoadedConfig[GatewayConfig],
        processing: Processing,
        drivers: list[Driver],
        source: str,
        *,
        rolled_back: bool = False,
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
        self.batcher.idle = cfg.batch.idle
        self.batcher.ack_room = _ack_room(cfg.batch.max_age, self._write_mode)
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
        if cfg.commands != old.config.commands:
            await asyncio.to_thread(self._reconfigure_commands, cfg.commands, old.config.commands)
        if rolled_back:
            log.info("rolled back to config %s, %d device(s)", loaded.config_hash, len(cfg.devices))
            return
        self.reloads_applied += 1
        self.reload_error = None
        self._event(
            "config_applied",
            f"config {loaded.config_hash} applied (was {old.config_hash}); watching that it works",
            config_hash=loaded.config_hash,
            previous=old.config_hash,
            source=source,
        )
        log.info(
            "switched to config %s (from %s, was %s), %d device(s); watching that it works",
            loaded.config_hash,
            source,
            old.config_hash,
            len(cfg.devices),
        )

    # --- remote commands ---------------------------------------------------------------

    def _open_gate(self) -> None:
        """The command gate (trusted keys, nonces, audit log) and the uplink's
        subscription; with [commands] enabled = false, neither."""
        commands = self.config.commands
        if not commands.enabled:
            log.info("remote commands are off ([commands] enabled = false)")
            return
        try:
            self.gate = CommandGate.open(
                self.gateway_id,
                state_dir=self.state_dir,
                clock=self.clock,
                keys_dir=commands.trusted_keys,
                window=commands.window,
                verbs=VERBS,
            )
        except OSError as err:
            log.error(
                "remote commands are off: their state in %s cannot be kept (%s)",
                self.state_dir,
                err,
            )
            return
        remote = Remote(self.gate, self, log_level_max=commands.log_level_max)
        self.uplink.on_command = remote.handle

    def _reconfigure_commands(self, new: CommandsConfig, old: CommandsConfig) -> None:
        """A reload's [commands]: a new keys directory at once; `enabled` and `window`
        (which the nonce store's horizon depends on) at the next restart."""
        for key in ("enabled", "window"):
            if getattr(new, key) != getattr(old, key):
                log.warning("[commands] %s takes effect at the next restart", key)
        if self.gate is not None and new.trusted_keys != old.trusted_keys:
            self.gate.keys = TrustedKeys(new.trusted_keys)
            self.gate.reload_keys()

    def ping(self) -> dict[str, Any]:
        return {
            "gateway_id": self.gateway_id,
            "boot_id": self.boot_id,
            "version": __version__,
            "config_hash": self.loaded.config_hash,
            "uptime_s": round(self.clock.monotonic() - self.health_model.started, 1),
        }

    def event(self, kind: EventKind, message: str, **data: Any) -> None:
        self._event(kind, message, **data)

    async def read_device(self, device: str, point: str | None) -> dict[str, Any]:
        """The readings of `device`'s next poll (or of its point), as its driver made them."""
        settings = next((d for d in self.config.devices if d.name == device), None)
        if settings is None:
            names = ", ".join(d.name for d in self.config.devices)
            return {"error": f"no device {device!r} in config {self.loaded.config_hash} ({names})"}
        if point is not None and all(p.name != point for p in settings.points):
            return {"error": f"device {device!r} has no point {point!r}"}
        wait = min(one_poll_seconds(settings) + 1.0, MAX_READ_WAIT)
        got: asyncio.Future[list[Reading]] = asyncio.get_running_loop().create_future()

        def listen(readings: Sequence[Reading]) -> None:
            mine = [r for r in readings if r.device == device and point in (None, r.point)]
            if mine and not got.done():
                got.set_result(mine)

        self._read_waiters.append(listen)
        try:
            async with asyncio.timeout(wait):
                readings = await got
        except TimeoutError:
            health = self._device_health(device)
            state = f" (device {health.state}: {health.last_error})" if health else ""
            return {"error": f"no reading from {device!r} within {wait:g}s{state}"}
        finally:
            self._read_waiters.remove(listen)
        return {
            "device": device,
            "readings": [
                {
                    "point": r.point,
                    "ts_ms": r.ts_ms,
                    "value": r.value if value_problem(r.value) is None else None,
                    "quality": _quality_name(r.quality),
                }
                for r in readings
            ],
        }

    async def rollback_config(self, to: str | None, source: str) -> Applied:
        """Flash a config kept on this gateway: `to`, or the last committed before the
        running one."""
        if self.history is None or self.kept is None:
            return Applied("refused", None, self.loaded.config_hash, "no config history here", 0.0)
        target = to or next(
            (
                e.hash
                for e in reversed(self.history.entries())
                if e.outcome == "committed" and e.hash != self.loaded.config_hash
            ),
            None,
        )
        if target is None:
            return Applied(
                "refused",
                None,
                self.loaded.config_hash,
                "no earlier committed config in the history",
                0.0,
            )
        raw = await asyncio.to_thread(self.kept.read, target)
        if raw is None:
            return Applied(
                "refused",
                target,
                self.loaded.config_hash,
                f"config {target} is not kept on this gateway",
                0.0,
            )
        return await self.apply_config(raw, source)

    def set_log_level(self, level: str, seconds: float) -> dict[str, Any]:
        """Log at `level` for `seconds`, then at the config's level again."""
        root = logging.getLogger()
        root.setLevel(level.upper())
        log.warning(
            "log level %s for %.0fs (by command), then %s",
            level,
            seconds,
            self.config.gateway.log_level,
        )
        if self._log_level_task is not None:
            self._log_level_task.cancel()
        self._log_level_task = asyncio.get_running_loop().create_task(self._log_level_back(seconds))
        return {
            "level": level,
            "until": round(self.clock.time() + seconds, 3),
            "then": self.config.gateway.log_level,
        }

    async def _log_level_back(self, seconds: float) -> None:
        await self.clock.sleep(seconds)
        logging.getLogger().setLevel(self.config.gateway.log_level.upper())
        log.warning("log level back to %s", self.config.gateway.log_level)
        self._log_level_task = None

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
        devices = list(self.loaded.devices_meta)
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
            except DISK_TROUBLE as err:
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
            except DISK_TROUBLE as err:
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
                lambda: self._put(batches), f"{len(batches)} batch(es)"
            )
        except (PayloadTooLargeError, _Unencodable):
            for batch in batches:  # find the one at fault
                await self._write_batch(batch)

    async def _put(self, batches: list[SealedBatch]) -> object:
        """Hand closed batches to the data store: staged (published from memory, written
        only if not acknowledged in time) with [buffer] write = "unacked", else written."""
        makers = [self._encoder(b) for b in batches]
        if self._write_mode == "all":
            return await self.store.append_many(makers)
        now = self.clock.monotonic()
        max_age = self.config.batch.max_age
        dues = [(now if b.opened_at is None else b.opened_at) + max_age for b in batches]
        return await self.store.stage(makers, dues)

    async def _write_batch(self, readings: SealedBatch) -> None:
        """Persist one batch, halving it until it fits the buffer's byte bound."""
        try:
            await self._retry_on_disk_errors(
                lambda: self._put([readings]), f"a batch of {len(readings)} readings"
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
            for part in (readings[:half], readings[half:]):
                await self._write_batch(
                    SealedBatch(
                        part,
                        clock_synced=readings.clock_synced,
                        config_hash=readings.config_hash,
                        opened_at=readings.opened_at,
                    )
                )

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
            except DISK_TROUBLE as err:
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
