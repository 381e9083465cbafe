"""Publish buffered batches to the broker: QoS 1, several in flight, delete on PUBACK.

The uplink never holds data of its own: it reads batches from the durable buffer
in seq order, publishes up to `max_inflight` at once, and acks each batch to the
buffer only when the broker's PUBACK arrived. When the connection drops, every
unacknowledged batch is still in the buffer and is sent again, oldest first,
after a reconnect with jittered exponential back-off. So delivery is
at-least-once; the centre drops duplicates by (gateway_id, boot_id, seq).

A retained status topic carries a birth message on connect and the MQTT last
will ("offline") when the gateway disappears without saying goodbye.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import ssl
import time
from collections.abc import Callable
from typing import Any

import aiomqtt

from buffer import Entry
from drivers.base import backoff_delay
from gateway.store import Store
from gateway.uplink.config import MqttConfig
from gateway.uplink.topics import Topics

log = logging.getLogger("gateway.uplink")

ACK_FLUSH_INTERVAL = 0.2  # seconds between grouped deletes of acknowledged batches
ALARM_WINDOW = 5  # alarm publishes in flight at once, on top of the data window
HISTORY_WINDOW = 8  # backlog publishes in flight at once (measured: bench/drain_bench.py)
HISTORY_PAUSE = 0.002  # seconds the backlog yields between chunks of 2 x its window
STOP_DRAIN_SECONDS = 5.0  # on stop, how long to keep publishing what is on disk


class _Stopping(Exception):
    """Raised inside a session to leave it after a clean goodbye."""


class _LinkDead(Exception):
    """Publishes are in flight but no PUBACK came for `publish_timeout`: a silent link."""


class Lane:
    """One durable queue published to one topic, oldest first, with its own window.

    The data lane carries the backlog; the alarm lane is small and has its own
    window, so an alarm never waits behind batches of data.
    """

    def __init__(
        self, name: str, store: Store, topic: str, window: int, *, history: bool = False
    ) -> None:
        self.name = name
        self.store = store
        self.topic = topic
        self.window = window
        self.history = history  # carries only what was on disk when the session began
        self.start = 0  # this session: publish entries with seq > start ...
        self.upper: int | None = None  # ... and <= upper (None: no end, follow new data)
        self.acked: list[int] = []
        self.inflight = 0
        self.idle = False  # everything on disk has been handed to the client
        self.published = 0
        self.published_bytes = 0

    @property
    def busy(self) -> bool:
        if self.history:
            return bool(self.inflight) or not self.idle
        return bool(self.inflight) or not self.idle or self.store.appended.is_set()

    async def flush_acks(self) -> None:
        if self.acked:
            acked, self.acked = self.acked, []
            await self.store.ack(acked)


class MqttUplink:
    def __init__(
        self,
        config: MqttConfig,
        topics: Topics,
        store: Store,
        *,
        alarm_store: Store | None = None,
        identity: dict[str, Any],
        health: Callable[[], dict[str, Any]],
    ) -> None:
        self.config = config
        self.topics = topics
        self.store = store
        # Data goes out on two lanes: what is produced while connected (live) and the
        # backlog found on disk at connect time (history), drained side by side so
        # live data never waits behind hours of backlog.
        self.data = Lane("data", store, topics.data, config.max_inflight)
        self.history = Lane("history", store, topics.history, HISTORY_WINDOW, history=True)
        self.lanes = [self.data, self.history]
        if alarm_store is not None:  # first: its publishes go out before the data's
            self.lanes.insert(0, Lane("alarm", alarm_store, topics.alarm, ALARM_WINDOW))
        self.identity = identity  # gateway_id, boot_id, version, config_hash
        self._health = health
        self._stop = asyncio.Event()
        self._tls = _tls_context(config)  # built once: a bad certificate path fails at start
        self._progress = asyncio.Event()  # a publish finished, or a pump ran dry
        self._ack_clock = time.monotonic()  # last PUBACK, or when the window became busy
        self.state = "connecting"
        self.connected_since: float | None = None
        self.connects = 0
        self.last_error: str | None = None

    @property
    def _inflight(self) -> int:
        return sum(lane.inflight for lane in self.lanes)

    # --- lifecycle ------------------------------------------------------------------

    async def run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            session_started = time.monotonic()
            try:
                async with self._client() as client:
                    await self._session(client)
            except* _Stopping:
                pass
            except* (aiomqtt.MqttError, _LinkDead) as group:
                self._went_offline(_first_leaf(group))
            except* Exception as group:  # a bug or a disk error must not end the uplink
                self._went_offline(f"internal error: {_first_leaf(group)}")
                log.error("uplink session failed unexpectedly", exc_info=group.exceptions[0])
            finally:
                with contextlib.suppress(Exception):
                    await self._flush_acks()
            if self._stop.is_set():
                break
            # A session that stayed up a while resets the back-off; a broker that accepts
            # and then drops us at once (a duplicate client id) keeps it growing.
            if time.monotonic() - session_started > max(10.0, self.config.reconnect_max):
                failures = 0
            failures += 1
            delay = backoff_delay(failures, self.config.reconnect_min, self.config.reconnect_max)
            try:
                async with asyncio.timeout(delay):
                    await self._stop.wait()
            except TimeoutError:
                pass
        self.state = "stopped"

    def stop(self) -> None:
        """Say goodbye (retained 'offline' status), close the connection, end `run`."""
        self._stop.set()

    # --- one connection ---------------------------------------------------------------

    def _client(self) -> aiomqtt.Client:
        cfg = self.config
        will = aiomqtt.Will(
            self.topics.status,
            self._status("offline", reason="connection lost"),
            qos=1,
            retain=True,
        )
        client = aiomqtt.Client(
            cfg.host,
            cfg.port,
            identifier=cfg.client_id or f"edge-gateway-{self.identity['gateway_id']}",
            username=cfg.username,
            password=cfg.password,
            tls_context=self._tls,
            keepalive=max(1, round(cfg.keepalive)),
            will=will,
            clean_session=True,
            timeout=cfg.publish_timeout,
            # Room for every window, so paho never queues an alarm behind data.
            max_inflight_messages=cfg.max_inflight + HISTORY_WINDOW + ALARM_WINDOW,
        )
        # aiomqtt warns when more than 10 calls are pending; our window is deliberate.
        client.pending_calls_threshold = cfg.max_inflight + HISTORY_WINDOW + ALARM_WINDOW + 10
        return client

    async def _session(self, client: aiomqtt.Client) -> None:
        self.connects += 1
        backlog_end = self.store.stats.last_seq  # on disk now: history; newer: live
        self.history.start, self.history.upper = 0, backlog_end
        self.data.start, self.data.upper = backlog_end, None
        for lane in self.lanes:
            if lane.store is not self.store:  # the alarm lane: all of it, in order
                lane.start, lane.upper = 0, None
        await client.publish(self.topics.status, self._status("online"), qos=1, retain=True)
        self.state = "online"
        self.connected_since = time.time()
        stats = self.store.stats
        log.info(
            "connected to MQTT broker %s:%d; %d batch(es) waiting on disk",
            self.config.host,
            self.config.port,
            stats.batches,
        )
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._watch_connection(client), name="uplink-watch")
            for lane in self.lanes:
                tg.create_task(self._pump(client, lane), name=f"uplink-{lane.name}")
            tg.create_task(self._ack_flusher(), name="uplink-acks")
            tg.create_task(self._health_loop(client), name="uplink-health")
            tg.create_task(self._ack_watchdog(), name="uplink-watchdog")
            tg.create_task(self._goodbye_on_stop(client), name="uplink-goodbye")

    async def _watch_connection(self, client: aiomqtt.Client) -> None:
        # The message iterator raises MqttError when the connection is lost; that
        # tears the session down, cancelling publishes still waiting for PUBACK.
        async for _message in client.messages:
            pass

    async def _goodbye_on_stop(self, client: aiomqtt.Client) -> None:
        await self._stop.wait()
        # Publish what is on disk (the batch flushed at stop, a short backlog) before
        # saying goodbye, for a bounded time; the rest waits on disk for the next start.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_DRAIN_SECONDS):
                while any(lane.busy for lane in self.lanes):
                    self._progress.clear()
                    await self._progress.wait()
        try:
            await client.publish(
                self.topics.status,
                self._status("offline", reason="stopped"),
                qos=1,
                retain=True,
                timeout=2.0,
            )
        except aiomqtt.MqttError as err:
            log.warning("could not publish the offline status before stopping: %s", err)
        raise _Stopping

    async def _pump(self, client: aiomqtt.Client, lane: Lane) -> None:
        window = asyncio.Semaphore(lane.window)
        cursor = lane.start  # highest seq handed to the client in this session
        lane.inflight = 0
        lane.idle = False
        appended = asyncio.Event() if lane.history else lane.store.appended
        async with asyncio.TaskGroup() as tg:
            while True:
                appended.clear()
                entries = await lane.store.read(cursor, lane.window * 2)
                if lane.upper is not None:
                    entries = [e for e in entries if e.seq <= lane.upper]
                if not entries:
                    lane.idle = True
                    self._progress.set()
                    await appended.wait()  # the history lane never wakes: its work is done
                    lane.idle = False
                    continue
                if lane.history:
                    # Live first: the backlog pauses between chunks so that polling,
                    # batching and live publishes keep their latency during a drain.
                    await asyncio.sleep(HISTORY_PAUSE)
                for entry in entries:
                    await window.acquire()
                    cursor = entry.seq
                    if not self._inflight:
                        self._ack_clock = time.monotonic()
                    lane.inflight += 1
                    tg.create_task(self._publish(client, lane, entry, window))

    async def _publish(
        self, client: aiomqtt.Client, lane: Lane, entry: Entry, window: asyncio.Semaphore
    ) -> None:
        try:
            # No per-publish timeout: waiting behind a full window on a slow link is
            # normal; the watchdog judges the link by PUBACKs arriving at all.
            await client.publish(lane.topic, entry.payload, qos=1, timeout=math.inf)
        finally:
            window.release()
            lane.inflight -= 1
            self._progress.set()
        self._ack_clock = time.monotonic()
        lane.published += 1
        lane.published_bytes += len(entry.payload)
        lane.acked.append(entry.seq)

    async def _ack_watchdog(self) -> None:
        """Tear the session down when publishes wait and no PUBACK arrives for a while.

        The clock restarts at every PUBACK and whenever the window goes from empty
        to busy, so time spent queued behind a slow but working link never counts:
        only a link that carries nothing back does (a blackholed cellular path).
        """
        limit = self.config.publish_timeout
        while True:
            await asyncio.sleep(min(1.0, limit / 4))
            silent = time.monotonic() - self._ack_clock
            if self._inflight and silent > limit:
                raise _LinkDead(
                    f"no PUBACK for {silent:.0f}s with {self._inflight} publish(es) in flight"
                )

    async def _ack_flusher(self) -> None:
        while True:
            await asyncio.sleep(ACK_FLUSH_INTERVAL)
            await self._flush_acks()

    async def _flush_acks(self) -> None:
        for lane in self.lanes:
            await lane.flush_acks()

    async def _health_loop(self, client: aiomqtt.Client) -> None:
        while True:
            payload = json.dumps(self._health(), separators=(",", ":"))
            await client.publish(self.topics.health, payload, qos=1)
            await asyncio.sleep(self.config.health_interval)

    # --- helpers ----------------------------------------------------------------------

    def _went_offline(self, reason: str) -> None:
        self.last_error = reason
        if self.state == "connecting":
            log.warning(
                "cannot reach the MQTT broker %s:%d (%s); readings are kept on disk; "
                "retrying with back-off up to %gs",
                self.config.host,
                self.config.port,
                reason,
                self.config.reconnect_max,
            )
        elif self.state != "offline":
            log.warning(
                "lost the MQTT broker %s:%d (%s); batches stay on disk (%d waiting); "
                "reconnecting with back-off up to %gs",
                self.config.host,
                self.config.port,
                reason,
                self.store.stats.batches,
                self.config.reconnect_max,
            )
        self.state = "offline"
        self.connected_since = None

    def _status(self, state: str, **extra: Any) -> str:
        return json.dumps({"state": state, **self.identity, "ts": round(time.time(), 3), **extra})

    def health(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "connected_since": self.connected_since,
            "connects": self.connects,
            "published_batches": self.data.published + self.history.published,
            "published_history_batches": self.history.published,
            "published_bytes": self.data.published_bytes + self.history.published_bytes,
            "published_alarms": sum(
                lane.published for lane in self.lanes if lane.store is not self.store
            ),
            "last_error": self.last_error,
        }


def _first_leaf(group: BaseExceptionGroup[Any]) -> str:
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    reason = str(first) or type(first).__name__
    cause = first.__cause__
    if cause is not None and str(cause) and str(cause) not in reason:
        reason = f"{reason}: {cause}"
    return reason


def _tls_context(cfg: MqttConfig) -> ssl.SSLContext | None:
    if cfg.tls is None:
        return None
    context = ssl.create_default_context(cafile=str(cfg.tls.ca_file))
    if cfg.tls.cert_file is not None and cfg.tls.key_file is not None:
        context.load_cert_chain(str(cfg.tls.cert_file), str(cfg.tls.key_file))
    context.check_hostname = cfg.tls.verify_hostname
    return context
