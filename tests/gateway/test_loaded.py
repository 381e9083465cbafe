"""The daemon's config comes from a child process as records (gateway/loaded.py): the
same verdicts as validating in place, the same values, and nothing of pydantic."""

from __future__ import annotations

import asyncio
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import gateway.loaded
from drivers.base import discard
from gateway.build import summarize
from gateway.errors import ConfigError
from gateway.loaded import ConfigRecord, ValidatorFailed, load_apart, load_apart_async
from gateway.pipeline.processing import compile_processing
from gateway.settings import load_config, parse_config
from tests.gateway.configs import CONFIG_DIR, MINIMAL

EXAMPLE = CONFIG_DIR / "example.toml"  # Modbus TCP and RTU, a serial line, processing, alarms


def same(record: Any, model: Any, where: str = "config") -> None:
    """`record` holds what `model` holds, field by field, all the way down."""
    if isinstance(model, BaseModel):
        assert isinstance(record, ConfigRecord), where
        assert repr(record).startswith(type(model).__name__ + "("), where
        for name in type(model).model_fields:
            same(getattr(record, name), getattr(model, name), f"{where}.{name}")
    elif isinstance(model, list | tuple):
        assert type(record) is type(model) and len(record) == len(model), where
        for i, (r, m) in enumerate(zip(record, model, strict=True)):
            same(r, m, f"{where}[{i}]")
    elif isinstance(model, dict):
        assert record.keys() == model.keys(), where
        for key in model:
            same(record[key], model[key], f"{where}.{key}")
    else:
        assert record == model and type(record) is type(model), where


def test_the_child_gives_the_same_config_as_validating_in_place(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    shutil.copy(EXAMPLE, path)
    path.chmod(0o644)  # readable by all: a warning load_config adds
    here, apart = load_config(path), load_apart(path)
    same(apart.config, here.config)
    assert (apart.source, apart.sha256, apart.config_hash) == (
        here.source,
        here.sha256,
        here.config_hash,
    )
    assert apart.warnings == here.warnings and apart.warnings
    assert (
        apart.plugins
        == here.plugins
        == {
            "modbus_tcp": "modbus",
            "modbus_rtu_over_tcp": "modbus",
            "modbus_rtu": "modbus",
            "serial_line": "serial_line",
        }
    )
    assert apart.devices_meta == here.devices_meta
    assert apart.devices_meta[0]["name"] == here.config.devices[0].name


def test_records_build_the_same_drivers_and_processing_as_the_models() -> None:
    here = load_config(EXAMPLE)
    apart = load_apart(EXAMPLE)
    assert summarize(apart.config).as_dict() == summarize(here.config).as_dict()
    with_records = compile_processing(apart.config, discard, lambda e: None)
    with_models = compile_processing(here.config, discard, lambda e: None)
    assert with_records.processors.keys() == with_models.processors.keys()
    assert [p.spec for p in with_records.processors.values()] == [
        p.spec for p in with_models.processors.values()
    ]
    assert with_records.alarms.keys() == with_models.alarms.keys()


def test_a_config_with_problems_is_refused_with_the_same_words(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(MINIMAL.replace('id = "', 'id = "bad id ', 1) + "\n[batch]\nmax_age = -1\n")
    with pytest.raises(ConfigError) as here:
        load_config(path)
    with pytest.raises(ConfigError) as apart:
        load_apart(path)
    assert apart.value.problems == here.value.problems and len(here.value.problems) == 2
    assert str(apart.value) == str(here.value)
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_apart(tmp_path / "missing.toml")


def test_raw_bytes_are_validated_as_parse_config_does() -> None:
    raw = MINIMAL.encode()
    apart = load_apart("unused.toml", raw, "the config from apply")
    assert apart.source == "the config from apply"
    assert apart.sha256 == parse_config(raw).sha256
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_apart("unused.toml", b"[gateway", "the config from apply")


def test_a_record_reads_like_its_model_and_never_changes() -> None:
    record = load_apart("unused.toml", MINIMAL.encode(), "x").config
    assert record.gateway.id == parse_config(MINIMAL.encode()).config.gateway.id
    with pytest.raises(AttributeError, match="GatewaySectionConfig has no field 'idd'"):
        _ = record.gateway.idd
    with pytest.raises(AttributeError, match="it never changes"):
        record.gateway.id = "other"
    again = load_apart("unused.toml", MINIMAL.encode(), "x").config
    assert again == record and hash(again) == hash(record)
    assert again.mqtt != record.gateway
    assert pickle.loads(pickle.dumps(record)) == record


def test_the_daemon_unpickles_nothing_but_config_records(monkeypatch: pytest.MonkeyPatch) -> None:
    """A child that answered with a pickle that runs code is refused, not obeyed."""
    evil = pickle.dumps(subprocess.Popen.__new__)  # any callable outside the allowed set
    monkeypatch.setattr(gateway.loaded, "_CHILD", f"import sys; sys.stdout.buffer.write({evil!r})")
    with pytest.raises(ValidatorFailed, match=r"gave no answer .*holds no builtins"):
        load_apart(EXAMPLE)


@pytest.mark.parametrize(
    ("child", "said"),
    [
        ("import sys; print('boom', file=sys.stderr); sys.exit(5)", "ended with exit 5: boom"),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "ended with signal 9"),
        ("pass", "gave no answer"),
    ],
)
def test_a_child_that_gives_no_verdict_is_a_validator_failure_not_a_config_error(
    monkeypatch: pytest.MonkeyPatch, child: str, said: str
) -> None:
    monkeypatch.setattr(gateway.loaded, "_CHILD", child)
    with pytest.raises(ValidatorFailed, match=said):
        load_apart(EXAMPLE)


def test_the_process_that_loads_apart_never_imports_pydantic() -> None:
    script = (
        "import sys\n"
        "from gateway.loaded import load_apart\n"
        "from gateway.build import build_drivers\n"
        "from gateway.pipeline.processing import compile_processing\n"
        "from drivers.base import discard\n"
        f"loaded = load_apart({str(EXAMPLE)!r})\n"
        "build_drivers(loaded.config, discard, loaded.plugins)\n"
        "compile_processing(loaded.config, discard, print)\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    modules = done.stdout.split()
    assert "drivers.modbus.driver" in modules and "drivers.serial_line.driver" in modules
    for kept_out in ("pydantic", "pydantic_core", "gateway.settings", "drivers.registry"):
        assert not any(m == kept_out or m.startswith(kept_out + ".") for m in modules), kept_out
    assert not [m for m in modules if m.endswith((".config", "serial_port_config"))]


def test_paths_pickled_by_python_3_13_are_taken_too() -> None:
    """Python 3.13 pickles a path as pathlib._local.PosixPath: every config has one
    (buffer.path), so refusing it would stop every start."""
    data = pickle.dumps(Path("/var/lib/edge-gateway/buffer.db"), protocol=2)
    assert b"cpathlib\nPosixPath\n" in data
    as_313 = data.replace(b"cpathlib\nPosixPath\n", b"cpathlib._local\nPosixPath\n")
    assert gateway.loaded._Unpickler(as_313).load() == Path("/var/lib/edge-gateway/buffer.db")


def test_an_answer_naming_a_class_that_is_not_there_is_a_validator_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """New code on disk and a reload: the child may name what the running daemon lacks."""
    missing = b"\x80\x02cgateway.loaded\nNope\nq\x00."
    monkeypatch.setattr(
        gateway.loaded, "_CHILD", f"import sys; sys.stdout.buffer.write({missing!r})"
    )
    with pytest.raises(ValidatorFailed, match="gave no answer"):
        load_apart(EXAMPLE)


def test_the_child_does_not_import_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "tomllib.py").write_text("raise SystemExit(7)\n")
    monkeypatch.chdir(tmp_path)
    assert load_apart(EXAMPLE).config.devices


async def test_a_reload_cancelled_while_validating_kills_the_child(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The service stopping during a reload does not wait for (or leave behind) the child."""
    marker = f"validator-{os.getpid()}-{time.monotonic_ns()}"
    monkeypatch.setattr(gateway.loaded, "_CHILD", f"import time; time.sleep(60)  # {marker}")
    reload = asyncio.create_task(load_apart_async(EXAMPLE, b"", "test"))
    deadline = time.monotonic() + 20
    while not _processes_with(marker):
        assert time.monotonic() < deadline, "the child never started"
        await asyncio.sleep(0.05)
    started = time.monotonic()
    reload.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reload
    assert time.monotonic() - started < 5
    assert not _processes_with(marker)


def _processes_with(marker: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker.encode() in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def test_validating_a_config_without_a_serial_bus_does_not_load_pymodbus() -> None:
    """The child validates at every start: only a bus's load estimate needs the drivers
    (and pymodbus, 40 ms here, a quarter of a second on a Pi 4)."""
    script = (
        "import sys\n"
        "from gateway.settings import as_records, parse_config\n"
        f"as_records(parse_config({MINIMAL.encode()!r}))\n"
        "print('pymodbus' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "False"
