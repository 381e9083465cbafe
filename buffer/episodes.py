"""Log state changes, not repeats: eviction episodes and runs of damaged batches.

Eviction is logged once when it starts and once when it stops, with what was lost
(see DESIGN.md, "Eviction episodes"). A batch that fails its CRC is logged once, with
its seq, when it is the first of a run; the run's totals follow when a read finds no
damaged batch again (see DESIGN.md, "Checksums"). The counters themselves are in
``meta``, published by the health topic.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Final

from buffer.schema import Damaged
from buffer.stats import EvictionCause, EvictionEpisode
from buffer.transaction import Loss

__all__ = ["DamageLog", "EvictionLog"]

_LOW_WATER: Final = 15 / 16  # an eviction episode ends below this share of a bound

_log = logging.getLogger("buffer")


class EvictionLog:
    """The current or last eviction episode of this open, and when it ends."""

    def __init__(self, path: str, max_bytes: int, max_age: float | None) -> None:
        self._path = path
        self._max_bytes = max_bytes
        self._max_age = max_age
        self.episode: EvictionEpisode | None = None
        self._room = 0  # free pages that end an episode (see maybe_end)
        self._gap = 0.0  # the largest gap in created_at the age bound left behind

    @property
    def active(self) -> bool:
        return self.episode is not None and self.episode.active

    def note(self, loss: Loss, now: float, *, room: int, oldest: float | None) -> None:
        """Evictions committed at ``now``: start an episode or add to it. ``room``: free
        pages for twice the largest entry lost; ``oldest``: the first stamp left."""
        episode = self.episode
        if episode is None or not episode.active:  # a new episode
            self._room, self._gap = 0, 0.0
            self.episode = EvictionEpisode(
                cause=loss.cause,
                started_at=now,
                first_seq=loss.first_seq,
                last_seq=loss.last_seq,
                batches=loss.batches,
                bytes=loss.bytes,
                oldest_created_at=loss.oldest,
                newest_created_at=loss.newest,
            )
            _log.warning(
                "buffer %s: %s; evicting the oldest batches; lost so far: %s",
                self._path,
                self._why(loss.cause),
                _describe(self.episode),
            )
        else:
            self.episode = dataclasses.replace(
                episode,
                cause=episode.cause if episode.cause == loss.cause else "both",
                first_seq=min(episode.first_seq, loss.first_seq),
                last_seq=max(episode.last_seq, loss.last_seq),
                batches=episode.batches + loss.batches,
                bytes=episode.bytes + loss.bytes,
                oldest_created_at=min(episode.oldest_created_at, loss.oldest),
                newest_created_at=max(episode.newest_created_at, loss.newest),
            )
        self.need_room(room)
        if loss.by_age_batches and oldest is not None:
            self._gap = max(self._gap, oldest - loss.newest)

    def need_room(self, pages: int) -> None:
        """The episode ends only once ``pages`` are free (the next append must fit)."""
        self._room = max(self._room, pages)

    def _why(self, cause: EvictionCause) -> str:
        full = f"the buffer is full (max_bytes {self._max_bytes})"
        old = f"batches are older than max_age ({self._max_age:g} s)" if self._max_age else ""
        return {"max_bytes": full, "max_age": old, "both": f"{full} and {old}"}[cause]

    def maybe_end(self, now: float, data_pages: int, used_pages: int, oldest: float | None) -> None:
        """End the active episode once the backlog is clearly below the bounds that
        evicted, with a margin so that a backlog that stays at its bound (an outage) is
        one episode, not one per append or per timer tick.

        Bytes: free room for twice the largest entry of the episode, for its largest
        group, and for 1/16 of the data budget (at most half of it); without acks an
        eviction leaves less room than the last entry it took. Age: the oldest entry is
        younger than ``max_age`` by 1/16 of it and by twice the largest gap between the
        stamps the bound took and the next (at most half of ``max_age``); without acks
        the oldest left after an eviction is only that gap younger than the bound.
        """
        episode = self.episode
        if episode is None or not episode.active:
            return
        room = min(data_pages / 2, max(data_pages * (1 - _LOW_WATER), self._room))
        below_bytes = data_pages - used_pages >= room
        below_age = True
        if self._max_age is not None and oldest is not None:
            margin = min(self._max_age / 2, max(self._max_age * (1 - _LOW_WATER), 2 * self._gap))
            below_age = oldest >= now - (self._max_age - margin)
        if {"max_bytes": below_bytes, "max_age": below_age, "both": below_bytes and below_age}[
            episode.cause
        ]:
            self.end(now, "the backlog is below its bounds again")

    def end(self, now: float, reason: str) -> None:
        """End the active episode (if any) and log its totals."""
        if self.episode is None or not self.episode.active:
            return
        self.episode = dataclasses.replace(self.episode, active=False, ended_at=now)
        _log.warning(
            "buffer %s: eviction stopped (%s); lost in this episode, which began %s: %s",
            self._path,
            reason,
            format_time(self.episode.started_at),
            _describe(self.episode),
        )


class DamageLog:
    """Runs of damaged batches: one ERROR line naming the first of a run (its seq), one
    WARNING line with the run's totals when a read finds none again, if the run grew."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._run: Loss | None = None  # what the current run removed
        self._logged = 0  # batches the run's first line reported

    def removed(self, damaged: list[Damaged]) -> None:
        """These batches were found damaged by a read and removed (committed)."""
        first = self._run is None
        run = self._run = self._run or Loss()
        for item in damaged:
            run.add(item.seq, item.created_at, item.size, by_age=False)
        if not first:
            return
        self._logged = len(damaged)
        head = damaged[0]
        more = f"; with it in this read: {_describe(run)}" if len(damaged) > 1 else ""
        _log.error(
            "buffer %s: batch seq %d (%d bytes, created %s) was damaged on disk: %s; removed,"
            " never published%s; damaged batches are counted in corrupt_batches",
            self._path,
            head.seq,
            head.size,
            format_time(head.created_at),
            head.why,
            more,
        )

    def end(self, reason: str) -> None:
        """The run (if any) is over: a read found no damaged batch, or the queue closes."""
        run, self._run = self._run, None
        if run is None or run.batches == self._logged:
            return
        _log.warning(
            "buffer %s: damaged batches no longer found (%s); removed in this run: %s",
            self._path,
            reason,
            _describe(run),
        )


def format_time(when: float | None) -> str:
    if not isinstance(when, int | float) or not math.isfinite(when):
        return "-"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(when)) + " UTC"
    except (OverflowError, OSError, ValueError):
        return f"{when:.0f}"


def _describe(lost: EvictionEpisode | Loss) -> str:
    if isinstance(lost, Loss):
        oldest, newest = lost.oldest, lost.newest
    else:
        oldest, newest = lost.oldest_created_at, lost.newest_created_at
    count = "1 batch" if lost.batches == 1 else f"{lost.batches} batches"
    return (
        f"{count} ({lost.bytes} bytes), seqs {lost.first_seq}-{lost.last_seq},"
        f" created {format_time(oldest)} to {format_time(newest)}"
    )
