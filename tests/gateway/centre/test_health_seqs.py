"""What the gateway's health says of its seqs, for the centre's accounting: the first seq
still on disk, and the first seq of this boot (after an unclean stop seqs jump)."""

from __future__ import annotations

from pathlib import Path

from buffer import DurableQueue
from gateway.store import Store

MAX_BYTES = 4_000_000


async def test_health_names_the_lowest_seq_on_disk_as_acks_remove_batches(tmp_path: Path) -> None:
    store = Store(DurableQueue(tmp_path / "b.db", max_bytes=MAX_BYTES))
    try:
        assert store.health(0.0, MAX_BYTES).first_unsent_seq is None
        for _ in range(5):
            await store.append(lambda seq: b"x" * 100)
        assert store.health(0.0, MAX_BYTES).first_unsent_seq == 1
        await store.ack([1, 2, 4])  # a later lane acked 4: the lowest left is 3
        report = store.health(0.0, MAX_BYTES)
        assert (report.first_unsent_seq, report.last_seq) == (3, 5)
        await store.ack([3, 5])
        assert store.health(0.0, MAX_BYTES).first_unsent_seq is None
    finally:
        store.close()


async def test_a_boot_begins_after_the_seqs_on_disk_and_after_the_lease_a_crash_left(
    tmp_path: Path,
) -> None:
    path = tmp_path / "b.db"
    store = Store(DurableQueue(path, max_bytes=MAX_BYTES, synchronous="normal"))
    assert store.health(0.0, MAX_BYTES).boot_first_seq == 1
    await store.append(lambda seq: b"x")
    await store.append(lambda seq: b"y")
    store.close()  # a clean close: the next boot goes on from seq 3
    again = Store(DurableQueue(path, max_bytes=MAX_BYTES, synchronous="normal"))
    report = again.health(0.0, MAX_BYTES)
    assert (report.boot_first_seq, report.first_unsent_seq, report.last_seq) == (3, 1, 2)
    again.close()
    (tmp_path / "b.db.seq").write_text("1000002\n")  # the lease a killed gateway leaves
    crashed = Store(DurableQueue(path, max_bytes=MAX_BYTES, synchronous="normal"))
    try:
        report = crashed.health(0.0, MAX_BYTES)
        assert (report.boot_first_seq, report.first_unsent_seq) == (1_000_003, 1)
    finally:
        crashed.close()


def test_a_store_that_could_not_open_says_no_boot_seq(tmp_path: Path) -> None:
    def full() -> DurableQueue:
        from buffer import DiskFullError

        raise DiskFullError("no space left")

    store = Store(full)
    try:
        assert not store.open()
        report = store.health(0.0, MAX_BYTES)
        assert (report.boot_first_seq, report.first_unsent_seq) == (None, None)
    finally:
        store.close()
