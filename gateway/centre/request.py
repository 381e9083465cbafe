"""Send a signed command to a gateway and wait for its reply.

The command goes to `{prefix}/{id}/cmd/{verb}` at QoS 1. Under MQTT 5 it carries a
response topic and correlation data (the command's nonce, as ASCII); the response
topic is the gateway's own reply topic, `{prefix}/{id}/reply/{verb}`, so that a broker
ACL written for the gateway's topic tree covers it. The client subscribes to that
topic before publishing, and takes as its reply the first message there whose
correlation data, or failing that whose `nonce`, is the command's: replies to other
clients' commands on the same topic are passed over. Under MQTT 3.1.1 the nonce alone
matches.

Replies are not signed: they are as trustworthy as the broker and its ACL.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

from gateway.centre.client import CentreClient, CentreError, Connection, Received
from gateway.uplink.topics import Topics
from gateway.wire.messages import Reply

OUTCOMES = ("ok", "refused", "failed")


class NoReply(CentreError):
    """The command was delivered to the broker, but no reply came in time."""


class BadReply(CentreError):
    """Something answered the command that is not a reply."""


@dataclass(frozen=True, slots=True)
class Answer:
    reply: Reply
    elapsed_s: float  # from the connect to the reply


async def send_command(
    connection: Connection,
    topics: Topics,
    verb: str,
    nonce: str,
    payload: bytes,
    *,
    within: float,
) -> Answer:
    """Publish `payload` (a signed envelope) and return the gateway's reply. Raises
    BrokerUnreachable, PublishRefused, NoReply or BadReply (all CentreError), each with
    a sentence. `within` (seconds) bounds the whole exchange, connecting included."""
    started = time.monotonic()
    replies = topics.reply(verb)
    correlation = nonce.encode("ascii")
    published = False
    async with CentreClient(connection) as client:
        try:
            async with asyncio.timeout(max(0.0, within - (time.monotonic() - started))):
                await client.subscribe(replies, qos=1)
                await client.publish(
                    topics.command(verb),
                    payload,
                    qos=1,
                    response_topic=replies,
                    correlation_data=correlation,
                )
                published = True
                async for message in client.messages():
                    reply = _match(message, replies, correlation, nonce)
                    if reply is not None:
                        return Answer(reply, time.monotonic() - started)
        except TimeoutError:
            pass
    if not published:
        raise NoReply(
            f"the broker did not acknowledge the command within {within:g}s "
            "(connected, but the publish was not taken)"
        )
    raise NoReply(
        f"no reply on {replies} within {within:g}s: is gateway '{topics.gateway_id}' "
        "online, and does it take commands? (its status topic says whether it is online)"
    )


def _match(message: Received, replies: str, correlation: bytes, nonce: str) -> Reply | None:
    """The reply to our command, or None for anything else on the topic."""
    if message.topic != replies:
        return None
    ours = message.correlation_data == correlation
    reply = parse_reply(message.payload)
    if reply is None:
        if ours:
            raise BadReply(f"an answer on {replies} is not a reply: {message.payload[:80]!r}")
        return None
    return reply if ours or reply.nonce == nonce else None


def parse_reply(payload: bytes) -> Reply | None:
    """A reply message, or None when the payload is not one (docs/schemas/reply.schema.json)."""
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict):
        return None
    text = (str, type(None))
    checks: dict[str, Any] = {
        "verb": str,
        "gateway_id": str,
        "nonce": text,
        "code": text,
        "reason": text,
        "note": text,
        "result": (dict, type(None)),
    }
    if doc.get("outcome") not in OUTCOMES or not isinstance(doc.get("ts"), int | float):
        return None
    if any(not isinstance(doc.get(key), kind) for key, kind in checks.items() if key in doc):
        return None
    if "verb" not in doc or "gateway_id" not in doc:
        return None
    return Reply(
        outcome=doc["outcome"],
        verb=doc["verb"],
        gateway_id=doc["gateway_id"],
        nonce=doc.get("nonce"),
        ts=float(doc["ts"]),
        code=doc.get("code"),
        reason=doc.get("reason"),
        result=doc.get("result"),
        note=doc.get("note"),
    )
