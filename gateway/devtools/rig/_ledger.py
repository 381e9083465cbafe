"""What the centre keeps of the batches that arrive: each `(gateway, boot, seq)` once,
and per gateway which seqs came, which did not, and how many copies were dropped.

Delivery is at-least-once: a batch whose PUBACK was lost is sent again, and the live
and history lanes interleave on the wire. A gateway numbers its batches 1, 2, 3, ...
across restarts (the buffer keeps the counter), so a hole in the seqs is a batch that
has not arrived (yet: it may still be on the gateway's disk).

Pure: no I/O, no locks (the collector holds its own). The centre's own accounting
(`gateway.centre.accounting`, when it lands) takes this one's place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise

from gateway.wire import Batch

SeqRange = tuple[int, int]  # first and last seq, both included


@dataclass(frozen=True, slots=True)
class Account:
    """One gateway's batches as the centre has them."""

    gateway_id: str
    boots: tuple[str, ...]  # boot ids, in the order their first batch arrived
    batches: int  # distinct batches
    readings: int  # their readings
    duplicates: int  # copies that arrived again and were dropped
    first_seq: int
    last_seq: int
    missing: tuple[SeqRange, ...]  # holes between first_seq and last_seq

    @property
    def complete(self) -> bool:
        """Every seq from first_seq to last_seq arrived."""
        return not self.missing


@dataclass(slots=True)
class _Gateway:
    boots: list[str] = field(default_factory=list)
    seqs: set[int] = field(default_factory=set)
    readings: int = 0
    duplicates: int = 0


class Ledger:
    def __init__(self) -> None:
        self._kept: dict[tuple[str, str, int], Batch] = {}
        self._gateways: dict[str, _Gateway] = {}
        self.duplicates = 0

    def add(self, batch: Batch) -> bool:
        """Keep `batch` unless a copy is kept already; True when it was new."""
        key = (batch.gateway_id, batch.boot_id, batch.seq)
        gateway = self._gateways.setdefault(batch.gateway_id, _Gateway())
        if key in self._kept:
            gateway.duplicates += 1
            self.duplicates += 1
            return False
        self._kept[key] = batch
        if batch.boot_id not in gateway.boots:
            gateway.boots.append(batch.boot_id)
        gateway.seqs.add(batch.seq)
        gateway.readings += len(batch.readings)
        return True

    def batches(self) -> list[Batch]:
        """Every batch once, per gateway in seq order (the order they were made)."""
        return [self._kept[key] for key in sorted(self._kept, key=lambda k: (k[0], k[2], k[1]))]

    def accounts(self) -> dict[str, Account]:
        return {name: self._account(name, g) for name, g in sorted(self._gateways.items())}

    @staticmethod
    def _account(name: str, gateway: _Gateway) -> Account:
        seqs = sorted(gateway.seqs)
        holes = tuple((a + 1, b - 1) for a, b in pairwise(seqs) if b > a + 1)
        return Account(
            gateway_id=name,
            boots=tuple(gateway.boots),
            batches=len(seqs),
            readings=gateway.readings,
            duplicates=gateway.duplicates,
            first_seq=seqs[0] if seqs else 0,
            last_seq=seqs[-1] if seqs else 0,
            missing=holes,
        )
