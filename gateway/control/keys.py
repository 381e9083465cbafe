"""Keys: the public keys a gateway trusts, and the key pairs the centre signs with.

**Trusted keys** (on the gateway): a directory, `/etc/edge-gateway/trusted-keys/` by
default, holding one public key per file named `<key_id>.pub`; a command names its key
by that id. A file holds one key, on one line (blank lines and `#` comments aside), as

- 64 hexadecimal digits: the raw 32-byte Ed25519 public key, or
- an OpenSSH public key line, `ssh-ed25519 AAAA... [comment]` (what `command keygen`
  writes, and what `ssh-keygen -t ed25519` makes: an operator may sign with the key
  they already have).

Anything else (an RSA or ECDSA key, a PEM file, two keys, a private key) is refused
with a message naming the file, and the other files still load. Other names in the
directory are ignored, except `*.key`: a private key has no business on a gateway, and
that is a warning. Public keys may be readable by anyone; a directory (or a key file)
that others may *write* is a warning, since whoever can write there can install a key.
A missing or empty directory trusts no key: every command is refused as `unknown_key`.
`TrustedKeys.reload()` reads the directory again (at start and on SIGHUP) and swaps
the whole set at once.

**Key pairs** (at the centre): `generate_key_pair` writes `<key_id>.key` (the private
key, PKCS#8 PEM, unencrypted, mode 0600) and `<key_id>.pub` (the OpenSSH line), never
over an existing file. `load_private_key` reads PKCS#8 PEM or an unencrypted OpenSSH
private key.

Fingerprints are written as OpenSSH shows them (`SHA256:` and unpadded base64 of the
key's SHA-256), so `ssh-keygen -lf KEY.pub` shows the same.

A trusted key is read as its 32 raw bytes (the hex, or the key inside the OpenSSH
line's base64 blob, RFC 4253's `string "ssh-ed25519", string key`) and fingerprinted
with hashlib: `cryptography` (about 8 MiB of the daemon's memory) loads at the first
signature a command asks to check (`TrustedKey.key`), not at start.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import logging
import os
import re
import stat
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from drivers.core.words import shown
from gateway.control.signing import KEY_ID_PATTERN

# cryptography (about 8 MiB of memory and 50 ms) is imported where a signature is made
# or checked, or a key pair made: a gateway loads it at its first signed command.
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

log = logging.getLogger("gateway.control.keys")

DEFAULT_TRUSTED_KEYS = Path("/etc/edge-gateway/trusted-keys")
MAX_KEY_FILE = 16 * 1024  # bytes; a public key line is under 100
_HEX_KEY = re.compile(r"[0-9A-Fa-f]{64}")


class KeyFileError(ValueError):
    """A key file that cannot be used; the message names the file and says why."""


@dataclass(frozen=True)
class TrustedKey:
    key_id: str
    raw: bytes  # the 32 bytes of the Ed25519 public key
    fingerprint: str  # SHA256:..., as ssh-keygen -l shows it
    path: Path

    @cached_property
    def key(self) -> Ed25519PublicKey:
        """The key to check a signature with (cryptography loads here, once)."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        return Ed25519PublicKey.from_public_bytes(self.raw)


@dataclass(frozen=True, slots=True)
class TrustReport:
    """What a (re)load found: the keys trusted now, the files refused, what to fix."""

    directory: Path
    keys: tuple[str, ...]  # "ops-2026 (SHA256:...)", in name order
    problems: tuple[str, ...]  # files refused, each naming the file
    warnings: tuple[str, ...]


class TrustedKeys:
    """The public keys a gateway trusts, from one directory (module docstring)."""

    def __init__(self, directory: Path = DEFAULT_TRUSTED_KEYS) -> None:
        self.directory = directory
        self._keys: dict[str, TrustedKey] = {}
        self.report = TrustReport(directory, (), (), ())

    def get(self, key_id: str) -> TrustedKey | None:
        return self._keys.get(key_id)

    def __len__(self) -> int:
        return len(self._keys)

    def reload(self) -> TrustReport:
        """Read the directory again and trust exactly what it holds now; log what it found."""
        keys, problems, warnings = _read_directory(self.directory)
        self._keys = keys
        listed = tuple(f"{k.key_id} ({k.fingerprint})" for k in sorted(keys.values(), key=_id))
        self.report = TrustReport(self.directory, listed, tuple(problems), tuple(warnings))
        for line in (*problems, *warnings):
            log.warning("%s", line)
        log.info("trusted command keys in %s: %s", self.directory, ", ".join(listed) or "none")
        return self.report


def _id(key: TrustedKey) -> str:
    return key.key_id


def _read_directory(directory: Path) -> tuple[dict[str, TrustedKey], list[str], list[str]]:
    keys: dict[str, TrustedKey] = {}
    problems: list[str] = []
    warnings: list[str] = []
    try:
        mode = directory.stat().st_mode
        names = sorted(path.name for path in directory.iterdir())
    except FileNotFoundError:
        warnings.append(
            f"{directory} does not exist: no key is trusted, every command will be refused"
        )
        return keys, problems, warnings
    except OSError as err:
        problems.append(f"{directory}: cannot be read ({err.strerror or err}): no key is trusted")
        return keys, problems, warnings
    if mode & stat.S_IWOTH:
        warnings.append(
            f"{directory} is writable by others: anyone on this machine could install a key "
            f"(chmod o-w {directory})"
        )
    for name in names:
        path = directory / name
        if name.startswith(".") or not path.is_file():
            continue
        if name.endswith(".key"):
            warnings.append(
                f"{path} looks like a private key: private keys stay at the centre, never on "
                "a gateway; remove it"
            )
            continue
        if not name.endswith(".pub"):
            continue
        key_id = name.removesuffix(".pub")
        if KEY_ID_PATTERN.fullmatch(key_id) is None:
            problems.append(
                f"{path}: {shown(key_id)} is not a key id (letters, digits, '_', '-', '.', "
                "at most 64): the file is not loaded"
            )
            continue
        try:
            key = read_public_key(path)
        except KeyFileError as err:
            problems.append(f"{err}: the file is not loaded")
            continue
        with contextlib.suppress(OSError):
            if path.stat().st_mode & stat.S_IWOTH:
                warnings.append(f"{path} is writable by others: anyone could replace the key")
        keys[key_id] = TrustedKey(key_id, key, fingerprint(key), path)
    if not keys and not problems:
        warnings.append(f"{directory} holds no <key_id>.pub: every command will be refused")
    return keys, problems, warnings


def read_public_key(path: Path) -> bytes:
    """The one Ed25519 public key in `path` (its 32 bytes), or KeyFileError saying why not."""
    lines = [
        line.strip()
        for line in _read_text(path).splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if len(lines) != 1:
        found = "no key" if not lines else f"{len(lines)} lines"
        raise KeyFileError(f"{path}: holds {found}; a key file holds one public key on one line")
    return parse_public_key(lines[0], path)


def parse_public_key(line: str, path: Path) -> bytes:
    """A key line, 64 hex digits or `ssh-ed25519 AAAA... [comment]`: the key's 32 bytes."""
    if _HEX_KEY.fullmatch(line):
        return bytes.fromhex(line)
    kind = line.split(maxsplit=1)[0]
    if kind == "ssh-ed25519":
        parts = _SSH_LINE.fullmatch(line)  # as OpenSSH writes it: space or tab between
        fields = _ssh_strings(parts[1]) if parts is not None else None
        if fields is None or len(fields) != 2:
            raise KeyFileError(f"{path}: the ssh-ed25519 line is damaged (its base64)")
        if fields[0] != SSH_ED25519:
            raise KeyFileError(f"{path}: says ssh-ed25519 but holds another kind of key")
        if len(fields[1]) != ED25519_KEY_BYTES:
            raise KeyFileError(f"{path}: the ssh-ed25519 line is damaged (its base64)")
        return fields[1]
    expected = "expected 64 hex digits or an OpenSSH 'ssh-ed25519 AAAA...' line"
    if "PRIVATE KEY" in line:
        raise KeyFileError(f"{path}: is a PRIVATE key; a gateway needs only the public key (.pub)")
    if kind.startswith(("ssh-", "ecdsa-", "sk-")):
        raise KeyFileError(f"{path}: is an OpenSSH {kind} key; only Ed25519 keys sign commands")
    if line.startswith("-----BEGIN"):
        raise KeyFileError(f"{path}: is a PEM file; {expected}")
    raise KeyFileError(f"{path}: is not an Ed25519 public key ({expected}, found {shown(line)})")


SSH_ED25519 = b"ssh-ed25519"
_SSH_LINE = re.compile(r"ssh-ed25519[ \t]+(\S+)(?:[ \t].*)?", re.ASCII)
ED25519_KEY_BYTES = 32


def _ssh_strings(text: str) -> list[bytes] | None:
    """The strings of an OpenSSH public key blob (RFC 4253: a 4-byte big-endian length,
    then the bytes, again and again), or None when it is not one."""
    try:
        blob = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    strings, at = [], 0
    while at < len(blob):
        size = int.from_bytes(blob[at : at + 4], "big")
        if at + 4 + size > len(blob):
            return None
        strings.append(blob[at + 4 : at + 4 + size])
        at += 4 + size
    return strings


def _ssh_blob(raw: bytes) -> bytes:
    return b"".join(len(s).to_bytes(4, "big") + s for s in (SSH_ED25519, raw))


def _read_text(path: Path) -> str:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_KEY_FILE + 1)
    except OSError as err:
        raise KeyFileError(f"{path}: cannot be read ({err.strerror or err})") from None
    if len(data) > MAX_KEY_FILE:
        raise KeyFileError(f"{path}: is larger than {MAX_KEY_FILE} bytes; not a key file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise KeyFileError(f"{path}: is not text; {path.name} should hold one key line") from None


def fingerprint(raw: bytes) -> str:
    """`SHA256:<unpadded base64>` of the key's OpenSSH blob, as `ssh-keygen -l` prints it
    (`raw`: the key's 32 bytes)."""
    digest = hashlib.sha256(_ssh_blob(raw)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def openssh_line(key: Ed25519PublicKey, comment: str = "") -> str:
    from cryptography.hazmat.primitives import serialization

    line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return f"{line.decode('ascii')} {comment}".rstrip()


# --- the centre's side: key pairs ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyPair:
    key_id: str
    private: Path
    public: Path
    fingerprint: str


def generate_key_pair(directory: Path, key_id: str) -> KeyPair:
    """Write `<key_id>.key` (0600) and `<key_id>.pub` in `directory` (made 0700 if missing).

    Raises KeyFileError for a key id that cannot name a file, FileExistsError when
    either file exists (a key is never overwritten), OSError when the directory is not
    writable."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if KEY_ID_PATTERN.fullmatch(key_id) is None:
        raise KeyFileError(
            f"{shown(key_id)} is not a key id: letters, digits, '_', '-', '.', at most 64, "
            "not starting with '.'"
        )
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private = directory / f"{key_id}.key"
    public = directory / f"{key_id}.pub"
    for path in (private, public):
        if path.exists():
            raise FileExistsError(f"{path} exists; a key is never overwritten")
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_new(private, pem, 0o600)
    try:
        _write_new(public, (openssh_line(key.public_key(), key_id) + "\n").encode(), 0o644)
    except BaseException:
        private.unlink()
        raise
    return KeyPair(key_id, private, public, fingerprint(key.public_key().public_bytes_raw()))


def _write_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    path.chmod(mode)  # whatever the umask took away or added


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in `path` (PKCS#8 PEM or OpenSSH), or KeyFileError."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    text = _read_text(path).encode("utf-8")
    try:
        if b"BEGIN OPENSSH PRIVATE KEY" in text:
            key: object = serialization.load_ssh_private_key(text, password=None)
        else:
            key = serialization.load_pem_private_key(text, password=None)
    except TypeError:
        raise KeyFileError(
            f"{path}: is encrypted; use an unencrypted key (keep it in a 0600 file)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFileError(
            f"{path}: is not a private key (expected what `command keygen` writes: PKCS#8 PEM, "
            "or an OpenSSH private key)"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: is a {type(key).__name__}, not an Ed25519 private key")
    return key


def private_key_warning(path: Path) -> str | None:
    """A sentence when others than the owner may read the private key file, else None."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if mode & 0o077:
        return f"{path} can be read by others (mode {stat.S_IMODE(mode):04o}): chmod 600 {path}"
    return None
