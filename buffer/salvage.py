"""Read the batches that are still readable out of a damaged buffer file, without SQLite.

SQLite cannot help once a buffer file is damaged: a file cut short anywhere makes
every query fail ("database disk image is malformed", because the header promises
more pages than the file holds), and one bad interior page hides every row below it.
So this module reads the file the way ``sqlite3 .recover`` does, page by page
(https://www.sqlite.org/fileformat2.html):

1. The database file is read as pages; the committed frames of a ``-wal`` file whose
   header and frame checksums verify are laid over them (the newest committed frame
   of each page wins), as SQLite itself would.
2. Pages on the freelist are skipped (when page 1 and the freelist trunk pages are
   readable): they hold stale copies of deleted rows.
3. Every table b-tree leaf page is parsed; a cell whose record has exactly the shape
   of a ``batches`` row (NULL rowid alias, created_at, size, a blob of ``size``
   bytes, then nothing (format 1) or a CRC: an integer, or NULL for a row stored by
   format 1) is a batch; its payload is assembled from the cell and its overflow
   chain. Copies of one seq (a stale one on a page not yet reused) are alike but for
   a shifted created_at; the caller keeps the first one read.
4. A cell that has the shape of a batch but whose payload cannot be assembled (an
   overflow page missing or beyond the end of the file), or does not match its CRC,
   is counted as unreadable by its seq. Rows on a leaf page that is itself destroyed
   leave no trace and are not counted: nothing proves they existed.
5. The ``meta`` table (an index b-tree, ``WITHOUT ROWID``) is read the same way; the
   highest value seen per key is kept (every meta value only grows).

Pure reading: the damaged files are opened read-only and never modified.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Final, NamedTuple, Self

from buffer.schema import FRAME_HEADER, META_KEYS, PAGE_SIZE, SQLITE_MAGIC, WAL_HEADER, checksum

__all__ = ["Batch", "DamagedFile", "wal_damage"]

_WAL_MAGIC: Final = 0x377F0682  # | 1: checksums are big-endian words
_WAL_VERSION: Final = 3007000

_TABLE_LEAF: Final = 0x0D
_INDEX_LEAF: Final = 0x0A
_U32: Final = struct.Struct(">I")
_U16: Final = struct.Struct(">H")
_F64: Final = struct.Struct(">d")


class Batch(NamedTuple):
    """One readable row; ``crc`` is None for a row stored by format 1."""

    seq: int
    created_at: float
    payload: bytes
    crc: int | None


class _WalHeader(NamedTuple):
    order: str  # byte order of the checksummed words: "<" or ">"
    page_size: int
    salts: tuple[int, int]
    sums: tuple[int, int]


def wal_damage(wal_path: str) -> str | None:
    """Why the WAL at ``wal_path`` cannot be used, or None (absent, sound, or too short
    to hold a commit). SQLite silently ignores a WAL whose header does not verify, and
    with it every transaction committed since the last checkpoint.
    """
    fd = _open_or_none(wal_path)
    if fd is None:
        return None
    try:
        header = _pread(fd, WAL_HEADER, 0)
    finally:
        os.close(fd)
    if len(header) < WAL_HEADER or _wal_header(header) is not None:
        return None
    return "the -wal file has no valid WAL header: the commits in it are unreadable"


class DamagedFile:
    """The pages of ``path`` (and of ``path-wal``), read directly from the files.

    ``batches()`` yields every readable batch, in page order, possibly more than once;
    afterwards ``unreadable_seqs`` holds the seqs of rows that were found but could not
    be read, and ``meta`` the highest value seen for each ``meta`` key.
    """

    def __init__(self, path: str) -> None:
        self.unreadable_seqs: set[int] = set()
        self.meta: dict[str, int] = {}
        self._db = _open_or_none(path)
        self._wal = _open_or_none(path + "-wal")
        try:
            header = _pread(self._db, 100, 0)
            sound_header = header[:16] == SQLITE_MAGIC
            db_page_size = _page_size(header) if sound_header else None
            self._wal_pages, wal_page_size = self._read_wal(db_page_size)
            self.page_size: int = (
                db_page_size or wal_page_size or _guess_page_size(self._db) or PAGE_SIZE
            )
            reserved = header[20] if sound_header else 0
            self._usable = self.page_size - reserved
            db_size = os.fstat(self._db).st_size if self._db is not None else 0
            self.page_count = max([db_size // self.page_size, *self._wal_pages])
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for fd in (self._db, self._wal):
            if fd is not None:
                os.close(fd)
        self._db = self._wal = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- pages ---------------------------------------------------------------------------

    def page(self, number: int) -> bytes | None:
        """Page ``number`` (1-based) as SQLite would see it, or None if it is not on disk."""
        if not 1 <= number <= self.page_count:
            return None
        size = self.page_size
        offset = self._wal_pages.get(number)
        data = (
            _pread(self._wal, size, offset)
            if offset is not None
            else _pread(self._db, size, (number - 1) * size)
        )
        return data if len(data) == size else None

    def _read_wal(self, page_size: int | None) -> tuple[dict[int, int], int | None]:
        """Page number -> offset of its newest committed, checksummed frame in the WAL."""
        header = _wal_header(_pread(self._wal, WAL_HEADER, 0))
        if header is None or page_size not in (None, header.page_size):
            return {}, None
        committed: dict[int, int] = {}
        pending: dict[int, int] = {}
        sums = header.sums
        frame_size = FRAME_HEADER + header.page_size
        offset = WAL_HEADER
        while len(frame := _pread(self._wal, frame_size, offset)) == frame_size:
            number, commit, salt1, salt2, sum1, sum2 = struct.unpack(">6I", frame[:24])
            if (salt1, salt2) != header.salts:
                break  # a frame of an older generation of the WAL: the log ends here
            sums = _wal_checksum(frame[:8], sums, header.order)
            sums = _wal_checksum(frame[FRAME_HEADER:], sums, header.order)
            if sums != (sum1, sum2):
                break  # torn or damaged: SQLite stops at the same frame
            pending[number] = offset + FRAME_HEADER
            if commit:
                committed.update(pending)
                pending.clear()
            offset += frame_size
        return committed, header.page_size

    def _freelist(self) -> set[int]:
        """Pages on the freelist, as far as page 1 and the trunk pages can be read."""
        first = self.page(1)
        if first is None or first[:16] != SQLITE_MAGIC:
            return set()
        trunk, total = _U32.unpack_from(first, 32)[0], _U32.unpack_from(first, 36)[0]
        free: set[int] = set()
        max_leaves = self._usable // 4 - 2
        while 1 < trunk <= self.page_count and trunk not in free and len(free) <= total:
            free.add(trunk)
            page = self.page(trunk)
            if page is None:
                break
            following, count = _U32.unpack_from(page, 0)[0], _U32.unpack_from(page, 4)[0]
            if count > max_leaves:
                break
            free.update(n for (n,) in struct.iter_unpack(">I", page[8 : 8 + 4 * count]))
            trunk = following
        return free

    # -- rows ----------------------------------------------------------------------------

    def batches(self) -> Iterator[Batch]:
        """Every readable ``batches`` row on every live table leaf page, in page order."""
        free = self._freelist()
        for number in range(1, self.page_count + 1):
            if number in free:
                continue
            page = self.page(number)
            if page is None:
                continue
            start = 100 if number == 1 else 0
            kind = page[start]
            if kind == _TABLE_LEAF:
                yield from self._leaf_batches(page, start)
            elif kind == _INDEX_LEAF:
                self._read_meta(page, start)

    def _cells(self, page: bytes, start: int) -> Iterator[int]:
        count = _U16.unpack_from(page, start + 3)[0]
        first_cell = start + 8 + 2 * count
        if first_cell > self._usable:
            return
        for i in range(count):
            pointer = _U16.unpack_from(page, start + 8 + 2 * i)[0]
            if first_cell <= pointer < self._usable:
                yield pointer

    def _leaf_batches(self, page: bytes, start: int) -> Iterator[Batch]:
        usable = self._usable
        for pointer in self._cells(page, start):
            try:
                length, pos = _varint(page, pointer)
                seq, pos = _varint(page, pos)
            except IndexError:
                continue
            local = _local_size(length, usable, usable - 35)
            if pos + local > usable or seq < 1:
                continue
            shape = _batch_shape(page[pos : pos + local], length)
            if shape is None:
                continue  # not a batch: a schema row, or garbage that looks like a leaf
            created_at, body, end, crc_type = shape
            record = page[pos : pos + local]
            if length > local:
                rest = self._overflow(page, pos + local, length - local)
                if rest is None:
                    self.unreadable_seqs.add(seq)
                    continue
                record += rest
            payload = record[body:end]
            crc = None if crc_type in (None, 0) else _integer(crc_type, record, end)
            if crc is not None and checksum(payload) != crc:
                self.unreadable_seqs.add(seq)  # damaged bytes: never passed on
                continue
            yield Batch(seq, created_at, payload, crc)

    def _overflow(self, page: bytes, at: int, need: int) -> bytes | None:
        """``need`` bytes from the overflow chain whose first page number is at ``at``."""
        if at + 4 > self._usable:
            return None
        number = _U32.unpack_from(page, at)[0]
        parts: list[bytes] = []
        seen: set[int] = set()
        while need > 0:
            if number in seen or (chunk := self.page(number)) is None:
                return None
            seen.add(number)
            part = chunk[4 : self._usable][:need]
            parts.append(part)
            need -= len(part)
            number = _U32.unpack_from(chunk, 0)[0]
        return b"".join(parts)

    def _read_meta(self, page: bytes, start: int) -> None:
        """Collect (key TEXT, value INTEGER) records of the ``meta`` table on an index leaf."""
        usable = self._usable
        for pointer in self._cells(page, start):
            try:
                length, pos = _varint(page, pointer)
                if length > (usable - 12) * 64 // 255 - 23 or pos + length > usable:
                    continue
                record = page[pos : pos + length]
                types, body = _record_header(record)
                if len(types) != 2 or types[0] < 13 or types[0] % 2 == 0:
                    continue  # not (TEXT, INTEGER)
                key_end = body + (types[0] - 13) // 2
                key = record[body:key_end].decode("utf-8", "replace")
                value = _integer(types[1], record, key_end)
            except (IndexError, ValueError):
                continue
            if key in META_KEYS:
                self.meta[key] = max(value, self.meta.get(key, value))


# -- the record format -----------------------------------------------------------------------


def _batch_shape(local: bytes, length: int) -> tuple[float, int, int, int | None] | None:
    """(created_at, where the payload starts and ends, the CRC's serial type or None)
    if ``local`` starts a batches record, else None.

    A batches record has five columns: NULL (seq is the rowid), a number (created_at),
    an integer (size), a blob of exactly ``size`` bytes, and the CRC (an integer, or
    NULL); a row stored by format 1 lacks the fifth (its blob ends the record).
    """
    try:
        types, body = _record_header(local)
        if len(types) not in (4, 5) or types[0] != 0 or types[3] < 12 or types[3] % 2:
            return None
        when_type, size_type, blob_size = types[1], types[2], (types[3] - 12) // 2
        crc_type = types[4] if len(types) == 5 else None
        crc_size = 0 if crc_type in (None, 0) else _value_size(crc_type)
        if crc_type == 7:
            return None  # a CRC is an integer
        size_at = body + _value_size(when_type)
        payload_at = size_at + _value_size(size_type)
        end = payload_at + blob_size
        if _integer(size_type, local, size_at) != blob_size or end + crc_size != length:
            return None
        if when_type == 7:
            return _F64.unpack_from(local, body)[0], payload_at, end, crc_type
        # SQLite stores a REAL without a fraction as an integer.
        return float(_integer(when_type, local, body)), payload_at, end, crc_type
    except (IndexError, ValueError):
        return None


def _record_header(record: bytes) -> tuple[list[int], int]:
    """The serial types of a record and where its body starts."""
    header_size, pos = _varint(record, 0)
    if header_size > len(record) or header_size < pos:
        raise ValueError("record header longer than the record")
    types = []
    while pos < header_size:
        serial_type, pos = _varint(record, pos)
        types.append(serial_type)
    if pos != header_size:
        raise ValueError("record header overruns its size")
    return types, header_size


_INT_SIZES: Final = {1: 1, 2: 2, 3: 3, 4: 4, 5: 6, 6: 8, 8: 0, 9: 0}


def _value_size(serial_type: int) -> int:
    """Bytes of a numeric value of this serial type."""
    if serial_type == 7:
        return 8
    if serial_type not in _INT_SIZES:
        raise ValueError(f"serial type {serial_type} is not a number")
    return _INT_SIZES[serial_type]


def _integer(serial_type: int, data: bytes, at: int) -> int:
    """The integer of this serial type at ``at``; ValueError if it is not one."""
    if serial_type in (8, 9):
        return serial_type - 8
    size = _INT_SIZES.get(serial_type)
    if size is None or at + size > len(data):
        raise ValueError(f"no integer of serial type {serial_type} at {at}")
    return int.from_bytes(data[at : at + size], "big", signed=True)


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """SQLite's big-endian varint (1 to 9 bytes) at ``pos``: (value as int64, next pos)."""
    value = 0
    for i in range(8):
        byte = data[pos + i]
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return _signed64(value), pos + i + 1
    return _signed64((value << 8) | data[pos + 8]), pos + 9


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _local_size(length: int, usable: int, max_local: int) -> int:
    """Bytes of a cell's payload stored on the b-tree page itself (fileformat2 §1.6)."""
    if length <= max_local:
        return length
    min_local = (usable - 12) * 32 // 255 - 23
    surplus = min_local + (length - min_local) % (usable - 4)
    return surplus if surplus <= max_local else min_local


# -- files ---------------------------------------------------------------------------------------


def _open_or_none(path: str) -> int | None:
    try:
        return os.open(Path(path), os.O_RDONLY)
    except FileNotFoundError:
        return None


def _pread(fd: int | None, size: int, offset: int) -> bytes:
    """Up to ``size`` bytes; fewer at the end of the file or where the device fails (EIO)."""
    if fd is None:
        return b""
    try:
        return os.pread(fd, size, offset)
    except OSError:
        return b""


def _page_size(header: bytes) -> int | None:
    value = _U16.unpack_from(header, 16)[0]
    size = 65536 if value == 1 else value
    return size if _valid_page_size(size) else None


_BTREE_PAGES: Final = frozenset({0x02, 0x05, 0x0A, 0x0D})  # the page types of a b-tree
_GUESS_BYTES: Final = 512 * 1024  # how much of the file a guess of its page size reads


def _guess_page_size(fd: int | None) -> int | None:
    """The page size of a file whose header is gone and whose WAL does not say it: the
    largest size at whose multiples about as many b-tree page headers start as at the
    best size's (files made before 2026-11-30 have 4 KiB pages, later ones 2 KiB; at a
    smaller size than the file's, the extra offsets fall mid-page and add almost none).
    None when no size finds any."""
    data = _pread(fd, _GUESS_BYTES, 0)
    hits = {
        size: sum(_looks_like_btree_page(data, at, size) for at in range(size, len(data), size))
        for size in (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
    }
    best = max(hits.values())
    if best == 0:
        return None
    return max(size for size, found in hits.items() if found >= 0.9 * best)


def _looks_like_btree_page(data: bytes, at: int, size: int) -> bool:
    """A plausible b-tree page header (not page 1's) at `at`, for pages of `size` bytes."""
    if at + 8 > len(data) or data[at] not in _BTREE_PAGES:
        return False
    freeblock, cells, content = struct.unpack_from(">HHH", data, at + 1)
    content = content or 65536
    header = 8 if data[at] in (0x0A, 0x0D) else 12
    return (
        (freeblock == 0 or header <= freeblock < size)
        and header + 2 * cells <= content <= size
        and data[at + 7] < 255  # fragmented free bytes: at most 60 in a sound page
    )


def _valid_page_size(size: int) -> bool:
    return 512 <= size <= 65536 and size & (size - 1) == 0


def _wal_header(header: bytes) -> _WalHeader | None:
    """The WAL header's fields if its magic, version, page size and checksum are right."""
    if len(header) < WAL_HEADER:
        return None
    magic, version, page_size, _, salt1, salt2, sum1, sum2 = struct.unpack(">8I", header)
    if magic & ~1 != _WAL_MAGIC or version != _WAL_VERSION or not _valid_page_size(page_size):
        return None
    order = ">" if magic & 1 else "<"
    if _wal_checksum(header[:24], (0, 0), order) != (sum1, sum2):
        return None
    return _WalHeader(order, page_size, (salt1, salt2), (sum1, sum2))


def _wal_checksum(data: bytes, sums: tuple[int, int], order: str) -> tuple[int, int]:
    """SQLite's WAL checksum (Fletcher-like over 32-bit words) continued from ``sums``."""
    s1, s2 = sums
    words = struct.unpack(f"{order}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s1 = (s1 + words[i] + s2) & 0xFFFFFFFF
        s2 = (s2 + words[i + 1] + s1) & 0xFFFFFFFF
    return s1, s2
