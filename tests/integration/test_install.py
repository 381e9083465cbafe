"""`.ci/install` installs the gateway for real: its own environment without test or lint
tools, the service user in dialout, the unit, a private config. Run into a temporary
root and checked there."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from rig import REPO

pytestmark = [
    pytest.mark.rig,
    pytest.mark.skipif(os.geteuid() != 0, reason="installing creates a system user: root only"),
    pytest.mark.skipif(shutil.which("useradd") is None, reason="useradd is not installed"),
]


def empty_root(root: Path) -> None:
    """The account files useradd edits, as a fresh system has them."""
    etc = root / "etc"
    etc.mkdir(parents=True)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "group").write_text("root:x:0:\n")
    for name, line in (("shadow", "root:*:19000:0:99999:7:::\n"), ("gshadow", "root:*::\n")):
        (etc / name).write_text(line)
        (etc / name).chmod(0o600)


def install(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / ".ci" / "install"), "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )


def test_install_sets_up_the_service_its_user_its_config_and_a_lean_environment(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    empty_root(root)
    result = install(root)
    assert result.returncode == 0, result.stderr

    venv = root / "opt" / "edge-gateway" / "venv"
    assert os.access(venv / "bin" / "edge-gateway", os.X_OK)
    installed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout.lower()
    assert "edge-gateway==" in installed
    for tool in ("pytest", "hypothesis", "ruff", "mypy", "import-linter", "jsonschema"):
        assert f"{tool}==" not in installed, f"{tool} is a test or lint tool"

    passwd = (root / "etc" / "passwd").read_text().splitlines()
    user = next(line for line in passwd if line.startswith("edge-gateway:"))
    uid = int(user.split(":")[2])
    assert user.endswith(":/var/lib/edge-gateway:/usr/sbin/nologin")
    dialout = next(
        line
        for line in (root / "etc" / "group").read_text().splitlines()
        if line.startswith("dialout:")
    )
    assert "edge-gateway" in dialout.split(":")[3].split(",")

    config = root / "etc" / "edge-gateway" / "gateway.toml"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600 and config.stat().st_uid == uid
    state = root / "var" / "lib" / "edge-gateway"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700 and state.stat().st_uid == uid
    keys = root / "etc" / "edge-gateway" / "trusted-keys"  # root's: a command cannot add keys
    assert stat.S_IMODE(keys.stat().st_mode) == 0o755 and keys.stat().st_uid == 0
    validated = subprocess.run(
        [str(venv / "bin" / "edge-gateway"), "validate", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert validated.returncode == 0, validated.stderr

    unit = root / "etc" / "systemd" / "system" / "edge-gateway.service"
    assert "ExecStart=/opt/edge-gateway/venv/bin/edge-gateway run" in unit.read_text()
    if shutil.which("systemd-analyze"):
        local = tmp_path / "edge-gateway.service"
        local.write_text(unit.read_text().replace("/opt/edge-gateway", str(venv.parent)))
        verify = subprocess.run(
            ["systemd-analyze", "verify", str(local)], capture_output=True, text=True, timeout=60
        )
        assert verify.returncode == 0, verify.stderr

    # A second install keeps the config the technician edited.
    config.write_text(config.read_text() + "\n# edited on site\n")
    again = install(root)
    assert again.returncode == 0, again.stderr
    assert config.read_text().endswith("# edited on site\n")
    assert "kept as it is" in again.stderr
