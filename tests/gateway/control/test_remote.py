"""The verbs behind the gate (gateway/remote.py): a refused payload gets a refused reply
and changes nothing; the verbs that change the gateway wait for a clock that can judge
a command's age; a body that does not fit its verb is said, not raised."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from drivers.core.clock import ManualClock
from gateway.flashing import Applied
from gateway.remote import VERBS, Remote
from tests.gateway.control.helpers import Signer, make_gate, make_signer


class FakeGateway:
    """What the verbs ask of the gateway, recorded."""

    def __init__(self) -> None:
        self.applied: list[tuple[bytes | None, str]] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.levels: list[tuple[str, float]] = []

    def ping(self) -> dict[str, Any]:
        return {"gateway_id": "cabinet-0412"}

    def health(self) -> dict[str, Any]:
        return {"devices": []}

    async def read_device(self, device: str, point: str | None) -> dict[str, Any]:
        return {"device": device, "readings": []}

    async def apply_config(self, raw: bytes | None, source: str) -> Applied:
        self.applied.append((raw, source))
        return Applied("committed", "8c78a2b0e08c", "ea86936dab59", None, 5.0)

    async def rollback_config(self, to: str | None, source: str) -> Applied:
        return Applied("rolled_back", to, "ea86936dab59", "device 'pump' was online", 5.0)

    def set_log_level(self, level: str, seconds: float) -> dict[str, Any]:
        self.levels.append((level, seconds))
        return {"level": level}

    def event(self, kind: Any, message: str, **data: Any) -> None:
        self.events.append((kind, data))


@pytest.fixture
def signer(tmp_path: Path) -> Signer:
    return make_signer(tmp_path)


def remote(signer: Signer, tmp_path: Path, clock: ManualClock) -> tuple[Remote, FakeGateway]:
    gateway = FakeGateway()
    gate = make_gate(signer, tmp_path / "state", clock, verbs=VERBS)
    return Remote(gate, gateway, log_level_max=3600), gateway


async def test_config_apply_hands_the_config_over_and_replies_with_the_outcome(
    signer: Signer, tmp_path: Path
) -> None:
    clock = ManualClock()
    r, gateway = remote(signer, tmp_path, clock)
    payload = signer.payload(clock, "config-apply", body={"config": "[gateway]\n"})
    reply = json.loads(await r.handle("config-apply", payload))
    assert reply["outcome"] == "ok" and reply["result"]["outcome"] == "committed"
    assert gateway.applied == [(b"[gateway]\n", "command config-apply by ops-2026")]


async def test_a_rolled_back_config_is_a_failed_reply_with_the_reason(
    signer: Signer, tmp_path: Path
) -> None:
    clock = ManualClock()
    r, _ = remote(signer, tmp_path, clock)
    reply = json.loads(await r.handle("config-rollback", signer.payload(clock, "config-rollback")))
    assert reply["outcome"] == "failed"
    assert reply["reason"] == "rolled_back: device 'pump' was online"


async def test_with_the_clock_unsynchronised_only_verbs_that_look_are_carried_out(
    signer: Signer, tmp_path: Path
) -> None:
    clock = ManualClock(synchronised=False)
    r, gateway = remote(signer, tmp_path, clock)
    ping = json.loads(await r.handle("ping", signer.payload(clock, "ping")))
    assert ping["outcome"] == "ok" and ping["note"]  # the reply says the age was not checked
    payload = signer.payload(clock, "config-apply", body={"config": "[gateway]\n"})
    apply = json.loads(await r.handle("config-apply", payload))
    assert apply["outcome"] == "failed" and "not synchronised" in apply["reason"]
    assert gateway.applied == [], "a command of unknown age changed the gateway"


@pytest.mark.parametrize(
    ("verb", "body", "says"),
    [
        ("config-apply", {}, "'config' is missing"),
        ("config-apply", {"config": 7}, "'config' must be a non-empty string"),
        ("read", {"point": "x"}, "'device' is missing"),
        ("log-level", {"level": "loud"}, "level must be one of"),
        ("log-level", {"level": "debug", "for": 99999}, "at most 3600 s"),
        ("log-level", {"level": "debug", "for": True}, "whole number of seconds"),
    ],
)
async def test_a_body_that_does_not_fit_its_verb_is_a_failed_reply_saying_what(
    signer: Signer, tmp_path: Path, verb: str, body: dict[str, Any], says: str
) -> None:
    clock = ManualClock()
    r, gateway = remote(signer, tmp_path, clock)
    reply = json.loads(await r.handle(verb, signer.payload(clock, verb, body=body)))
    assert reply["outcome"] == "failed" and says in reply["reason"], reply
    assert gateway.applied == [] and gateway.levels == []


async def test_a_refused_command_is_heard_of_once_a_minute_per_code_and_changes_nothing(
    signer: Signer, tmp_path: Path
) -> None:
    clock = ManualClock()
    r, gateway = remote(signer, tmp_path, clock)
    for _ in range(5):
        reply = json.loads(await r.handle("reload", b"{not json"))
        assert reply["outcome"] == "refused" and reply["code"] == "malformed"
    assert [kind for kind, _ in gateway.events] == ["command_refused"]
    assert gateway.applied == []
