"""What the accounting tests and the doc test feed the centre: batches, health, status
and events of one gateway, `cab-1`, with boots A and B."""

from __future__ import annotations

import json
from typing import Any

from drivers.core.model import Reading
from gateway.centre.accounting import Accounting
from gateway.wire import encode_batch

GW = "cab-1"
A, B = "aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"


def batch(seq: int, boot: str = A, *, readings: int = 2, ts_ms: int = 1_795_000_000_000) -> bytes:
    return encode_batch(
        GW, boot, seq, [Reading("pump", f"p{i}", ts_ms + seq, float(i)) for i in range(readings)]
    )


def health(
    boot: str = A,
    *,
    ts: float = 1000.0,
    uptime: float = 10.0,
    first_unsent: int | None,
    last: int,
    boot_first: int | None = 1,
    pending: int = 0,
    eviction: dict[str, Any] | None = None,
) -> bytes:
    return json.dumps(
        {
            "gateway_id": GW,
            "boot_id": boot,
            "ts": ts,
            "uptime_s": uptime,
            "buffer": {
                "first_unsent_seq": first_unsent,
                "last_seq": last,
                "boot_first_seq": boot_first,
                "eviction": eviction,
                "corrupt_batches": 0,
            },
            "pipeline": {"readings_pending": pending},
        }
    ).encode()


def status(boot: str, state: str, reason: str | None = None, ts: float = 990.0) -> bytes:
    doc = {"state": state, "gateway_id": GW, "boot_id": boot, "ts": ts}
    if reason:
        doc["reason"] = reason
    return json.dumps(doc).encode()


def event(kind: str, boot: str = A, **data: Any) -> bytes:
    doc = {"gateway_id": GW, "boot_id": boot, "seq": 1, "ts": 1001.0, "kind": kind}
    return json.dumps({**doc, "message": kind, "data": data}).encode()


def feed(accounting: Accounting, *messages: tuple[str, bytes]) -> list[int]:
    """The seqs of the batches `receive` returned (new ones only)."""
    new = []
    for topic, payload in messages:
        got = accounting.receive(f"city/{GW}/{topic}", payload)
        if got is not None:
            new.append(got.seq)
    return new


def view(accounting: Accounting) -> dict[str, Any]:
    (only,) = accounting.completeness(GW)
    return only
