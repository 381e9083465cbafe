"""`edge-gateway validate`: problems (exit 2) or a summary then warnings (exit 0), and the
same answer as one JSON object for scripts and test rigs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import main
from tests.gateway.configs import CONFIG_DIR, GATEWAY, run_cli, tcp_device

GOOD = GATEWAY + tcp_device(
    '{ name = "p", table = "input", address = 30053 }', extra='timeout = "1s"'
)


def validate(tmp_path: Path, text: str, *options: str) -> tuple[int, str, str]:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    path.chmod(0o600)
    proc = run_cli("validate", *options, str(path))
    return proc.returncode, proc.stdout, proc.stderr


def test_validate_prints_the_summary_then_the_warnings_and_exits_zero(tmp_path: Path) -> None:
    code, out, err = validate(tmp_path, GOOD)
    assert code == 0 and err == ""
    summary, warnings = out.split("2 warning(s):\n")
    assert "OK (config " in summary and "pump: 1 point(s) in 1 request(s)" in summary
    assert warnings.splitlines() == [
        "  devices[0].timeout: 1s is not shorter than poll_interval 1s: a device that does "
        "not answer makes polls late (and on a shared line, its neighbours' polls too); make "
        "timeout shorter than poll_interval",
        "  devices[0].points[0].address: 30053 looks like register 30053 of a datasheet; "
        "addresses here are 0-based: input 52; write register = 30053, or address = 52",
    ]


def test_validate_json_gives_one_object_with_the_summary_and_the_warnings(tmp_path: Path) -> None:
    code, out, _ = validate(tmp_path, GOOD, "--json")
    answer = json.loads(out)
    assert code == 0
    assert set(answer) == {"ok", "config_hash", "problems", "warnings", "summary"}
    assert answer["ok"] is True and answer["problems"] == []
    assert len(answer["config_hash"]) == 12 and len(answer["warnings"]) == 2
    assert answer["summary"]["devices"] == 1 and answer["summary"]["requests_per_cycle"] == 1
    assert answer["summary"]["buses"] == [] and answer["summary"]["line_time"] == {}


def test_validate_json_gives_every_problem_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(GOOD.replace('"127.0.0.1"', '"mqtt://x"').replace("30053", '"1"'))
    assert main(["validate", "--json", str(path)]) == 2
    answer = json.loads(capsys.readouterr().out)
    assert answer == {
        "ok": False,
        "config_hash": None,
        "problems": [
            "devices[0].host: 'mqtt://x' has a scheme (mqtt://); write the name alone and "
            "the port in `port`: x",
            "devices[0].points[0].address: '1' is text; write numbers without quotes: address = 1",
        ],
        "warnings": [],
        "summary": None,
    }


def test_validate_json_of_a_missing_file_is_a_problem_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", "--json", str(tmp_path / "nope.toml")]) == 2
    answer = json.loads(capsys.readouterr().out)
    assert answer["ok"] is False
    assert answer["problems"] == ["cannot read the file: No such file or directory"]


def test_validate_prints_every_problem_on_stderr_and_nothing_on_stdout(tmp_path: Path) -> None:
    code, out, err = validate(tmp_path, GOOD.replace("30053", "400001"))
    assert code == 2 and out == ""
    assert "1 problem(s) in the configuration" in err
    assert 'write register = 400001, or table = "holding", address = 0' in err


def test_every_argument_of_validate_has_help_text(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["validate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "the TOML config file to check" in text
    assert '{"ok", "config_hash", "problems", "warnings", "summary"}' in text


def test_the_example_config_validates_with_no_warning_but_absent_serial_ports(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["validate", "--json", str(CONFIG_DIR / "example.toml")]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert all("does not exist now" in w for w in answer["warnings"]), answer["warnings"]
