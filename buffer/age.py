"""The age bound (``max_age``): its cutoff, and when it can next evict anything.

A 1 s timer calls ``evict_older_than``; while nothing can have expired that must cost
no SQL at all. So the queue keeps in memory the stamp whose expiry is the earliest
moment an entry can expire: the first entry's stamp when it is sane (not in the
future), else what the last walk of the expired prefix found (``Tx.evict_expired``);
-inf when unknown, +inf when the queue is empty. A clock that stepped back since it
was worked out makes it unknown. See DESIGN.md, "Eviction policy".
"""

from __future__ import annotations

import math

__all__ = ["AgeBound"]


class AgeBound:
    """``max_age`` (None: no age bound) and the stamp that decides the next age eviction."""

    def __init__(self, max_age: float | None) -> None:
        if max_age is not None and (
            isinstance(max_age, bool)
            or not isinstance(max_age, int | float)
            or not math.isfinite(max_age)
            or max_age <= 0
        ):
            raise ValueError(f"max_age must be a positive number of seconds, got {max_age!r}")
        self.max_age = max_age
        self._hint = -math.inf  # the stamp whose expiry is the next possible eviction
        self._hint_at = -math.inf  # the clock when it was worked out

    def cutoff(self, now: float) -> float | None:
        """Entries stamped before this have expired at ``now``; None without a bound."""
        return None if self.max_age is None else now - self.max_age

    def due(self, now: float, batches: int) -> bool:
        """Could the age bound evict anything at ``now``? O(1), no I/O."""
        if self.max_age is None or not batches:
            return False
        return self._hint < now - self.max_age or now < self._hint_at

    def unknown(self, now: float) -> None:
        """Nothing is known (at open): the next check walks the prefix."""
        self._hint, self._hint_at = -math.inf, now

    def front_changed(self, oldest: float | None, now: float) -> None:
        """The first entry is another one (acks, a byte eviction, a shift): its stamp
        decides, unless it is in the future (then only a walk can tell)."""
        if oldest is None:
            self._hint = math.inf
        else:
            self._hint = oldest if oldest <= now else -math.inf
        self._hint_at = now

    def walked(self, hint: float, now: float) -> None:
        """A walk of the expired prefix left ``hint`` (see ``Tx.evict_expired``)."""
        self._hint, self._hint_at = hint, now

    def appended(self, now: float) -> None:
        """An entry stamped ``now`` was stored; it expires ``max_age`` after ``now``."""
        if self.max_age is not None:
            self._hint = min(self._hint, now)
