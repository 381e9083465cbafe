"""What the tests of signed commands share: a trusted key pair, signed payloads, a gate."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from drivers.core.clock import ManualClock
from gateway.control import CommandGate, generate_key_pair, load_private_key, new_command, sign
from gateway.control.signing import envelope_bytes
from gateway.wire.messages import Command

GATEWAY = "cabinet-0412"
KEY_ID = "ops-2026"


@dataclass
class Signer:
    """A key the gateway trusts (its .pub in `keys_dir`), and its private half."""

    key_id: str
    key: Ed25519PrivateKey
    keys_dir: Path

    def command(self, clock: ManualClock, verb: str = "ping", **changes: Any) -> Command:
        body = changes.pop("body", {})
        command = new_command(verb, GATEWAY, body, self.key_id, now=clock.time())
        return replace(command, **changes)

    def payload(self, clock: ManualClock, verb: str = "ping", **changes: Any) -> bytes:
        return envelope_bytes(sign(self.command(clock, verb, **changes), self.key))


def make_signer(directory: Path, key_id: str = KEY_ID) -> Signer:
    """A fresh key pair: the private key in directory/private, the public in directory/keys."""
    pair = generate_key_pair(directory / "private", key_id)
    keys_dir = directory / "keys"
    keys_dir.mkdir(exist_ok=True)
    (keys_dir / pair.public.name).write_bytes(pair.public.read_bytes())
    return Signer(key_id, load_private_key(pair.private), keys_dir)


def make_gate(signer: Signer, state_dir: Path, clock: ManualClock, **kwargs: Any) -> CommandGate:
    return CommandGate.open(
        GATEWAY, state_dir=state_dir, clock=clock, keys_dir=signer.keys_dir, **kwargs
    )
