"""The trusted-keys directory and key pairs: what loads, what is refused (naming the
file), what is a warning."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.control import KeyFileError, TrustedKeys, generate_key_pair, load_private_key
from gateway.control.keys import fingerprint, openssh_line, private_key_warning, read_public_key

ED = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
RAW_HEX = ED.public_key().public_bytes_raw().hex()


def test_keygen_writes_a_0600_private_key_and_a_pub_the_trust_store_loads(tmp_path: Path) -> None:
    pair = generate_key_pair(tmp_path / "centre", "ops-2026")
    assert stat.S_IMODE(pair.private.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "centre").stat().st_mode) == 0o700
    assert pair.public.read_text().startswith("ssh-ed25519 AAAA")
    assert pair.public.read_text().rstrip().endswith(" ops-2026")
    trusted = TrustedKeys(tmp_path / "centre")
    report = trusted.reload()
    key = trusted.get("ops-2026")
    assert key is not None and key.fingerprint == pair.fingerprint
    assert report.keys == (f"ops-2026 ({pair.fingerprint})",)
    private = load_private_key(pair.private)
    assert private.public_key().public_bytes_raw() == key.key.public_bytes_raw()
    assert private_key_warning(pair.private) is None
    # the .key beside it is a warning: private keys do not belong in a trusted directory
    assert any("looks like a private key" in w for w in report.warnings)


def test_keygen_never_overwrites_a_key(tmp_path: Path) -> None:
    generate_key_pair(tmp_path, "ops")
    before = (tmp_path / "ops.key").read_bytes()
    with pytest.raises(FileExistsError, match="never overwritten"):
        generate_key_pair(tmp_path, "ops")
    assert (tmp_path / "ops.key").read_bytes() == before


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "x" * 65, "café"])
def test_keygen_refuses_a_key_id_that_cannot_name_a_file(tmp_path: Path, name: str) -> None:
    with pytest.raises(KeyFileError, match="not a key id"):
        generate_key_pair(tmp_path, name)


def test_the_fingerprint_is_the_one_ssh_keygen_shows(tmp_path: Path) -> None:
    tool = subprocess.run(["which", "ssh-keygen"], capture_output=True, text=True)
    pub = tmp_path / "k.pub"
    pub.write_text(openssh_line(ED.public_key(), "k") + "\n")
    if tool.returncode != 0:
        pytest.skip("ssh-keygen is not installed here")
    shown = subprocess.run(
        ["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    assert fingerprint(ED.public_key().public_bytes_raw()) in shown


def test_a_raw_hex_key_and_an_openssh_line_are_both_trusted(tmp_path: Path) -> None:
    (tmp_path / "hex.pub").write_text(f"# the operations desk\n\n{RAW_HEX}\n")
    (tmp_path / "ssh.pub").write_text(openssh_line(ED.public_key(), "alice@desk") + "\n")
    trusted = TrustedKeys(tmp_path)
    report = trusted.reload()
    assert report.problems == () and len(trusted) == 2
    hex_key, ssh_key = trusted.get("hex"), trusted.get("ssh")
    assert hex_key is not None and ssh_key is not None
    assert hex_key.fingerprint == ssh_key.fingerprint
    assert hex_key.raw == ssh_key.raw == ED.public_key().public_bytes_raw()
    assert ssh_key.key.public_bytes_raw() == hex_key.raw  # what signatures are checked with


@pytest.mark.parametrize(
    ("blob", "says"),
    [
        (b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x1f" + b"k" * 31, "damaged"),
        (b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + b"k" * 32 + b"\x00", "damaged"),
        (b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x21" + b"k" * 32, "damaged"),
        (b"\x00\x00\x00\x0bssh-ed25519", "damaged"),
        (b"\x00\x00\x00\x07ssh-rsa\x00\x00\x00\x20" + b"k" * 32, "another kind of key"),
    ],
    ids=["short-key", "trailing-byte", "length-past-the-end", "no-key", "other-kind"],
)
def test_an_openssh_line_whose_blob_is_not_one_ed25519_key_is_refused(
    tmp_path: Path, blob: bytes, says: str
) -> None:
    """The blob is read without cryptography (it loads at the first signature): every
    way it can be wrong is still a refusal naming the file."""
    line = "ssh-ed25519 " + base64.b64encode(blob).decode() + " someone"
    (tmp_path / "bad.pub").write_text(line + "\n")
    with pytest.raises(KeyFileError, match=says):
        read_public_key(tmp_path / "bad.pub")


RSA = rsa.generate_private_key(public_exponent=65537, key_size=1024)
REFUSED = {
    "rsa": (
        RSA.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode(),
        "OpenSSH ssh-rsa key; only Ed25519",
    ),
    "pem": (
        ED.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode(),
        "holds 3 lines",
    ),
    "private": (
        "-----BEGIN OPENSSH PRIVATE KEY-----",
        "is a PRIVATE key",
    ),
    "two-keys": (f"{RAW_HEX}\n{RAW_HEX}\n", "holds 2 lines"),
    "empty": ("# nothing here\n", "holds no key"),
    "short-hex": (RAW_HEX[:-2], "not an Ed25519 public key"),
    "damaged": ("ssh-ed25519 AAAAnot-base64", "damaged"),
    "binary": ("\udcff", "not text"),
}


@pytest.mark.parametrize(("content", "says"), REFUSED.values(), ids=REFUSED.keys())
def test_a_key_file_that_is_not_one_ed25519_public_key_is_refused_naming_the_file(
    tmp_path: Path, content: str, says: str
) -> None:
    (tmp_path / "good.pub").write_text(RAW_HEX)
    (tmp_path / "bad.pub").write_bytes(content.encode("utf-8", "surrogateescape"))
    trusted = TrustedKeys(tmp_path)
    report = trusted.reload()
    assert trusted.get("bad") is None and trusted.get("good") is not None  # the rest loads
    (problem,) = report.problems
    assert str(tmp_path / "bad.pub") in problem and says in problem


def test_a_file_name_that_is_not_a_key_id_is_refused(tmp_path: Path) -> None:
    (tmp_path / "two words.pub").write_text(RAW_HEX)
    (problem,) = TrustedKeys(tmp_path).reload().problems
    assert "'two words' is not a key id" in problem


def test_other_files_in_the_directory_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "README").write_text("keys of the operations desk")
    (tmp_path / ".ops.pub.swp").write_text("editor junk")
    (tmp_path / "ops.pub").write_text(RAW_HEX)
    report = TrustedKeys(tmp_path).reload()
    assert report.problems == () and report.warnings == () and len(report.keys) == 1


def test_a_directory_writable_by_others_is_a_warning(tmp_path: Path) -> None:
    (tmp_path / "ops.pub").write_text(RAW_HEX)
    os.chmod(tmp_path, 0o777)  # noqa: PTH101
    os.chmod(tmp_path / "ops.pub", 0o666)  # noqa: PTH101
    trusted = TrustedKeys(tmp_path)
    report = trusted.reload()
    assert len(trusted) == 1  # still trusted: it is a warning, not a refusal
    assert any("is writable by others: anyone on this machine" in w for w in report.warnings)
    assert any("ops.pub is writable by others" in w for w in report.warnings)


def test_a_key_file_readable_by_others_is_fine(tmp_path: Path) -> None:
    (tmp_path / "ops.pub").write_text(RAW_HEX)
    os.chmod(tmp_path / "ops.pub", 0o644)  # noqa: PTH101
    assert TrustedKeys(tmp_path).reload().warnings == ()


def test_a_missing_directory_trusts_no_key_and_says_so(tmp_path: Path) -> None:
    trusted = TrustedKeys(tmp_path / "nowhere")
    report = trusted.reload()
    assert len(trusted) == 0
    assert report.warnings == (
        f"{tmp_path / 'nowhere'} does not exist: no key is trusted, every command will be refused",
    )


def test_an_empty_directory_says_every_command_will_be_refused(tmp_path: Path) -> None:
    (warning,) = TrustedKeys(tmp_path).reload().warnings
    assert "every command will be refused" in warning


def test_reload_trusts_exactly_what_the_directory_holds_now(tmp_path: Path) -> None:
    (tmp_path / "old.pub").write_text(RAW_HEX)
    trusted = TrustedKeys(tmp_path)
    trusted.reload()
    (tmp_path / "old.pub").unlink()
    (tmp_path / "new.pub").write_text(openssh_line(Ed25519PrivateKey.generate().public_key()))
    trusted.reload()
    assert trusted.get("old") is None and trusted.get("new") is not None


def test_an_openssh_private_key_signs_too(tmp_path: Path) -> None:
    path = tmp_path / "id_ed25519"
    path.write_bytes(
        ED.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    assert load_private_key(path).public_key().public_bytes_raw() == bytes.fromhex(RAW_HEX)


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (
            RSA.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            "not an Ed25519 private key",
        ),
        (
            ED.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret"),
            ),
            "is encrypted",
        ),
        (RAW_HEX.encode(), "is not a private key"),
    ],
    ids=["rsa", "encrypted", "a-public-key"],
)
def test_a_private_key_that_cannot_sign_is_refused_with_the_reason(
    tmp_path: Path, content: bytes, says: str
) -> None:
    path = tmp_path / "ops.key"
    path.write_bytes(content)
    with pytest.raises(KeyFileError, match=says):
        load_private_key(path)


def test_a_private_key_others_can_read_is_a_warning(tmp_path: Path) -> None:
    pair = generate_key_pair(tmp_path, "ops")
    os.chmod(pair.private, 0o644)  # noqa: PTH101
    warning = private_key_warning(pair.private)
    assert warning is not None and "chmod 600" in warning


@pytest.mark.parametrize("separator", ["\u00a0", "\x1f", "\u2003"])
def test_an_openssh_line_split_by_anything_but_a_space_or_tab_is_refused(
    tmp_path: Path, separator: str
) -> None:
    """As OpenSSH (and cryptography, which read these files before) split them."""
    good = openssh_line(ED.public_key(), "alice")
    (tmp_path / "bad.pub").write_text(good.replace(" ", separator, 1) + "\n")
    with pytest.raises(KeyFileError, match="damaged"):
        read_public_key(tmp_path / "bad.pub")
    (tmp_path / "tab.pub").write_text(good.replace(" ", "\t") + "\n")
    assert read_public_key(tmp_path / "tab.pub") == ED.public_key().public_bytes_raw()
