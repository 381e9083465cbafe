"""Signed remote commands: who may command a gateway, and the record of who did.

A command is signed with Ed25519 by a key the gateway trusts, for one gateway, within
a time window, once. The modules, one concern each:

- `signing`: the command's canonical encoding, sign, parse (never raises), verify;
- `refusals`: the refusal codes and their meaning;
- `keys`: the trusted-keys directory (gateway) and key pairs (centre);
- `replay`: nonces remembered across restarts, the time window, the unsynchronised clock;
- `audit`: the audit log (the last N commands accepted or refused);
- `gate`: `CommandGate`, which runs every check in order and counts the outcomes.

The small state (nonces, audit) is in TinyDB files written atomically (gateway/state.py).
Messages on the wire (`Command`, `CommandEnvelope`, `Reply`) are in gateway/wire/messages.py.
"""

from gateway.control.audit import AuditEntry, AuditLog
from gateway.control.gate import Accepted, CommandGate, CommandsHealth, Refused
from gateway.control.keys import (
    DEFAULT_TRUSTED_KEYS,
    KeyFileError,
    KeyPair,
    TrustedKeys,
    TrustReport,
    generate_key_pair,
    load_private_key,
)
from gateway.control.refusals import REFUSAL_CODES, Refusal, RefusalCode
from gateway.control.replay import DEFAULT_WINDOW, Fresh, ReplayGuard
from gateway.control.signing import canonical, new_command, parse, sign, signed_bytes, verify

__all__ = [
    "DEFAULT_TRUSTED_KEYS",
    "DEFAULT_WINDOW",
    "REFUSAL_CODES",
    "Accepted",
    "AuditEntry",
    "AuditLog",
    "CommandGate",
    "CommandsHealth",
    "Fresh",
    "KeyFileError",
    "KeyPair",
    "Refusal",
    "RefusalCode",
    "Refused",
    "ReplayGuard",
    "TrustReport",
    "TrustedKeys",
    "canonical",
    "generate_key_pair",
    "load_private_key",
    "new_command",
    "parse",
    "sign",
    "signed_bytes",
    "verify",
]
