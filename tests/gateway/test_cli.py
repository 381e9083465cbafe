"""The command line behaves like a good Unix tool: clear errors, documented exit codes,
quiet on a closed pipe, no tracebacks for bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from drivers.core.model import Reading
from gateway.wire import encode_batch

pytestmark = pytest.mark.rig  # real devices, ptys or processes

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "example.toml"


def _cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        input=stdin.decode("latin-1"),
        capture_output=True,
        text=True,
        timeout=60,
    )


def _batch(seq: int) -> bytes:
    return encode_batch("gw", "boot", seq, [Reading("pump", "p", 1_000 + i, i) for i in range(5)])


def test_decode_reports_a_truncated_final_payload_and_exits_1(tmp_path: Path) -> None:
    capture = tmp_path / "capture.bin"
    whole = _batch(1)
    capture.write_bytes(whole + _batch(2)[:-4])
    result = _cli("decode", str(capture))
    assert result.returncode == 1
    assert result.stdout.count("\n") == 5  # the whole batch is still printed
    assert "not a whole batch" in result.stderr and f"from byte {len(whole)}" in result.stderr
    assert "Traceback" not in result.stderr


def test_every_truncation_of_a_payload_is_reported_never_skipped() -> None:
    from gateway.wire import DecodeError, iter_batches

    whole = _batch(1)
    for cut in range(1, len(whole)):
        with pytest.raises(DecodeError):
            list(iter_batches(whole + whole[:cut]))


@pytest.mark.parametrize("what", ["missing", "directory"])
def test_decode_of_a_missing_file_or_a_directory_is_bad_input_without_traceback(
    tmp_path: Path, what: str
) -> None:
    target = tmp_path / "nothing.bin" if what == "missing" else tmp_path
    result = _cli("decode", str(target))
    assert result.returncode == 2
    assert str(target) in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [["decode", "-"], ["validate", str(EXAMPLE)], ["schema"]],
    ids=["decode", "validate", "schema"],
)
def test_a_closed_pipe_ends_the_command_quietly(args: list[str]) -> None:
    stdin = b"".join(_batch(seq) for seq in range(1, 400))
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stdin is not None
    proc.stdout.close()  # the reader (`| head`) is gone before the first line
    try:
        _, stderr = proc.communicate(stdin, timeout=60)
    except BrokenPipeError:  # commands that do not read stdin may exit before we write
        stderr = proc.stderr.read() if proc.stderr else b""
        proc.wait(timeout=60)
    assert proc.returncode == 141
    assert b"Traceback" not in stderr and b"BrokenPipe" not in stderr


@pytest.mark.parametrize("seconds", ["-5", "0", "soon"])
def test_demo_refuses_a_duration_that_is_not_positive(seconds: str) -> None:
    result = _cli("demo", "--seconds", seconds)
    assert result.returncode == 2
    assert "--seconds" in result.stderr and "Traceback" not in result.stderr


def test_every_argument_of_every_command_has_help_text() -> None:
    import argparse

    from gateway.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert commands.choices
    for name, sub in commands.choices.items():
        for action in sub._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, f"edge-gateway {name}: {action.dest} has no help text"


CTRL_C_WHILE_LOADING = """
import os, signal, sys
import gateway.cli

build = gateway.cli.build_parser

def build_interrupted(named):
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the command's modules load
    return build(named)

gateway.cli.build_parser = build_interrupted
sys.exit(gateway.cli.main(sys.argv[1:]))
"""


CTRL_C_WRAPPED_BY_A_LIBRARY = """
import sys
import gateway.cli
import gateway.commands.schema as schema

def run(args):
    try:
        raise KeyboardInterrupt  # Ctrl-C inside a library, say pydantic building a model
    except KeyboardInterrupt as err:
        raise RuntimeError("the library's own error") from err

schema.run = run
sys.exit(gateway.cli.main(sys.argv[1:]))
"""


def _schema_under(script: str) -> subprocess.CompletedProcess[str]:
    """`edge-gateway schema` run by `script` (which patches the CLI first)."""
    return subprocess.run(
        [sys.executable, "-c", script, "schema"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_ctrl_c_that_a_library_turned_into_its_own_error_still_exits_130_quietly() -> None:
    got = _schema_under(CTRL_C_WRAPPED_BY_A_LIBRARY)
    assert got.returncode == 130, got.stderr
    assert "Traceback" not in got.stderr


def test_ctrl_c_while_the_commands_modules_load_exits_130_quietly_without_running_it() -> None:
    got = _schema_under(CTRL_C_WHILE_LOADING)
    assert got.returncode == 130, got.stderr
    assert "Traceback" not in got.stderr
    assert got.stdout == "", "the command ran after the Ctrl-C"
