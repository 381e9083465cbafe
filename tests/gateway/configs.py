"""What the config tests share: a small valid config and the ways to try one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.settings import parse_config

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"

GATEWAY = '[gateway]\nid = "gw-1"\n'


def tcp_device(
    points: str = '{ name = "p", address = 0 }', *, name: str = "pump", extra: str = ""
) -> str:
    """A [[devices]] section: Modbus TCP on 127.0.0.1, with `extra` keys (lines of TOML)."""
    return (
        f'\n[[devices]]\nname = "{name}"\nprotocol = "modbus_tcp"\nhost = "127.0.0.1"\n'
        f"{extra}\npoints = [{points}]\n"
    )


MINIMAL = GATEWAY + tcp_device()
"""One Modbus TCP device with one point: valid, without a warning."""


def problems(text: str) -> list[str]:
    """Every problem `validate` names in `text` (which must have some)."""
    with pytest.raises(ConfigError) as err:
        parse_config(text.encode(), "test.toml")
    return err.value.problems


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`edge-gateway ARGS` in a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=60
    )
