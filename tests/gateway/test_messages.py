"""Every JSON message the gateway publishes has one encoder (gateway/wire/messages.py) and a
JSON Schema (docs/schemas/); real messages, and the examples in docs/topics.md, are
checked against it. Data batches have their own spec (docs/wire-format.md)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from gateway.wire.messages import (
    SCHEMAS,
    AlarmMessage,
    AlarmsHealth,
    BufferHealth,
    ClockHealth,
    DenialHealth,
    EvictionHealth,
    Health,
    Identity,
    PipelineHealth,
    ReloadsHealth,
    Reply,
    Status,
    UplinkHealth,
    encode,
)

DOCS = Path(__file__).resolve().parents[2] / "docs"
IDENTITY = Identity("cabinet-0412", "9d24c916ecb403a0", "0.2.0", "106ab88809e8")


def schema(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(
        (DOCS / "schemas" / f"{SCHEMAS[name]}.schema.json").read_text()
    )
    jsonschema.Draft202012Validator.check_schema(loaded)
    return loaded


def check(name: str, payload: bytes) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(payload)
    jsonschema.validate(doc, schema(name), cls=jsonschema.Draft202012Validator)
    return doc


def a_health_report(*, evicting: bool, denied: bool) -> Health:
    return Health(
        identity=IDENTITY,
        ts=1795438727.1,
        uptime_s=5.0,
        clock=ClockHealth(False, 1, 31536000.0),
        buffer=BufferHealth(
            open=True,
            open_error=None,
            batches=3,
            bytes=12000,
            disk_bytes=70000,
            max_bytes=256000000,
            oldest_unsent_age_s=4.2,
            last_seq=17,
            evicted_batches=2 if evicting else 0,
            evicted_bytes=8000 if evicting else 0,
            evicted_by_age_batches=0,
            recovered_from=None,
            salvaged_batches=0,
            unreadable_batches=0,
            corrupt_batches=0,
            corrupt_bytes=0,
            eviction=EvictionHealth(
                "max_bytes", True, 1795438700.0, None, 1, 2, 2, 8000, 1795430000.0, 1795430005.0
            )
            if evicting
            else None,
        ),
        uplink=UplinkHealth(
            state="denied" if denied else "online",
            protocol="5",
            connected_since=1795438722.1,
            connects=1,
            published_batches=14,
            published_history_batches=0,
            published_bytes=3801,
            published_alarms=1,
            last_error=None,
            last_reason_code=None,
            denied=[DenialHealth("city/cabinet-0412/data", 135, "Not authorized", 1795438722.1, 3)]
            if denied
            else [],
            refused_publishes=3 if denied else 0,
            session_takeovers=0,
            takeover_since=None,
        ),
        alarms=AlarmsHealth(1, 0, 0),
        processing={"alarm_events": 1, "invalid_values": 0, "spikes": 2},
        pipeline=PipelineHealth(84, 20, 3, 0, 0, 0),
        reloads=ReloadsHealth(1, 1, "gateway.toml: 1 problem(s)"),
        devices=[
            {
                "name": "pump-station-7",
                "address": "unit 1 at 127.0.0.1:502",
                "state": "degraded",
                "requests": 48,
                "responses": 47,
                "timeouts": 0,
                "crc_errors": 0,
                "framing_errors": 0,
                "malformed": 1,
                "errors": 0,
                "modbus_exceptions": {"2": 1},
                "invalid_values": 0,
                "shed_bytes": 0,
                "readings": 72,
                "last_error": "Modbus exception 2 (illegal data address)",
                "last_latency_ms": 0.8,
                "offline_since": None,
            }
        ],
    )


@pytest.mark.parametrize(
    "status",
    [
        Status("online", IDENTITY, 1795438722.112),
        Status("offline", IDENTITY, 1795438800.0, "stopped"),
        Status("offline", IDENTITY, 1795438800.0, "reconfigured"),
        Status("offline", IDENTITY, 1795438722.112, "connection lost"),
    ],
    ids=["birth", "stopped", "reconfigured", "last-will"],
)
def test_every_status_message_matches_its_schema(status: Status) -> None:
    doc = check("status", encode(status))
    assert doc["state"] == status.state and doc["gateway_id"] == "cabinet-0412"


@pytest.mark.parametrize(("evicting", "denied"), [(False, False), (True, True)])
def test_a_health_report_matches_its_schema(evicting: bool, denied: bool) -> None:
    doc = check("health", encode(a_health_report(evicting=evicting, denied=denied)))
    assert doc["buffer"]["eviction"] is not None if evicting else doc["buffer"]["eviction"] is None


def test_an_alarm_event_matches_its_schema() -> None:
    message = AlarmMessage(
        "cabinet-0412", "9d24c916ecb403a0", 17, "methane-high", "gas-3", "ch4", "raised",
        1795438722113, 25.0, "critical", "gas-3/ch4 = 25 %LEL is above 20 (raised)",
    )  # fmt: skip
    assert check("alarm", encode(message))["seq"] == 17


def test_a_field_the_schema_does_not_know_is_caught() -> None:
    doc = json.loads(encode(Status("online", IDENTITY, 1.0)))
    doc["surprise"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, schema("status"))


def test_messages_are_never_nan_or_infinite_json() -> None:
    with pytest.raises(ValueError):
        encode(Status("online", IDENTITY, float("nan")))


@pytest.mark.parametrize("section", ["status", "health", "alarm"])
def test_the_examples_in_docs_topics_match_their_schemas(section: str) -> None:
    text = (DOCS / "topics.md").read_text()
    part = text.split(f"\n## {section}\n", 1)[1]
    example = re.search(r"```json\n(.*?)```", part, re.DOTALL)
    assert example is not None, f"docs/topics.md has no JSON example under '## {section}'"
    jsonschema.validate(json.loads(example.group(1)), schema(section))


# --- signed commands and their replies ----------------------------------------------------


def test_a_signed_command_envelope_matches_its_schema(tmp_path: Path) -> None:
    from gateway.control import generate_key_pair, load_private_key, new_command, sign

    pair = generate_key_pair(tmp_path, "ops-2026")
    command = new_command(
        "config-apply", "cabinet-0412", {"config": "[gateway]\nid = 'x'\n"}, "ops-2026", now=1.7e9
    )
    doc = check("command", encode(sign(command, load_private_key(pair.private))))
    assert doc["command"]["nonce"] == command.nonce and len(doc["signature"]) == 88


def test_a_command_without_its_nonce_is_caught_by_the_schema() -> None:
    doc = {
        "command": {"verb": "ping", "gateway_id": "gw", "issued_at": 1, "body": {}, "key_id": "k"},
        "signature": "A" * 86 + "==",
    }
    with pytest.raises(jsonschema.ValidationError, match="nonce"):
        jsonschema.validate(doc, schema("command"))


def _replies() -> list[Reply]:
    """A reply of every kind the gateway sends: from the gate itself, as it builds them."""
    from drivers.core.clock import ManualClock
    from gateway.control import Accepted, Refusal, Refused
    from gateway.control.refusals import REFUSAL_CODES
    from gateway.wire.messages import Command

    command = Command("read", "cabinet-0412", 1795438722, "9f" * 16, {"device": "gas-3"}, "ops")
    ts = ManualClock().time()
    accepted = Accepted(command, "cabinet-0412", True, None)
    unsynchronised = Accepted(command, "cabinet-0412", False, "accepted on its new nonce alone")
    replies = [
        accepted.reply("ok", ts=ts, result={"values": {"gas-3/ch4": 1.5}}),
        accepted.reply("failed", ts=ts, reason="gas-3 did not answer within 1s"),
        unsynchronised.reply("ok", ts=ts, result={}),
    ]
    for code in REFUSAL_CODES:
        nonce = None if code == "malformed" else command.nonce
        refused = Refused(Refusal(code, f"why: {code}"), "read", "cabinet-0412", nonce, "ops")
        replies.append(refused.reply(ts=ts))
    return replies


@pytest.mark.parametrize("reply", _replies(), ids=lambda r: r.code or r.note or r.outcome)
def test_every_reply_the_gate_builds_matches_its_schema(reply: Reply) -> None:
    doc = check("reply", encode(reply))
    assert doc["outcome"] == reply.outcome and doc["code"] == reply.code


def test_the_reply_schema_lists_exactly_the_refusal_codes() -> None:
    from gateway.control.refusals import REFUSAL_CODES

    listed = schema("reply")["allOf"][0]["then"]["properties"]["code"]["enum"]
    assert listed == list(REFUSAL_CODES)


def test_a_refusal_without_a_code_is_caught_by_the_schema() -> None:
    doc = json.loads(encode(Reply("refused", "ping", "gw", None, 1.0, reason="no")))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, schema("reply"))
