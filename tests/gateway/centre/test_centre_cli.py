"""`tail` and `watch` refuse what cannot work before they connect: exit 2 and one sentence."""

from __future__ import annotations

import pytest

from gateway.cli import main


@pytest.mark.parametrize(
    ("words", "says"),
    [
        (["tail", "--share", "g", "--completeness"], "--completeness needs every batch"),
        (["tail", "--completeness", "--format", "influx"], "--completeness prints JSON"),
        (["tail", "--measurement", "m"], "go with --format influx"),
        (["tail", "--empty", "skip"], "go with --format influx"),
        (["tail", "--share", "a/b"], "a group name holds no"),
        (["tail", "--gateway", "cab+1"], "--gateway takes a gateway id"),
        (["tail", "--broker", "host:99999"], "the port must be a number"),
        (["watch", "--broker", ":1883"], "names no host"),
    ],
)
def test_what_cannot_work_is_refused_with_a_sentence_and_exit_2(
    words: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if "--broker" not in words:
        words = [*words, "--broker", "127.0.0.1"]
    assert main(words) == 2
    out, err = capsys.readouterr()
    assert out == "" and says in err and err.count("\n") == 1
    assert err.startswith(f"edge-gateway {words[0]}: ")


@pytest.mark.parametrize("command", ["tail", "watch"])
def test_a_duration_without_a_unit_is_a_usage_error(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main([command, "--broker", "127.0.0.1", "--for", "30"])
    assert stopped.value.code == 2
    assert "is not a duration" in capsys.readouterr().err
