"""The gate: every refusal with its code and a reason, counted and logged once per burst;
accepted commands recorded before they are acted on; nothing in a payload raises."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.core.clock import ManualClock
from gateway.control import Accepted, CommandGate, Refused, sign
from gateway.control.signing import envelope_bytes
from gateway.state import AtomicJSONStorage
from tests.gateway.control.helpers import GATEWAY, Signer, make_gate, make_signer


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def signer(tmp_path: Path) -> Signer:
    return make_signer(tmp_path)


@pytest.fixture
def gate(signer: Signer, tmp_path: Path, clock: ManualClock) -> CommandGate:
    return make_gate(signer, tmp_path / "state", clock, verbs={"ping", "reload"})


def test_a_signed_command_is_accepted_and_recorded_before_it_is_acted_on(
    gate: CommandGate, signer: Signer, clock: ManualClock, tmp_path: Path
) -> None:
    outcome = gate.check("ping", signer.payload(clock))
    assert isinstance(outcome, Accepted) and outcome.time_checked
    nonces = json.loads((tmp_path / "state" / "command-nonces.json").read_text())
    assert outcome.command.nonce in nonces["replay"]["1"]["nonces"]
    audit = json.loads((tmp_path / "state" / "command-audit.json").read_text())
    assert [e["outcome"] for e in audit["audit"].values()] == ["accepted"]
    reply = outcome.reply("ok", ts=clock.time(), result={"pong": True})
    assert reply.outcome == "ok" and reply.nonce == outcome.command.nonce and reply.note is None


def _other_key(signer: Signer, clock: ManualClock) -> bytes:
    return envelope_bytes(sign(signer.command(clock), Ed25519PrivateKey.generate()))


def _tampered(signer: Signer, clock: ManualClock) -> bytes:
    doc = json.loads(signer.payload(clock))
    doc["command"]["body"] = {"device": "pump-7"}
    return json.dumps(doc).encode()


CASES: dict[str, tuple[str, Callable[[Signer, ManualClock], bytes], str, str]] = {
    "bad_signature": ("ping", _other_key, "bad_signature", "does not verify with key 'ops-2026'"),
    "tampered": ("ping", _tampered, "bad_signature", "changed after it was signed"),
    "unknown_key": (
        "ping",
        lambda s, c: s.payload(c, key_id="ops-1999"),
        "unknown_key",
        "no key 'ops-1999' is trusted",
    ),
    "expired": (
        "ping",
        lambda s, c: s.payload(c, issued_at=int(c.time()) - 301),
        "expired",
        "ago",
    ),
    "from_the_future": (
        "ping",
        lambda s, c: s.payload(c, issued_at=int(c.time()) + 301),
        "from_the_future",
        "ahead of the gateway's clock",
    ),
    "wrong_gateway": (
        "ping",
        lambda s, c: s.payload(c, gateway_id="cabinet-0413"),
        "wrong_gateway",
        "signed for gateway 'cabinet-0413'; this is 'cabinet-0412'",
    ),
    "wrong_verb": ("reload", lambda s, c: s.payload(c, "ping"), "wrong_verb", "topic of 'reload'"),
    "unknown_verb": (
        "reboot",
        lambda s, c: s.payload(c, "reboot"),
        "unknown_verb",
        "no verb 'reboot' (it has: ping, reload)",
    ),
    "malformed": ("ping", lambda s, c: b'{"command": 1}', "malformed", "'signature'"),
}


@pytest.mark.parametrize(("verb", "make", "code", "says"), CASES.values(), ids=CASES.keys())
async def test_each_refusal_has_its_code_and_a_reason_and_is_counted(
    gate: CommandGate,
    signer: Signer,
    clock: ManualClock,
    verb: str,
    make: Callable[[Signer, ManualClock], bytes],
    code: str,
    says: str,
) -> None:
    await clock.advance(3600)  # past the horizon of the fresh nonce store
    outcome = gate.check(verb, make(signer, clock))
    assert isinstance(outcome, Refused), outcome
    assert outcome.code == code and says in outcome.refusal.reason
    health = gate.health()
    assert health.refused[code] == 1 and health.accepted == 0
    reply = outcome.reply(ts=clock.time())
    assert reply.outcome == "refused" and reply.code == code and reply.verb == verb
    (audited,) = gate.audit.tail(5)
    assert audited.outcome == "refused" and audited.code == code


def test_a_replay_is_refused_also_after_the_gateway_restarts(
    signer: Signer, tmp_path: Path, clock: ManualClock
) -> None:
    payload = signer.payload(clock)
    first = make_gate(signer, tmp_path / "state", clock)
    assert isinstance(first.check("ping", payload), Accepted)
    again = first.check("ping", payload)
    assert isinstance(again, Refused) and again.code == "replayed"
    restarted = make_gate(signer, tmp_path / "state", clock)
    after = restarted.check("ping", payload)
    assert isinstance(after, Refused) and after.code == "replayed"


def test_a_command_whose_nonce_cannot_be_written_is_not_recorded_and_refused(
    gate: CommandGate, signer: Signer, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(self: AtomicJSONStorage, data: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(AtomicJSONStorage, "write", full)
    outcome = gate.check("ping", signer.payload(clock))
    assert isinstance(outcome, Refused) and outcome.code == "not_recorded"
    assert "No space left on device" in outcome.refusal.reason
    monkeypatch.undo()
    payload = signer.payload(clock)
    assert isinstance(gate.check("ping", payload), Accepted)  # once the disk is back


def test_with_the_clock_unsynchronised_the_reply_says_it_was_accepted_on_its_nonce_alone(
    gate: CommandGate, signer: Signer, clock: ManualClock
) -> None:
    clock.synced = False
    outcome = gate.check("ping", signer.payload(clock))
    assert isinstance(outcome, Accepted) and not outcome.time_checked
    reply = outcome.reply("ok", ts=clock.time())
    assert reply.note is not None and "not synchronised" in reply.note
    (audited,) = gate.audit.tail(1)
    assert not audited.synchronised and audited.reason == reply.note


async def test_a_burst_of_refusals_is_logged_once_then_again_with_a_count(
    gate: CommandGate, signer: Signer, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.control")
    for n in range(20):
        gate.check("ping", _other_key(signer, clock))
        gate.check("ping", b"junk %d" % n)
        await clock.advance(1)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2  # one per code, whatever key the payloads claim
    assert "bad_signature, not authenticated, claims key 'ops-2026'" in lines[0]
    assert "(malformed, not authenticated)" in lines[1]
    await clock.advance(120)  # the burst ends
    gate.check("ping", _other_key(signer, clock))
    assert "(19 more like it since the last such message)" in caplog.records[-1].getMessage()
    assert gate.health().refused["bad_signature"] == 21


async def test_a_refusal_of_a_signed_command_is_logged_per_key(
    tmp_path: Path, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    alice = make_signer(tmp_path, "alice")
    bob = make_signer(tmp_path, "bob")
    gate = make_gate(alice, tmp_path / "state", clock)
    await clock.advance(3600)
    caplog.set_level(logging.WARNING, logger="gateway.control")
    for _ in range(3):
        gate.check("ping", alice.payload(clock, gateway_id="elsewhere"))
        gate.check("ping", bob.payload(clock, gateway_id="elsewhere"))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "signed with key 'alice'" in lines[0] and "signed with key 'bob'" in lines[1]


def test_finish_puts_the_outcome_in_the_audit_tail_on_health(
    gate: CommandGate, signer: Signer, clock: ManualClock
) -> None:
    accepted = gate.check("ping", signer.payload(clock))
    assert isinstance(accepted, Accepted)
    gate.finish(accepted, "failed", "the device did not answer")
    gate.check("ping", b"junk")
    gate.flush()
    health = gate.health().to_json()
    assert [e["outcome"] for e in health["audit_tail"]] == ["failed", "refused"]
    assert health["accepted"] == 1 and health["refused"]["malformed"] == 1
    assert health["trusted_keys"] == 1 and health["nonces_remembered"] == 1


def test_reload_keys_trusts_a_key_installed_since(
    gate: CommandGate, signer: Signer, clock: ManualClock, tmp_path: Path
) -> None:
    newcomer = make_signer(tmp_path / "new", "newcomer")
    (signer.keys_dir / "newcomer.pub").write_bytes(
        (newcomer.keys_dir / "newcomer.pub").read_bytes()
    )
    refused = gate.check("ping", newcomer.payload(clock))
    assert isinstance(refused, Refused) and refused.code == "unknown_key"
    report = gate.reload_keys()
    assert len(report.keys) == 2
    assert isinstance(gate.check("ping", newcomer.payload(clock)), Accepted)


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> tuple[CommandGate, Signer, ManualClock]:
    """One gate for every example hypothesis draws (module-scoped: it is never reset)."""
    directory = tmp_path_factory.mktemp("fuzz")
    clock, signer = ManualClock(), make_signer(directory)
    return make_gate(signer, directory / "state", clock), signer, clock


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(verb=st.text(max_size=40), payload=st.binary(max_size=600))
def test_any_bytes_on_any_topic_give_a_refusal_never_an_exception(
    fuzzed: tuple[CommandGate, Signer, ManualClock], verb: str, payload: bytes
) -> None:
    gate, _, _ = fuzzed
    outcome = gate.check(verb, payload)
    assert isinstance(outcome, Refused)
    assert json.dumps(outcome.reply(ts=0.0).to_json())  # a reply can always be sent


@settings(max_examples=200)
@given(
    field=st.sampled_from(["verb", "gateway_id", "issued_at", "nonce", "body", "key_id"]),
    data=st.data(),
)
def test_a_signed_command_with_any_field_changed_is_refused(
    fuzzed: tuple[CommandGate, Signer, ManualClock], field: str, data: st.DataObject
) -> None:
    gate, signer, clock = fuzzed
    doc = json.loads(signer.payload(clock))
    original = doc["command"][field]
    changed = data.draw(
        st.one_of(st.integers(0, 2**53 - 1), st.text(max_size=20), st.just({"x": 1})).filter(
            lambda value: value != original
        )
    )
    doc["command"][field] = changed
    outcome = gate.check("ping", json.dumps(doc).encode())
    assert isinstance(outcome, Refused)


def test_the_signature_field_must_be_64_bytes_of_base64(
    gate: CommandGate, signer: Signer, clock: ManualClock
) -> None:
    doc = json.loads(signer.payload(clock))
    doc["signature"] = base64.b64encode(bytes(64)).decode()
    outcome = gate.check("ping", json.dumps(doc).encode())
    assert isinstance(outcome, Refused) and outcome.code == "bad_signature"
    assert outcome.gateway_id == GATEWAY
