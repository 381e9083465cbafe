"""What `edge-gateway run` loads: the daemon's memory and start-up pay for every module
it imports (docs/performance.md, "Memory and start-up"), so the technicians' libraries
never come in, nor pydantic (the config is validated in a child process), and
cryptography (about 11 MiB) only when a trusted key is read.

Each case is a fresh interpreter that imports what `run` imports at start."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from gateway.control.keys import generate_key_pair

DAEMON = """
import json, sys
from pathlib import Path
from gateway.cli import build_parser
build_parser("run")  # `edge-gateway run` builds its own command's parser only
import gateway.app  # what run imports once the config is valid
from gateway.control.keys import TrustedKeys
keys = TrustedKeys(Path(sys.argv[1]))
keys.reload()  # at start when [commands] is on
if sys.argv[2:] == ["check"]:  # a command arrives: its signature is checked
    from gateway.control.signing import verify
    from gateway.wire.messages import Command, CommandEnvelope
    (key,) = [keys.get(name) for name in ["ops"]]
    verify(CommandEnvelope(Command("ping", "g", 1, "0" * 32, {}, "ops"), "AAAA"), key.key)
print(json.dumps({"modules": sorted(sys.modules), "keys": len(keys)}))
"""

NOT_IN_THE_DAEMON = (
    "rich",
    "jsonschema",
    "prometheus_client",
    "gateway.centre",
    # the config is validated in a child process (gateway/loaded.py; tests/gateway/test_loaded.py
    # follows the daemon through loading it and building its drivers)
    "pydantic",
    "pydantic_core",
    "gateway.settings",
    "drivers.registry",
    "importlib.metadata",  # the version is written in gateway/__init__.py (0.8 MiB)
)


def _daemon_modules(keys_dir: Path, *, check_a_signature: bool = False) -> tuple[list[str], int]:
    done = subprocess.run(
        [
            sys.executable,
            "-P",
            "-c",
            DAEMON,
            str(keys_dir),
            *(["check"] if check_a_signature else []),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    found = json.loads(done.stdout)
    return found["modules"], found["keys"]


def _loaded(modules: list[str], package: str) -> bool:
    return any(m == package or m.startswith(package + ".") for m in modules)


def test_the_daemon_loads_no_technician_library_and_no_cryptography_without_keys(
    tmp_path: Path,
) -> None:
    modules, keys = _daemon_modules(tmp_path / "trusted-keys")  # missing: no key trusted
    assert keys == 0
    for package in (*NOT_IN_THE_DAEMON, "cryptography"):
        assert not _loaded(modules, package), f"edge-gateway run imports {package}"
    commands = {m for m in modules if m.startswith("gateway.commands.")}
    assert commands == {"gateway.commands.common", "gateway.commands.run"}


def test_a_trusted_key_brings_cryptography_in_at_the_first_signature_only(
    tmp_path: Path,
) -> None:
    """Keys are read and fingerprinted without it (8 MiB a gateway that is never sent a
    command does not pay); checking a signature loads it."""
    centre, keys_dir = tmp_path / "centre", tmp_path / "trusted-keys"
    keys_dir.mkdir()
    pair = generate_key_pair(centre, "ops")
    (keys_dir / "ops.pub").write_bytes(pair.public.read_bytes())
    modules, keys = _daemon_modules(keys_dir)
    assert keys == 1
    for package in (*NOT_IN_THE_DAEMON, "cryptography"):
        assert not _loaded(modules, package), f"edge-gateway run imports {package}"
    after, _ = _daemon_modules(keys_dir, check_a_signature=True)
    assert _loaded(after, "cryptography")
