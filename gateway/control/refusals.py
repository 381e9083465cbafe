"""Why a command is refused: a short code for machines, a sentence for people.

The codes are a contract with the centre (docs/schemas/reply.schema.json lists them):

| code | meaning |
|---|---|
| `malformed` | not a command envelope (not JSON, a field missing or of the wrong kind, too large) |
| `wrong_verb` | the signed verb is not the verb of the topic it came on (re-routed) |
| `unknown_key` | no trusted key of that name is installed on this gateway |
| `bad_signature` | the signature does not verify with that key over the command |
| `wrong_gateway` | signed for another gateway |
| `unknown_verb` | signed and fresh, but this gateway has no such verb |
| `expired` | issued longer ago than the time window (or before what the gateway remembers) |
| `from_the_future` | issued further ahead of the gateway's clock than the time window |
| `replayed` | a command with this nonce was accepted already |
| `not_recorded` | its nonce could not be stored (disk), so it could be replayed: not acted on |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

RefusalCode = Literal[
    "malformed",
    "wrong_verb",
    "unknown_key",
    "bad_signature",
    "wrong_gateway",
    "unknown_verb",
    "expired",
    "from_the_future",
    "replayed",
    "not_recorded",
]
REFUSAL_CODES: tuple[RefusalCode, ...] = get_args(RefusalCode)

# Refusals of a payload whose signature was not (or could not be) checked: anyone who
# can publish on the broker can cause these. The others concern a genuinely signed command.
UNAUTHENTICATED: frozenset[RefusalCode] = frozenset(
    {"malformed", "wrong_verb", "unknown_key", "bad_signature"}
)


@dataclass(frozen=True, slots=True)
class Refusal:
    code: RefusalCode
    reason: str  # one sentence for the operator who sent the command

    def __str__(self) -> str:
        return f"{self.code}: {self.reason}"
