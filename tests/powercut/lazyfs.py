"""A filesystem that forgets, at a power cut, everything that was never fsynced.

In the manner of LazyFS (the FUSE filesystem the Jepsen tests put under etcd and
PostgreSQL): a FUSE filesystem (mfusepy over Debian's libfuse3) whose every change is
held in memory until an fsync makes it durable. A *power cut* (`cut` on the control
socket) freezes it: from that instant every operation fails with EIO, nothing more
reaches the disk, and after an unmount the next mount of the same backing directory
shows the durable state alone — what a machine finds on its disk after the power came
back. `tests/powercut/mount.py` drives it from a test.

    python tests/powercut/lazyfs.py BACKING MOUNTPOINT --control SOCKET

The rules it models (POSIX, taken at its word; a real ext4 is kinder, so code that
survives this survives there):

- **Data is durable when its file is fsynced** (`fsync` or `fdatasync`): the bytes and
  the size of that inode as they are at that moment. `fsync` also makes its mode,
  owner and times durable.
- **Names are durable when their directory is fsynced.** Creating, renaming, linking,
  unlinking, making and removing directories change only the directory in memory; an
  fsync of the directory makes every entry of it durable as it stands (a name then
  points at whatever the inode's durable data is: empty, for a file never fsynced). So
  an fsynced file whose directory was never fsynced vanishes at a power cut, and a
  rename is durable, atomically, with its directory (both directories, for a move
  between two: each at its own fsync).
- **Everything else is lost at a power cut**: writes, truncations, appends (O_APPEND
  writes at the end, like any write), created and removed names, attribute changes.
  Optionally (`cut` with `tear`) the last write that was never synced is *torn*: each
  of its 512-byte sectors (aligned to file offsets) reaches the disk or not, at
  random, as a disk that reorders its writes leaves it; only a file whose inode is on
  the disk can be torn that way.
- An inode no durable name points at is gone after the cut (a file unlinked while
  open, a file fsynced but never named durably).

Not modelled: `fsync` of a file does not make its name durable even where ext4 would;
timestamps across a cut are the last ones written with other metadata; extended
attributes, special files and `rename` flags (mfusepy does not pass them) are not
supported; an open file that was unlinked cannot be truncated by handle (the
high-level API gives no path for it).

The durable state lives in BACKING: `inodes/<ino>` holds the durable bytes of each
regular file, `meta.json` the durable inodes' attributes and every durable directory's
entries. A mount loads it (dropping inodes no durable name reaches, as fsck would);
only fsyncs write it.

Control: one JSON object a line on the Unix socket, one answer a line:
`{"op": "ping"}`, `{"op": "stats"}`, `{"op": "sync"}` (sync(2): everything durable),
`{"op": "cut", "tear": true, "seed": 7}`. A clean unmount syncs everything, as a clean
shutdown does; after a cut nothing more is written.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import itertools
import json
import logging
import os
import random
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SECTOR = 512
ROOT_INO = 1
META = "meta.json"
INODES = "inodes"

log = logging.getLogger("lazyfs")


def _error(code: int) -> OSError:
    return OSError(code, os.strerror(code))


# --- the durable state: the backing directory ---------------------------------------------


@dataclass
class DurableInode:
    kind: str  # "file", "dir", "symlink"
    mode: int  # st_mode, type bits included
    uid: int
    gid: int
    mtime: int  # ns
    ctime: int
    target: str = ""  # a symlink's

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "mode": self.mode,
            "uid": self.uid,
            "gid": self.gid,
            "mtime": self.mtime,
            "ctime": self.ctime,
            "target": self.target,
        }


class Disk:
    """What survives a power cut: durable inodes, durable directory entries, durable bytes.

    Written only by fsyncs (and by the tear of a cut); read once per mount."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data_dir = root / INODES
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.inodes: dict[int, DurableInode] = {}
        self.entries: dict[int, dict[str, int]] = {}  # durable directories: name -> ino
        self.next_ino = ROOT_INO + 1
        meta = root / META
        if meta.exists():
            doc = json.loads(meta.read_text())
            self.next_ino = int(doc["next_ino"])
            self.inodes = {int(k): DurableInode(**v) for k, v in doc["inodes"].items()}
            self.entries = {int(k): dict(v) for k, v in doc["entries"].items()}
        if ROOT_INO not in self.inodes:
            now = time.time_ns()
            self.inodes[ROOT_INO] = DurableInode("dir", stat.S_IFDIR | 0o755, 0, 0, now, now)
            self.entries[ROOT_INO] = {}
        self._forget_unreachable()
        self.save_meta()

    def _forget_unreachable(self) -> None:
        """Inodes no durable name reaches (unlinked while open, fsynced but never named)
        are gone after a cut, as fsck leaves them."""
        reachable = {ROOT_INO}
        todo = [ROOT_INO]
        while todo:
            for ino in self.entries.get(todo.pop(), {}).values():
                if ino not in reachable and ino in self.inodes:
                    reachable.add(ino)
                    todo.append(ino)
        for ino in list(self.inodes):
            if ino not in reachable:
                del self.inodes[ino]
                self.entries.pop(ino, None)
        for d in self.entries.values():
            for name in [n for n, ino in d.items() if ino not in reachable]:
                del d[name]
        for path in self.data_dir.iterdir():
            if not path.name.isdigit() or int(path.name) not in reachable:
                path.unlink()

    def data_path(self, ino: int) -> Path:
        return self.data_dir / str(ino)

    def read_data(self, ino: int) -> bytearray:
        try:
            return bytearray(self.data_path(ino).read_bytes())
        except FileNotFoundError:
            return bytearray()

    def save_meta(self) -> None:
        doc = {
            "next_ino": self.next_ino,
            "inodes": {str(k): v.to_json() for k, v in self.inodes.items()},
            "entries": {str(k): v for k, v in self.entries.items()},
        }
        temp = self.root / (META + ".tmp")
        temp.write_text(json.dumps(doc))
        temp.replace(self.root / META)


# --- the live state: memory -----------------------------------------------------------------


@dataclass
class Inode:
    ino: int
    kind: str
    mode: int
    uid: int
    gid: int
    atime: int
    mtime: int
    ctime: int
    nlink: int = 0
    data: bytearray = field(default_factory=bytearray)
    target: str = ""
    entries: dict[str, int] = field(default_factory=dict)
    # What differs from the disk, for regular files: byte ranges written since the last
    # fsync, and the smallest size it was truncated to meanwhile (None: not truncated).
    dirty: list[tuple[int, int]] = field(default_factory=list)
    truncated_to: int | None = None
    attrs_changed: bool = False
    entries_changed: bool = False

    @property
    def unsynced(self) -> bool:
        return bool(self.dirty) or self.truncated_to is not None or self.attrs_changed

    def st(self) -> dict[str, Any]:
        size = len(self.data) if self.kind == "file" else len(self.target.encode())
        if self.kind == "dir":
            size = 4096
        return {
            "st_ino": self.ino,
            "st_mode": self.mode,
            "st_nlink": self.nlink,
            "st_uid": self.uid,
            "st_gid": self.gid,
            "st_size": size,
            "st_blocks": (size + 511) // 512,
            "st_blksize": 4096,
            "st_atime": self.atime,
            "st_mtime": self.mtime,
            "st_ctime": self.ctime,
        }


@dataclass
class Tear:
    """The last write that was never synced: where, and its bytes."""

    ino: int
    offset: int
    data: bytes


@dataclass
class Counters:
    writes: int = 0
    bytes_written: int = 0
    fsyncs: int = 0
    fdatasyncs: int = 0
    fsyncdirs: int = 0
    truncates: int = 0
    renames: int = 0
    unlinks: int = 0
    creates: int = 0


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "file"


class PowerCutFS:
    """The filesystem's operations (mfusepy's `Operations` protocol), on the live state
    in memory, with the disk behind it. One lock serialises them with the control
    socket, so a cut falls between two operations, never inside one."""

    use_ns = True  # times as integer nanoseconds

    def __init__(self, backing: Path) -> None:
        self.disk = Disk(backing)
        self._mutex = threading.Lock()
        self.frozen = False
        self.nodes: dict[int, Inode] = {}
        self.handles: dict[int, tuple[int, int]] = {}  # fh -> (ino, open flags)
        self.next_fh = 1
        self.last_write: Tear | None = None
        self.counters = Counters()
        self._load()

    def _load(self) -> None:
        now = time.time_ns()
        for ino, d in self.disk.inodes.items():
            node = Inode(ino, d.kind, d.mode, d.uid, d.gid, now, d.mtime, d.ctime, target=d.target)
            if d.kind == "file":
                node.data = self.disk.read_data(ino)
            if d.kind == "dir":
                node.entries = dict(self.disk.entries.get(ino, {}))
                node.nlink = 1  # its "."
            self.nodes[ino] = node
        for node in list(self.nodes.values()):
            for child in node.entries.values():
                self.nodes[child].nlink += 1  # its name here
                if self.nodes[child].kind == "dir":
                    node.nlink += 1  # the child's ".."
        self.nodes[ROOT_INO].nlink += 1  # root's ".." is itself

    # -- plumbing --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _op(self, *, allow_frozen: bool = False) -> Iterator[None]:
        with self._mutex:
            if self.frozen and not allow_frozen:
                raise _error(errno.EIO)  # the power is off
            yield

    def _lookup(self, path: str) -> Inode:
        node = self.nodes[ROOT_INO]
        for part in (p for p in path.split("/") if p):
            if node.kind != "dir":
                raise _error(errno.ENOTDIR)
            ino = node.entries.get(part)
            if ino is None:
                raise _error(errno.ENOENT)
            node = self.nodes[ino]
        return node

    def _parent(self, path: str) -> tuple[Inode, str]:
        head, _, name = path.rstrip("/").rpartition("/")
        parent = self._lookup(head or "/")
        if parent.kind != "dir":
            raise _error(errno.ENOTDIR)
        if len(name.encode()) > 255:
            raise _error(errno.ENAMETOOLONG)
        return parent, name

    def _node(self, path: str | None, fh: int | None) -> Inode:
        if fh and fh in self.handles:
            return self.nodes[self.handles[fh][0]]
        if path is None:
            raise _error(errno.EBADF)
        return self._lookup(path)

    def _new(self, kind: str, mode: int) -> Inode:
        from mfusepy import fuse_get_context  # the calling process's uid and gid

        uid, gid, _pid = fuse_get_context()
        now = time.time_ns()
        ino = self.disk.next_ino
        self.disk.next_ino += 1
        node = Inode(ino, kind, mode, uid, gid, now, now, now)
        self.nodes[ino] = node
        return node

    def _link(self, parent: Inode, name: str, node: Inode) -> None:
        parent.entries[name] = node.ino
        parent.entries_changed = True
        parent.mtime = parent.ctime = time.time_ns()
        node.nlink += 1
        if node.kind == "dir":
            parent.nlink += 1
            node.nlink += 1  # its "."

    def _unlink(self, parent: Inode, name: str) -> Inode:
        node = self.nodes[parent.entries.pop(name)]
        parent.entries_changed = True
        parent.mtime = parent.ctime = time.time_ns()
        node.nlink -= 1
        node.ctime = time.time_ns()
        if node.kind == "dir":
            parent.nlink -= 1
            node.nlink -= 1
        return node

    def _changed(self, node: Inode, start: int, end: int) -> None:
        if end > start:
            node.dirty.append((start, end))
        node.mtime = node.ctime = time.time_ns()

    def _resize(self, node: Inode, length: int) -> None:
        if length < len(node.data):
            del node.data[length:]
            node.truncated_to = (
                length if node.truncated_to is None else min(node.truncated_to, length)
            )
            node.dirty = [(s, min(e, length)) for s, e in node.dirty if s < length]
        elif length > len(node.data):
            start = len(node.data)
            node.data.extend(bytes(length - start))
            node.dirty.append((start, length))
        node.mtime = node.ctime = time.time_ns()

    # -- making things durable ----------------------------------------------------------------

    def _persist_file(self, node: Inode, *, attrs: bool) -> None:
        """fsync / fdatasync of a file: its bytes and size as they are now, on the disk."""
        if node.kind == "file":
            path = self.disk.data_path(node.ino)
            fresh = not path.exists()
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                if fresh:
                    node.dirty = [(0, len(node.data))]
                elif node.truncated_to is not None:
                    os.ftruncate(fd, node.truncated_to)
                os.ftruncate(fd, len(node.data))
                for start, end in _merged(node.dirty):
                    os.pwrite(fd, node.data[start:end], start)
            finally:
                os.close(fd)
            node.dirty = []
            node.truncated_to = None
            if self.last_write is not None and self.last_write.ino == node.ino:
                self.last_write = None
        durable = self.disk.inodes.get(node.ino)
        if durable is not None and (attrs or durable.mode != node.mode):
            self._persist_attrs(node)
            self.disk.save_meta()
        if attrs:
            node.attrs_changed = False

    def _persist_attrs(self, node: Inode) -> None:
        self.disk.inodes[node.ino] = DurableInode(
            node.kind, node.mode, node.uid, node.gid, node.mtime, node.ctime, node.target
        )

    def _persist_dir(self, node: Inode) -> None:
        """fsync of a directory: every entry as it stands now is durable, and the
        directory's own attributes; the inodes they name become durable inodes (with
        whatever durable data they have: none, for a file never fsynced)."""
        self.disk.entries[node.ino] = dict(node.entries)
        self._persist_attrs(node)
        for ino in node.entries.values():
            if ino not in self.disk.inodes:
                child = self.nodes[ino]
                self._persist_attrs(child)
                if child.kind == "dir":
                    self.disk.entries.setdefault(ino, {})
        node.entries_changed = False
        node.attrs_changed = False
        self.disk.save_meta()

    def sync_all(self) -> None:
        """sync(2): every file and every directory durable as it stands (a clean unmount
        does this, as a clean shutdown does)."""
        for node in list(self.nodes.values()):
            if node.kind == "file":
                self._persist_file(node, attrs=True)
        for node in list(self.nodes.values()):
            if node.kind == "dir":
                self._persist_dir(node)

    def destroy(self, path: str) -> None:
        with self._mutex:
            if not self.frozen:
                self.sync_all()

    # -- the power cut ---------------------------------------------------------------------------

    def cut(self, *, tear: bool, seed: int | None) -> dict[str, Any]:
        """From now on every operation fails (the power is off); with `tear`, some sectors
        of the last unsynced write reach the disk. Returns what was lost."""
        with self._mutex:
            if self.frozen:
                return {"ok": False, "error": "the power is off already"}
            self.frozen = True
            lost_files = [n.ino for n in self.nodes.values() if n.kind == "file" and n.unsynced]
            lost_bytes = sum(e - s for n in self.nodes.values() for s, e in _merged(n.dirty))
            lost_dirs = [n.ino for n in self.nodes.values() if n.entries_changed]
            torn = self._tear(random.Random(seed)) if tear else None
            return {
                "ok": True,
                "unsynced_files": len(lost_files),
                "unsynced_bytes": lost_bytes,
                "unsynced_directories": len(lost_dirs),
                "torn": torn,
            }

    def _tear(self, rnd: random.Random) -> dict[str, Any] | None:
        last = self.last_write
        if last is None or last.ino not in self.disk.inodes or not last.data:
            return None
        end = last.offset + len(last.data)
        bounds = [last.offset]
        bounds += range((last.offset // SECTOR + 1) * SECTOR, end, SECTOR)
        bounds.append(end)
        kept = []
        fd = os.open(self.disk.data_path(last.ino), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            for start, stop in itertools.pairwise(bounds):
                if rnd.random() < 0.5:
                    os.pwrite(fd, last.data[start - last.offset : stop - last.offset], start)
                    kept.append([start, stop])
        finally:
            os.close(fd)
        return {"ino": last.ino, "sectors": len(bounds) - 1, "written": kept}

    # -- the operations ---------------------------------------------------------------------------

    def getattr(self, path: str | None, fh: int | None = None) -> dict[str, Any]:
        with self._op(allow_frozen=path == "/"):
            return self._node(path, fh).st()

    def readdir(self, path: str, fh: int) -> list[tuple[str, dict[str, int], int]]:
        with self._op():
            node = self._lookup(path)
            if node.kind != "dir":
                raise _error(errno.ENOTDIR)
            listed = [
                (".", node),
                ("..", node),
                *((n, self.nodes[i]) for n, i in node.entries.items()),
            ]
            # With use_ino the kernel takes st_ino from here: a 0 would hide the entry.
            return [(name, {"st_ino": n.ino, "st_mode": n.mode}, 0) for name, n in listed]

    def opendir(self, path: str) -> int:
        with self._op():
            if self._lookup(path).kind != "dir":
                raise _error(errno.ENOTDIR)
            return 0

    def releasedir(self, path: str | None, fh: int) -> int:
        return 0

    def mkdir(self, path: str, mode: int) -> int:
        with self._op():
            parent, name = self._parent(path)
            if name in parent.entries:
                raise _error(errno.EEXIST)
            self._link(parent, name, self._new("dir", stat.S_IFDIR | (mode & 0o7777)))
            return 0

    def rmdir(self, path: str) -> int:
        with self._op():
            parent, name = self._parent(path)
            node = self._lookup(path)
            if node.kind != "dir":
                raise _error(errno.ENOTDIR)
            if node.entries:
                raise _error(errno.ENOTEMPTY)
            self._unlink(parent, name)
            self.counters.unlinks += 1
            return 0

    def create(self, path: str, mode: int, flags: int = 0) -> int:
        with self._op():
            parent, name = self._parent(path)
            if name in parent.entries:
                node = self.nodes[parent.entries[name]]
                if flags & os.O_EXCL:
                    raise _error(errno.EEXIST)
            else:
                node = self._new("file", stat.S_IFREG | (mode & 0o7777))
                self._link(parent, name, node)
                self.counters.creates += 1
            return self._handle(node, flags)

    def open(self, path: str, flags: int) -> int:
        with self._op():
            node = self._lookup(path)
            if node.kind == "dir" and flags & os.O_ACCMODE != os.O_RDONLY:
                raise _error(errno.EISDIR)
            return self._handle(node, flags)

    def _handle(self, node: Inode, flags: int) -> int:
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = (node.ino, flags)
        return fh

    def release(self, path: str | None, fh: int) -> int:
        with self._mutex:
            ino, _ = self.handles.pop(fh, (None, 0))
            if ino is not None and self.nodes[ino].nlink == 0 and not self._open(ino):
                del self.nodes[ino]
            return 0

    def _open(self, ino: int) -> bool:
        return any(i == ino for i, _ in self.handles.values())

    def flush(self, path: str | None, fh: int) -> int:
        with self._op():
            return 0

    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        with self._op():
            node = self._node(path, fh)
            if node.kind == "dir":
                raise _error(errno.EISDIR)
            return bytes(node.data[offset : offset + size])

    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        with self._op():
            node = self._node(path, fh)
            if fh in self.handles and self.handles[fh][1] & os.O_APPEND:
                offset = len(node.data)
            if offset > len(node.data):
                self._resize(node, offset)
            node.data[offset : offset + len(data)] = data
            self._changed(node, offset, offset + len(data))
            self.last_write = Tear(node.ino, offset, bytes(data))
            self.counters.writes += 1
            self.counters.bytes_written += len(data)
            return len(data)

    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        with self._op():
            node = self._node(path, fh)
            if node.kind == "dir":
                raise _error(errno.EISDIR)
            self._resize(node, length)
            self.counters.truncates += 1
            return 0

    def fallocate(self, path: str | None, mode: int, offset: int, size: int, fh: int) -> int:
        with self._op():
            if mode != 0:
                raise _error(errno.EOPNOTSUPP)
            node = self._node(path, fh)
            if offset + size > len(node.data):
                self._resize(node, offset + size)
            return 0

    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        with self._op():
            node = self._node(path, fh)
            if node.kind == "dir":
                self._persist_dir(node)
            else:
                self._persist_file(node, attrs=not datasync)
            if datasync:
                self.counters.fdatasyncs += 1
            else:
                self.counters.fsyncs += 1
            return 0

    def fsyncdir(self, path: str | None, datasync: int, fh: int) -> int:
        with self._op():
            if path is None:
                raise _error(errno.EBADF)
            node = self._lookup(path)
            self._persist_dir(node)
            self.counters.fsyncdirs += 1
            return 0

    def unlink(self, path: str) -> int:
        with self._op():
            parent, name = self._parent(path)
            node = self._lookup(path)
            if node.kind == "dir":
                raise _error(errno.EISDIR)
            self._unlink(parent, name)
            if node.nlink == 0 and not self._open(node.ino):
                del self.nodes[node.ino]
            self.counters.unlinks += 1
            return 0

    def rename(self, old: str, new: str) -> int:
        with self._op():
            old_parent, old_name = self._parent(old)
            node = self._lookup(old)
            new_parent, new_name = self._parent(new)
            if (new + "/").startswith(old.rstrip("/") + "/") and new != old:
                raise _error(errno.EINVAL)  # into itself
            target_ino = new_parent.entries.get(new_name)
            if target_ino == node.ino:
                return 0
            if target_ino is not None:
                target = self.nodes[target_ino]
                if node.kind == "dir" and target.kind != "dir":
                    raise _error(errno.ENOTDIR)
                if node.kind != "dir" and target.kind == "dir":
                    raise _error(errno.EISDIR)
                if target.kind == "dir" and target.entries:
                    raise _error(errno.ENOTEMPTY)
                self._unlink(new_parent, new_name)
                if target.nlink == 0 and not self._open(target.ino):
                    del self.nodes[target.ino]
            self._unlink(old_parent, old_name)
            self._link(new_parent, new_name, node)
            self.counters.renames += 1
            return 0

    def link(self, target: str, source: str) -> int:
        """`ln source target`: a new name `target` for the inode at `source`."""
        with self._op():
            node = self._lookup(source)
            if node.kind == "dir":
                raise _error(errno.EPERM)
            parent, name = self._parent(target)
            if name in parent.entries:
                raise _error(errno.EEXIST)
            self._link(parent, name, node)
            node.ctime = time.time_ns()
            return 0

    def symlink(self, target: str, source: str) -> int:
        """`ln -s source target`: a symbolic link at `target` holding `source`."""
        with self._op():
            parent, name = self._parent(target)
            if name in parent.entries:
                raise _error(errno.EEXIST)
            node = self._new("symlink", stat.S_IFLNK | 0o777)
            node.target = source
            self._link(parent, name, node)
            return 0

    def readlink(self, path: str) -> str:
        with self._op():
            node = self._lookup(path)
            if node.kind != "symlink":
                raise _error(errno.EINVAL)
            return node.target

    def chmod(self, path: str | None, mode: int) -> int:
        with self._op():
            if path is None:
                raise _error(errno.EBADF)
            node = self._lookup(path)
            node.mode = stat.S_IFMT(node.mode) | (mode & 0o7777)
            node.ctime = time.time_ns()
            node.attrs_changed = True
            return 0

    def chown(self, path: str | None, uid: int, gid: int) -> int:
        with self._op():
            if path is None:
                raise _error(errno.EBADF)
            node = self._lookup(path)
            if uid != -1:
                node.uid = uid
            if gid != -1:
                node.gid = gid
            node.ctime = time.time_ns()
            node.attrs_changed = True
            return 0

    def utimens(self, path: str | None, times: tuple[int, int] | None = None) -> int:
        with self._op():
            if path is None:
                raise _error(errno.EBADF)
            node = self._lookup(path)
            now = time.time_ns()
            node.atime, node.mtime = times if times is not None else (now, now)
            node.ctime = now
            node.attrs_changed = True
            return 0

    def access(self, path: str, amode: int) -> int:
        with self._op():
            self._lookup(path)
            return 0

    def statfs(self, path: str) -> dict[str, int]:
        with self._op(allow_frozen=True):
            used = sum(len(n.data) for n in self.nodes.values()) // 4096
            blocks = 1 << 22  # 16 GiB of 4 KiB blocks
            return {
                "f_bsize": 4096,
                "f_frsize": 4096,
                "f_blocks": blocks,
                "f_bfree": blocks - used,
                "f_bavail": blocks - used,
                "f_files": 1 << 20,
                "f_ffree": (1 << 20) - len(self.nodes),
                "f_namemax": 255,
            }

    # -- the control socket ----------------------------------------------------------------------

    def control(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "ping":
            return {"ok": True, "frozen": self.frozen, "pid": os.getpid()}
        if op == "stats":
            with self._mutex:
                return {"ok": True, "frozen": self.frozen, **self.counters.__dict__}
        if op == "sync":
            with self._op():
                self.sync_all()
            return {"ok": True}
        if op == "cut":
            seed = request.get("seed")
            return self.cut(
                tear=bool(request.get("tear")), seed=None if seed is None else int(seed)
            )
        return {"ok": False, "error": f"unknown op {op!r}"}


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        elif end > start:
            out.append((start, end))
    return out


def serve_control(path: Path, handle: Callable[[dict[str, Any]], dict[str, Any]]) -> socket.socket:
    """Answer JSON lines on a Unix socket at `path`, on a daemon thread."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(8)

    def answer(conn: socket.socket) -> None:
        with conn, conn.makefile("rwb") as stream:
            for line in stream:
                try:
                    reply = handle(json.loads(line))
                except Exception as err:  # a bad request is answered, never fatal
                    reply = {"ok": False, "error": f"{type(err).__name__}: {err}"}
                stream.write(json.dumps(reply).encode() + b"\n")
                stream.flush()

    def loop() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    threading.Thread(target=loop, name="lazyfs-control", daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("backing", type=Path, help="directory holding the durable state")
    parser.add_argument("mountpoint", type=Path, help="where to mount it")
    parser.add_argument("--control", type=Path, required=True, help="Unix socket for commands")
    parser.add_argument("--debug", action="store_true", help="libfuse's debug output on stderr")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="lazyfs %(levelname)s %(message)s")

    import mfusepy  # libfuse3 through ctypes: needs Debian's libfuse3-3 (fuse3)

    fs = PowerCutFS(args.backing)
    server = serve_control(args.control, fs.control)
    try:
        mfusepy.FUSE(
            fs,
            str(args.mountpoint),
            foreground=True,
            nothreads=True,  # one request at a time: a cut falls between two of them
            debug=args.debug,
            fsname="lazyfs",
            subtype="lazyfs",
            default_permissions=True,
            use_ino=True,
            hard_remove=True,  # unlink an open file for real (no .fuse_hidden files)
        )
    finally:
        server.close()
        with contextlib.suppress(FileNotFoundError):
            args.control.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
