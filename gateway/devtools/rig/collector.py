"""What the city centre sees: a persistent QoS 1 subscription that outlives broker restarts,
decoding every data batch as it arrives and keeping each `(gateway, boot, seq)` once.

    collector = Collector(broker)                 # subscribes to "#" on 127.0.0.1
    collector.wait(lambda: collector.readings("pump", "pressure"), 20, "a pressure reading")
    view = collector.completeness("gw-1")         # received, on disk, evicted, lost, missing
    collector.close()

The de-duplication and the accounting are the centre's own (`gateway.centre.accounting`,
as `edge-gateway tail` and `watch` use it), fed with every message that arrives; the
collector keeps the batches it calls new. paho's network thread receives, so a test's
own thread or event loop is free; the accessors return copies and may be called from
anywhere.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from drivers.core.model import Reading
from gateway.centre.accounting import Accounting
from gateway.devtools.rig.waiting import wait_until, wait_until_async
from gateway.wire import Batch, DecodeError, decode_batch

log = logging.getLogger(__name__)

DATA_TOPICS = ("/data", "/data/history")  # the live lane and the backlog's


class Endpoint(Protocol):
    """Where a broker listens: a `Mosquitto`, a `LinkProxy`, ..."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...


class Collector:
    """Subscribes to `topic` (every topic by default) with QoS 1 in a persistent session,
    so what the broker queued while it was away, or across a broker restart, arrives.
    Returns once the broker has the subscription (within `timeout` seconds).

    Data batches are recognised on any topic ending in `/data` or `/data/history`; the
    gateways' status, health and events under `prefix` (`[mqtt] topic_prefix`) feed the
    completeness view too."""

    def __init__(
        self,
        broker: Endpoint,
        topic: str = "#",
        *,
        prefix: str = "city",
        username: str | None = None,
        password: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.broker = broker
        self.topic = topic
        self.messages: list[tuple[str, bytes]] = []  # every message, as it arrived
        self.arrived: list[float] = []  # time.time() at which each message arrived
        self.rejected: list[tuple[str, str]] = []  # data payloads that did not decode: why
        self.subscribed = False
        self._copies: list[tuple[str, Batch]] = []  # every data batch, copies included
        self._kept: list[Batch] = []  # each (gateway, boot, seq) once
        self._accounting = Accounting(prefix)
        self._lock = threading.Lock()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"centre-{uuid.uuid4().hex[:8]}",
            clean_session=False,
        )
        # A callback that raised is logged (in the test's log) and the collector goes on:
        # one message it could not handle must not make it deaf to the rest.
        self.client.enable_logger(log)
        self.client.suppress_exceptions = True
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        # Back within half a second of a broker restart; paho takes floats, its hint says int.
        self.client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.connect_async(broker.host, broker.port, keepalive=10)
        self.client.loop_start()
        try:
            wait_until(lambda: self.subscribed, timeout, f"subscribed to {broker.port}")
        except BaseException:
            self.close()
            raise

    # -- paho's thread -----------------------------------------------------------------

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any
    ) -> None:
        client.subscribe(self.topic, qos=1)

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, codes: Any, props: Any
    ) -> None:
        self.subscribed = True

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        topic, payload = msg.topic, bytes(msg.payload)
        with self._lock:
            self.messages.append((topic, payload))
            self.arrived.append(time.time())
            if not topic.endswith(DATA_TOPICS):
                self._accounting.receive(topic, payload)  # status, health, events: never raises
                return
            try:
                batch = decode_batch(payload)
            except DecodeError as err:
                self.rejected.append((topic, str(err)))
                return
            self._copies.append((topic, batch))
            if self._accounting.add_batch(batch):
                self._kept.append(batch)

    # -- what arrived ------------------------------------------------------------------

    def on(self, suffix: str) -> list[bytes]:
        """Payloads of the topics ending with `suffix` ("/status", "/health", ...)."""
        with self._lock:
            return [p for t, p in self.messages if t.endswith(suffix)]

    def data_messages(self) -> list[tuple[str, bytes]]:
        """Data batches as they arrived, undecoded: live (`/data`) and backlog
        (`/data/history`), copies included."""
        with self._lock:
            return [(t, p) for t, p in self.messages if t.endswith(DATA_TOPICS)]

    def all_batches(self) -> list[Batch]:
        """Every data batch as it arrived, both lanes, copies included."""
        with self._lock:
            return [batch for _, batch in self._copies]

    def batches(self) -> list[Batch]:
        """What the centre keeps: each `(gateway, boot, seq)` once, per gateway in seq
        order (seq grows across restarts, so this is the order they were produced)."""
        with self._lock:
            return sorted(self._kept, key=lambda b: (b.gateway_id, b.seq))

    def readings(self, device: str | None = None, point: str | None = None) -> list[Reading]:
        """The readings of `batches()`, in order, optionally of one device or point."""
        return [
            r
            for b in self.batches()
            for r in b.readings
            if (device is None or r.device == device) and (point is None or r.point == point)
        ]

    def lane_seqs(self) -> dict[str, list[int]]:
        """Seqs per lane ("data", "history") in arrival order, copies included: each lane
        must be in order on its own."""
        lanes: dict[str, list[int]] = {}
        with self._lock:
            for topic, batch in self._copies:
                lanes.setdefault(topic.rsplit("/", 1)[-1], []).append(batch.seq)
        return lanes

    # -- accounting --------------------------------------------------------------------

    @property
    def duplicates(self) -> int:
        """Copies of batches already kept that arrived again, and were dropped."""
        with self._lock:
            return len(self._copies) - len(self._kept)

    def completeness(self, gateway_id: str) -> dict[str, Any]:
        """The centre's completeness view of one gateway (`GatewayAccount.completeness`:
        `complete`, `counts`, `received` with its seqs, readings and duplicates,
        `on_disk`, `evicted`, `lost_at_crash`, `missing`, `boots`); KeyError when
        nothing of it arrived."""
        with self._lock:
            return self._accounting.gateways[gateway_id].completeness()

    def gateways(self) -> list[str]:
        """The ids of the gateways heard of, in order."""
        with self._lock:
            return sorted(self._accounting.gateways)

    # -- waiting and the end -----------------------------------------------------------

    @staticmethod
    def wait(predicate: Callable[[], object], within: float, what: str) -> None:
        """`wait_until`: blocks this thread until `predicate()`, for `within` seconds at most."""
        wait_until(predicate, within, what)

    @staticmethod
    async def wait_async(predicate: Callable[[], object], within: float, what: str) -> None:
        """`wait_until_async`, for async tests (the event loop runs on)."""
        await wait_until_async(predicate, within, what)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

    def __enter__(self) -> Collector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
