"""The signed bytes of a command: stable, covering every field, and parsing that never
raises, whatever arrives."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from gateway.control import canonical, parse, sign, signed_bytes, verify
from gateway.control.refusals import Refusal
from gateway.control.signing import MAX_DEPTH, MAX_PAYLOAD, envelope_bytes
from gateway.wire.messages import Command, CommandEnvelope

COMMAND = Command(
    verb="read",
    gateway_id="cabinet-0412",
    issued_at=1795438722,
    nonce="9f2c4be1a0d3e5f60718293a4b5c6d7e",
    body={"points": ["ch4", "h2s"], "device": "gas-3", "ä": 1},
    key_id="ops-2026",
)
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


def test_the_canonical_encoding_is_sorted_compact_utf8_json() -> None:
    expected = (
        b'{"body":{"device":"gas-3","points":["ch4","h2s"],"\xc3\xa4":1},'
        b'"gateway_id":"cabinet-0412","issued_at":1795438722,"key_id":"ops-2026",'
        b'"nonce":"9f2c4be1a0d3e5f60718293a4b5c6d7e","verb":"read"}'
    )
    assert canonical(COMMAND) == expected
    assert signed_bytes(COMMAND) == b"edge-gateway command v1\n" + canonical(COMMAND)


def test_the_signature_is_stable_for_the_same_command_and_key() -> None:
    # Ed25519 is deterministic: the same bytes signed by the same key, the same signature.
    assert sign(COMMAND, KEY).signature == sign(COMMAND, KEY).signature
    assert sign(COMMAND, KEY).signature == (
        "o2F+EijtcIF2jGJXPu00newtQhKwxgDWg1RfKbfXGfMOFWRCwTQGMjp0/4gGC3i6kPOYRu8J7o3563jsvamHCQ=="
    )


def test_a_signed_command_verifies() -> None:
    envelope = sign(COMMAND, KEY)
    parsed = parse(envelope_bytes(envelope))
    assert isinstance(parsed, CommandEnvelope)
    assert parsed == envelope
    assert verify(parsed, KEY.public_key())


def test_how_the_sender_spaced_its_json_does_not_matter() -> None:
    doc = sign(COMMAND, KEY).to_json()
    spaced = json.dumps(doc, indent=4, ensure_ascii=True).encode()  # \u00e4, newlines, spaces
    parsed = parse(spaced)
    assert isinstance(parsed, CommandEnvelope) and verify(parsed, KEY.public_key())


@pytest.mark.parametrize(
    "changes",
    [
        {"verb": "reload"},
        {"gateway_id": "cabinet-0413"},
        {"issued_at": 1795438723},
        {"nonce": "0" * 32},
        {"body": {"points": ["ch4"], "device": "gas-3", "ä": 1}},
        {"body": {"points": ["ch4", "h2s"], "device": "gas-3", "ä": 2}},
        {"key_id": "ops-2027"},
    ],
    ids=["verb", "gateway_id", "issued_at", "nonce", "body-list", "body-value", "key_id"],
)
def test_changing_any_field_breaks_the_signature(changes: dict[str, Any]) -> None:
    signed = sign(COMMAND, KEY)
    altered = CommandEnvelope(replace(COMMAND, **changes), signed.signature)
    assert canonical(altered.command) != canonical(COMMAND)
    assert not verify(altered, KEY.public_key())


def test_a_signature_over_the_json_alone_is_not_a_command_signature() -> None:
    # The context prefix is signed: a key that signed these JSON bytes for some other
    # purpose has not signed a command.
    bare = base64.b64encode(KEY.sign(canonical(COMMAND))).decode()
    assert not verify(CommandEnvelope(COMMAND, bare), KEY.public_key())


def test_another_key_does_not_verify() -> None:
    other = Ed25519PrivateKey.generate()
    assert not verify(sign(COMMAND, other), KEY.public_key())


def _envelope(**command_changes: Any) -> dict[str, Any]:
    doc = sign(COMMAND, KEY).to_json()
    doc["command"].update(command_changes)
    return doc


def _json(doc: Any) -> bytes:
    return json.dumps(doc).encode()


MALFORMED = {
    "not UTF-8": (b"\xff\xfe{}", "not UTF-8"),
    "not JSON": (b"{command:", "not JSON"),
    "an array": (b"[1, 2]", "an array, not a JSON object"),
    "no signature": (_json({"command": _envelope()["command"]}), "lacks 'signature'"),
    "an extra key": (_json({**_envelope(), "v": 2}), "unknown 'v'"),
    "a missing field": (
        _json(
            {
                "command": {k: v for k, v in _envelope()["command"].items() if k != "nonce"},
                "signature": _envelope()["signature"],
            }
        ),
        "lacks 'nonce'",
    ),
    "a key twice": (b'{"command": {}, "command": {}, "signature": ""}', "appears twice"),
    "a fraction": (_json(_envelope(body={"seconds": 2.5})), "not an integer"),
    "an exponent": (b'{"command": {"issued_at": 1e9}}', "not an integer"),
    "NaN": (b'{"command": NaN}', "not a JSON number"),
    "a huge number": (_json(_envelope(issued_at=2**60)), "beyond"),
    "many digits": (b'{"x": ' + b"9" * 5000 + b"}", "digits is beyond"),
    "a boolean time": (_json(_envelope(issued_at=True)), "'issued_at' is a boolean"),
    "a negative time": (_json(_envelope(issued_at=-1)), "before 1970"),
    "a short nonce": (_json(_envelope(nonce="abc")), "32 lowercase hex"),
    "an uppercase verb": (_json(_envelope(verb="PING")), "not a lowercase word"),
    "a topic in the gateway id": (_json(_envelope(gateway_id="gw/#")), "not a gateway id"),
    "a hidden key file": (_json(_envelope(key_id=".ops")), "not a key name"),
    "a body that is a list": (_json(_envelope(body=[])), "not an object"),
    "a signature not base64": (_json({**_envelope(), "signature": "not base64!"}), "not base64"),
    "a short signature": (
        _json({**_envelope(), "signature": base64.b64encode(b"x" * 63).decode()}),
        "holds 63 bytes",
    ),
    "a lone surrogate": (_json(_envelope(body={"name": "\ud800"})), "not Unicode"),
    "deep nesting": (
        _json(_envelope(body={"a": json.loads("[" * MAX_DEPTH + "]" * MAX_DEPTH)})),
        "nested more than",
    ),
    "too large": (b" " * (MAX_PAYLOAD + 1), "a command is at most"),
}


@pytest.mark.parametrize(("payload", "says"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_payloads_are_refused_with_a_reason(payload: bytes, says: str) -> None:
    refusal = parse(payload)
    assert isinstance(refusal, Refusal)
    assert refusal.code == "malformed"
    assert says in refusal.reason


def test_a_payload_above_the_size_bound_is_refused_before_it_is_read() -> None:
    refusal = parse(b" " * 2000, max_bytes=1000)
    assert isinstance(refusal, Refusal) and "2000 bytes" in refusal.reason


def test_deep_nesting_within_the_size_bound_is_refused_not_a_recursion_error() -> None:
    refusal = parse(b"[" * 50_000 + b"]" * 50_000, max_bytes=10**6)
    assert isinstance(refusal, Refusal) and refusal.code == "malformed"


@given(st.binary(max_size=2000))
def test_any_bytes_give_an_envelope_or_a_refusal_never_an_exception(payload: bytes) -> None:
    assert isinstance(parse(payload), CommandEnvelope | Refusal)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=30,
)
FIELD_VALUES = st.fixed_dictionaries(
    {},
    optional={
        "verb": JSON | st.just("ping"),
        "gateway_id": JSON | st.just("cabinet-0412"),
        "issued_at": JSON,
        "nonce": JSON | st.just("0" * 32),
        "body": JSON,
        "key_id": JSON | st.just("ops-2026"),
        "surprise": JSON,
    },
)


@given(FIELD_VALUES, JSON | st.just(sign(COMMAND, KEY).signature))
def test_any_json_shaped_like_a_command_gives_an_envelope_or_a_refusal(
    command: dict[str, Any], signature: Any
) -> None:
    payload = json.dumps({"command": command, "signature": signature}).encode()
    parsed = parse(payload)
    if isinstance(parsed, CommandEnvelope):
        assert not verify(parsed, KEY.public_key()) or parsed.command == COMMAND


def test_the_schema_file_of_the_command_names_the_same_context(tmp_path: Path) -> None:
    schema = (Path(__file__).resolve().parents[3] / "docs/schemas/command.schema.json").read_text()
    assert "edge-gateway command v1" in schema
