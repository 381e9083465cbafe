"""The broker options of the centre's commands (`tail`, `watch`): where the broker is, TLS,
credentials, MQTT version and the gateways' topic prefix, as `command send` takes them."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.centre.client import Connection

PASSWORD_ENV = "EDGE_GATEWAY_MQTT_PASSWORD"


def add_broker_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("broker")
    group.add_argument(
        "--broker",
        required=True,
        metavar="HOST[:PORT]",
        help="the broker the gateways publish to (port 1883, or 8883 with --tls-ca)",
    )
    group.add_argument(
        "--tls-ca",
        type=Path,
        metavar="FILE",
        help="CA certificate(s) of the broker's certificate; turns TLS on",
    )
    group.add_argument("--username", help="MQTT user name")
    group.add_argument(
        "--password",
        default=os.environ.get(PASSWORD_ENV),
        help=f"MQTT password (better: the environment variable {PASSWORD_ENV}, which other "
        "users cannot see in the process list)",
    )
    group.add_argument(
        "--mqtt", choices=["5", "3.1.1"], default="5", help="MQTT version (default 5)"
    )
    group.add_argument(
        "--client-id",
        metavar="ID",
        help="MQTT client id (default: edge-gateway-centre-<random>); two clients with one "
        "id knock each other off",
    )
    group.add_argument(
        "--prefix", default="city", help="the gateways' [mqtt] topic_prefix (default city)"
    )


def connection(args: argparse.Namespace) -> Connection:
    """The connection the arguments describe; ValueError with the reason when they do not
    describe one (a bad address, an unusable CA file)."""
    from gateway.centre.client import BrokerAddress, Connection, tls_context

    address = BrokerAddress.parse(args.broker, tls=args.tls_ca is not None)
    return Connection(
        address,
        tls=tls_context(args.tls_ca) if args.tls_ca is not None else None,
        username=args.username,
        password=args.password,
        protocol=args.mqtt,
        client_id=args.client_id,
    )


def duration(text: str) -> float:
    """An argparse type: a duration with its unit ("500ms", "35s", "2m"), above zero."""
    from drivers.core.config_types import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be longer than zero")
    return seconds
