"""The centre's side of MQTT: what operators' tools use to talk to gateways.

- `client`: `CentreClient`, one connection to the broker (aiomqtt) that says in a
  sentence why it cannot connect, and reports a publish the broker refused;
- `request`: `send_command`, publish a signed command and wait for its reply.

`edge-gateway command send` stands on these; tools that watch gateways can too. The
gateway itself never imports this package (its MQTT client is gateway/uplink/mqtt.py).
"""

from gateway.centre.client import (
    BrokerAddress,
    BrokerUnreachable,
    CentreClient,
    CentreError,
    Connection,
    PublishRefused,
    Received,
    tls_context,
)
from gateway.centre.request import (
    Answer,
    BadReply,
    NoReply,
    parse_reply,
    send_command,
)

__all__ = [
    "Answer",
    "BadReply",
    "BrokerAddress",
    "BrokerUnreachable",
    "CentreClient",
    "CentreError",
    "Connection",
    "NoReply",
    "PublishRefused",
    "Received",
    "parse_reply",
    "send_command",
    "tls_context",
]
