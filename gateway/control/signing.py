"""Signed commands: the bytes that are signed, signing, parsing and verifying. Pure.

A command (`gateway.wire.messages.Command`) is six fields: `verb`, `gateway_id`,
`issued_at` (unix seconds, an integer), `nonce` (16 random bytes, 32 lowercase hex
digits), `body` (a JSON object: the verb's arguments) and `key_id` (the signer's key).
On the wire, on `{prefix}/{gateway_id}/cmd/{verb}`, it travels in an envelope:

    {"command": {"verb": "ping", "gateway_id": "cabinet-0412", "issued_at": 1795438722,
                 "nonce": "9f2c…(32 hex)", "body": {}, "key_id": "ops-2026"},
     "signature": "<base64 of 64 bytes>"}

**What is signed** (Ed25519, RFC 8032, through PyCA `cryptography`) is exactly

    b"edge-gateway command v1\\n" + canonical(command)

where `canonical` is the command object as UTF-8 JSON with its keys (at every level)
sorted by Unicode code point, no whitespace at all (separators `,` and `:`), strings
with only `"` `\\` and control characters escaped (`\\n`-style where JSON has a short
form, `\\u00xx` lowercase otherwise) and every other character as itself, integers in
plain decimal. In Python: `json.dumps(doc, sort_keys=True, separators=(",", ":"),
ensure_ascii=False).encode()`. With the rules below (integers only, keys that are
ASCII in practice) this is RFC 8785 (JSON Canonicalization Scheme) output, so a centre
written in another language can produce the same bytes with a JCS library.

Why it is unambiguous: a JSON text parses to exactly one value, and this encoding
writes each value one way (sorted keys, fixed separators and escapes, no fractions or
exponents). So two different commands never give the same bytes, and the field names
are signed along with the values: nothing can be moved from one field to another,
dropped or added, as it could in a concatenation like `verb|gateway|nonce`. The
signature covers the decoded value, not the bytes received, so how the sender spaced
its JSON does not matter. The prefix names the scheme and its version (a key used for
something else can never have signed a command by accident) and ends in a newline that
JSON cannot begin with.

**What a well-formed envelope is** (anything else is refused as `malformed`, with the
reason): UTF-8 JSON of at most `MAX_PAYLOAD` bytes; exactly the keys `command` and
`signature`; the command exactly the six keys above; no key twice in any object (two
parsers could otherwise disagree on what was signed); no numbers but integers of at
most 2**53 - 1 in size (one spelling each, and exact in every language: send a fraction
as a string, "2.5s"); no text that is not Unicode (lone surrogate escapes); nesting at
most `MAX_DEPTH` deep. `verb` matches `VERB_PATTERN` (a topic level), `gateway_id` and
`key_id` are names like the config's (`key_id` also names a file, so it does not start
with a dot), `signature` is padded base64 of exactly 64 bytes.

`parse` never raises: whatever bytes arrive, the answer is an envelope or a `Refusal`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
from typing import TYPE_CHECKING, Any

from drivers.core.words import shown
from gateway.control.refusals import Refusal
from gateway.wire.messages import Command, CommandEnvelope, encode

if TYPE_CHECKING:  # cryptography is imported where a signature is checked (keys.py says why)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

SIGNING_CONTEXT = b"edge-gateway command v1\n"
MAX_PAYLOAD = 512 * 1024  # bytes: room for a config file in a config-apply body
MAX_DEPTH = 32  # levels of nesting in the envelope
MAX_INTEGER = 2**53 - 1  # exact in every JSON implementation (IEEE double)
SIGNATURE_BYTES = 64
NONCE_BYTES = 16

VERB_PATTERN = re.compile(r"[a-z][a-z0-9-]{0,31}")
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # as [gateway] id
KEY_ID_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")  # a file name, not hidden
NONCE_PATTERN = re.compile(r"[0-9a-f]{32}")
COMMAND_FIELDS = ("verb", "gateway_id", "issued_at", "nonce", "body", "key_id")


def canonical(command: Command) -> bytes:
    """The canonical encoding of a command (the module docstring states it exactly)."""
    return json.dumps(
        command.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


def signed_bytes(command: Command) -> bytes:
    """The exact bytes the Ed25519 signature is over."""
    return SIGNING_CONTEXT + canonical(command)


def new_command(
    verb: str, gateway_id: str, body: dict[str, Any], key_id: str, *, now: float
) -> Command:
    """A command issued at `now` (unix time), with a fresh random nonce."""
    return Command(verb, gateway_id, int(now), secrets.token_hex(NONCE_BYTES), body, key_id)


def sign(command: Command, key: Ed25519PrivateKey) -> CommandEnvelope:
    signature = key.sign(signed_bytes(command))
    return CommandEnvelope(command, base64.b64encode(signature).decode("ascii"))


def envelope_bytes(envelope: CommandEnvelope) -> bytes:
    """The payload to publish."""
    return encode(envelope)


def verify(envelope: CommandEnvelope, key: Ed25519PublicKey) -> bool:
    """Whether the envelope's signature is `key`'s over the whole command."""
    from cryptography.exceptions import InvalidSignature

    try:
        signature = base64.b64decode(envelope.signature, validate=True)
        key.verify(signature, signed_bytes(envelope.command))
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


class _Malformed(ValueError):
    """Raised inside parsing with the reason in words."""


def parse(payload: bytes, *, max_bytes: int = MAX_PAYLOAD) -> CommandEnvelope | Refusal:
    """The envelope in `payload`, checked field by field, or why it is not one."""
    try:
        return _parse(payload, max_bytes)
    except _Malformed as err:
        return Refusal("malformed", str(err))


def _parse(payload: bytes, max_bytes: int) -> CommandEnvelope:
    if len(payload) > max_bytes:
        raise _Malformed(f"the payload is {len(payload)} bytes; a command is at most {max_bytes}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _Malformed(f"the payload is not UTF-8 text (byte {err.start} is not)") from None
    try:
        doc = json.loads(
            text,
            object_pairs_hook=_object_without_repeats,
            parse_float=_no_fraction,
            parse_int=_bounded_int,
            parse_constant=_no_constant,
        )
    except _Malformed:
        raise
    except RecursionError:
        raise _Malformed(f"the JSON is nested more than {MAX_DEPTH} levels deep") from None
    except json.JSONDecodeError as err:  # its message never quotes the payload
        raise _Malformed(
            f"the payload is not JSON ({err.msg} at line {err.lineno} column {err.colno})"
        ) from None
    except ValueError as err:  # anything else the decoder refuses
        raise _Malformed(f"the payload is not JSON ({shown(str(err), 80)})") from None
    if _depth(doc) > MAX_DEPTH:
        raise _Malformed(f"the JSON is nested more than {MAX_DEPTH} levels deep")
    if not isinstance(doc, dict):
        raise _Malformed(f"the payload is {_kind(doc)}, not a JSON object")
    _exact_keys(doc, ("command", "signature"), "the envelope")
    command_doc = doc["command"]
    if not isinstance(command_doc, dict):
        raise _Malformed(f"'command' is {_kind(command_doc)}, not an object")
    _exact_keys(command_doc, COMMAND_FIELDS, "the command")
    command = Command(
        verb=_matching(command_doc, "verb", VERB_PATTERN, "a lowercase word like 'ping'"),
        gateway_id=_matching(command_doc, "gateway_id", NAME_PATTERN, "a gateway id"),
        issued_at=_issued_at(command_doc["issued_at"]),
        nonce=_matching(command_doc, "nonce", NONCE_PATTERN, "32 lowercase hex digits"),
        body=_object(command_doc["body"], "body"),
        key_id=_matching(command_doc, "key_id", KEY_ID_PATTERN, "a key name"),
    )
    try:
        canonical(command)
    except UnicodeEncodeError:
        raise _Malformed("the body holds text that is not Unicode (a lone surrogate)") from None
    return CommandEnvelope(command, _signature(doc["signature"]))


def _object_without_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for key, value in pairs:
        if key in doc:
            raise _Malformed(f"the key {shown(key)} appears twice in one object")
        doc[key] = value
    return doc


def _no_fraction(text: str) -> Any:
    raise _Malformed(
        f"the number {shown(text)} is not an integer; numbers in a command are integers "
        "(send a fraction as a string)"
    )


def _bounded_int(text: str) -> int:
    if len(text) > 17:  # more digits than MAX_INTEGER has, sign included
        raise _Malformed(f"a number of {len(text)} digits is beyond ±{MAX_INTEGER}")
    value = int(text)
    if abs(value) > MAX_INTEGER:
        raise _Malformed(f"the number {value} is beyond ±{MAX_INTEGER}")
    return value


def _no_constant(text: str) -> Any:
    raise _Malformed(f"{text} is not a JSON number")


def _depth(value: object) -> int:
    """How deeply `value` nests (a scalar: 0), without recursion."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level + 1)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((child, level + 1) for child in children)
    return deepest


def _exact_keys(doc: dict[str, Any], expected: tuple[str, ...], what: str) -> None:
    missing = [key for key in expected if key not in doc]
    if missing:
        raise _Malformed(f"{what} lacks {_names(missing)}")
    extra = sorted(key for key in doc if key not in expected)
    if extra:
        raise _Malformed(f"{what} has unknown {_names(extra)} (it has exactly {_names(expected)})")


def _matching(doc: dict[str, Any], key: str, pattern: re.Pattern[str], what: str) -> str:
    value = doc[key]
    if not isinstance(value, str):
        raise _Malformed(f"'{key}' is {_kind(value)}, not text")
    if pattern.fullmatch(value) is None:
        raise _Malformed(f"'{key}' is {shown(value)}, not {what}")
    return value


def _issued_at(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Malformed(f"'issued_at' is {_kind(value)}, not an integer of unix seconds")
    if value < 0:
        raise _Malformed(f"'issued_at' is {value}, before 1970")
    return value


def _object(value: object, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Malformed(f"'{key}' is {_kind(value)}, not an object ({{}} for no arguments)")
    return value


def _signature(value: object) -> str:
    if not isinstance(value, str):
        raise _Malformed(f"'signature' is {_kind(value)}, not base64 text")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _Malformed("'signature' is not base64 (RFC 4648, with padding)") from None
    if len(raw) != SIGNATURE_BYTES:
        raise _Malformed(
            f"'signature' holds {len(raw)} bytes; an Ed25519 signature is {SIGNATURE_BYTES}"
        )
    return value


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _names(keys: tuple[str, ...] | list[str]) -> str:
    return ", ".join(shown(key) for key in keys)
