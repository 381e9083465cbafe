"""`edge-gateway command`: sign and send a remote command, or make a key pair to sign with.

`command keygen` writes `KEY_ID.key` (the private key, 0600: it stays at the centre)
and `KEY_ID.pub` (installed on every gateway that should obey it, in its trusted-keys
directory). `command send` signs a command with the private key (gateway/control/),
publishes it to `{prefix}/{gateway}/cmd/{verb}`, waits for the reply and prints it;
its exit status is the reply's (gateway/centre/ does the MQTT).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.commands.broker_args import add_broker_arguments, duration
from gateway.commands.common import EXIT_CONFIG, EXIT_ENVIRONMENT, EXIT_FAILURE, EXIT_OK

if TYPE_CHECKING:
    from gateway.wire.messages import Reply

NAME = "command"
HELP = "sign and send a remote command to a gateway and print its reply; make signing keys"
ORDER = 50


EPILOG = """\
examples:
  edge-gateway command keygen --out ~/.edge-gateway --name ops-2026
  edge-gateway command send --broker mqtt.city.example:8883 --tls-ca ca.pem \\
      --username centre --gateway cabinet-0412 --key ~/.edge-gateway/ops-2026.key ping
  edge-gateway command send --broker 127.0.0.1 --gateway cabinet-0412 \\
      --key ops-2026.key read --body '{"device": "pump-7"}' --json

exit codes (send): 0 the gateway did it; 1 it refused or failed (the reply says why);
2 bad input (a key, a body, an argument); 3 the broker cannot be reached, refused the
command, or no reply came within --timeout (one sentence says which)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    actions = parser.add_subparsers(
        dest="action", required=True, metavar="ACTION", help="keygen or send"
    )

    keygen = actions.add_parser(
        "keygen",
        help="make an Ed25519 key pair: KEY_ID.key (private, 0600) and KEY_ID.pub",
        description="Make an Ed25519 key pair for signing commands. The private key "
        "stays with you; the .pub goes into each gateway's trusted-keys directory.",
    )
    keygen.add_argument(
        "--out", type=Path, required=True, help="directory to write the two files in"
    )
    keygen.add_argument(
        "--name",
        required=True,
        metavar="KEY_ID",
        help="the key's id: the files' name, and what gateways know the key by "
        "(letters, digits, '_', '-', '.'; e.g. ops-2026)",
    )
    keygen.add_argument("--json", action="store_true", help="print the result as JSON")

    send = actions.add_parser(
        "send",
        help="sign a command, publish it, wait for the reply and print it",
        description="Sign a command for one gateway, publish it on "
        "{prefix}/{gateway}/cmd/{verb} (QoS 1, MQTT 5 response topic and correlation "
        "data), wait for its reply and print it. Exit 0 ok, 1 refused or failed, "
        "3 no broker or no reply.",
    )
    send.formatter_class = argparse.RawDescriptionHelpFormatter
    send.epilog = EPILOG
    send.add_argument("verb", help="what to do: ping, health, read, reload, ... (the gateway's)")
    add_broker_arguments(send)
    send.add_argument("--gateway", required=True, metavar="ID", help="the gateway's [gateway] id")
    send.add_argument(
        "--key",
        type=Path,
        required=True,
        metavar="FILE.key",
        help="private key to sign with (from `command keygen`, or an OpenSSH ed25519 key)",
    )
    send.add_argument(
        "--key-id",
        metavar="ID",
        help="the id gateways know the key by (default: the key file's name without .key)",
    )
    body = send.add_mutually_exclusive_group()
    body.add_argument(
        "--body",
        metavar="JSON",
        help='the verb\'s arguments, a JSON object (default {}), e.g. \'{"device": "pump-7"}\'',
    )
    body.add_argument(
        "--body-file",
        type=Path,
        metavar="FILE",
        help="read the JSON object of arguments from FILE ('-': standard input)",
    )
    body.add_argument(
        "--config",
        type=Path,
        metavar="FILE.toml",
        help='for config-apply: the new config file (the body becomes {"config": <its text>}); '
        "validated here first",
    )
    send.add_argument(
        "--timeout",
        type=duration,
        metavar="DURATION",
        help="give up waiting after this long, connecting included (default 10s; 330s for "
        "reload, config-apply and config-rollback, which answer once the new config has "
        "shown it works or was rolled back)",
    )
    send.add_argument(
        "--json", action="store_true", help="print the reply as JSON (docs/schemas/reply)"
    )


def run(args: argparse.Namespace) -> int:
    if args.action == "keygen":
        return _keygen(args)
    return _send(args)


# --- keygen --------------------------------------------------------------------------------


def _keygen(args: argparse.Namespace) -> int:
    from gateway.control.keys import DEFAULT_TRUSTED_KEYS, KeyFileError, generate_key_pair

    try:
        pair = generate_key_pair(args.out, args.name)
    except (KeyFileError, FileExistsError) as err:
        print(f"edge-gateway command keygen: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as err:
        print(f"edge-gateway command keygen: {args.out}: {err.strerror or err}", file=sys.stderr)
        return EXIT_ENVIRONMENT
    installed = DEFAULT_TRUSTED_KEYS / pair.public.name
    if args.json:
        print(
            json.dumps(
                {
                    "key_id": pair.key_id,
                    "private_key": str(pair.private),
                    "public_key": str(pair.public),
                    "fingerprint": pair.fingerprint,
                    "install_as": str(installed),
                },
                indent=2,
            )
        )
        return EXIT_OK
    print(f"private key: {pair.private} (mode 0600; keep it at the centre, never on a gateway)")
    print(f"public key:  {pair.public} ({pair.fingerprint})")
    print("On each gateway that should obey this key, install the public key and reload:")
    print(f"  sudo install -D -m 0644 {pair.public.name} {installed}")
    print("  sudo systemctl reload edge-gateway")
    print(f"Then sign with: edge-gateway command send --key {pair.private} ...")
    return EXIT_OK


# --- send --------------------------------------------------------------------------------


class _BadInput(Exception):
    """A sentence about what the user gave; exit 2."""


def _send(args: argparse.Namespace) -> int:
    import asyncio
    import dataclasses
    import time

    from gateway.centre import CentreError, send_command
    from gateway.centre.request import BadReply
    from gateway.commands.broker_args import connection
    from gateway.control.keys import load_private_key, private_key_warning
    from gateway.control.refusals import Refusal
    from gateway.control.signing import envelope_bytes, new_command, parse, sign
    from gateway.uplink.topics import Topics

    try:
        broker = connection(args)
        key = load_private_key(args.key)
        key_id = args.key_id or args.key.name.removesuffix(".key")
        body = _body(args)
        if args.timeout is None:
            args.timeout = 330.0 if args.verb in FLASHING_VERBS else 10.0
    except (ValueError, _BadInput) as err:  # KeyFileError is a ValueError
        print(f"edge-gateway command send: {err}", file=sys.stderr)
        return EXIT_CONFIG
    if (warning := private_key_warning(args.key)) is not None:
        print(f"edge-gateway command send: warning: {warning}", file=sys.stderr)
    command = new_command(args.verb, args.gateway, body, key_id, now=time.time())
    payload = envelope_bytes(sign(command, key))
    checked = parse(payload)  # what the gateway will check first: say it here, as bad input
    if isinstance(checked, Refusal):
        print(
            f"edge-gateway command send: the command is not valid: {checked.reason}",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    broker = dataclasses.replace(broker, connect_timeout=min(5.0, args.timeout))
    topics = Topics(args.prefix, args.gateway)
    try:
        answer = asyncio.run(
            send_command(broker, topics, command.verb, command.nonce, payload, within=args.timeout)
        )
    except BadReply as err:
        return _fail(args, "bad_reply", str(err), EXIT_FAILURE)
    except CentreError as err:  # the broker, not the gateway: exit 3
        return _fail(args, _ERROR_KINDS.get(type(err).__name__, "broker_error"), str(err))
    _print_reply(args, answer.reply, answer.elapsed_s)
    return EXIT_OK if answer.reply.outcome == "ok" else EXIT_FAILURE


FLASHING_VERBS = ("reload", "config-apply", "config-rollback")


def _body(args: argparse.Namespace) -> dict[str, Any]:
    if args.config is not None:
        from gateway.errors import ConfigError
        from gateway.settings import load_config

        try:
            load_config(args.config)
            return {"config": args.config.read_text(encoding="utf-8")}
        except ConfigError as err:
            raise _BadInput(str(err)) from None
        except (OSError, UnicodeDecodeError) as err:
            raise _BadInput(f"{args.config}: cannot be read ({err})") from None
    if args.body_file is not None:
        source = str(args.body_file)
        try:
            text = sys.stdin.read() if source == "-" else args.body_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise _BadInput(
                f"{source}: cannot be read ({getattr(err, 'strerror', None) or err})"
            ) from None
    elif args.body is not None:
        source, text = "--body", args.body
    else:
        return {}
    try:
        body = json.loads(text)
    except ValueError as err:
        raise _BadInput(f"{source}: not JSON ({err})") from None
    if not isinstance(body, dict):
        raise _BadInput(f'{source}: the body must be a JSON object, e.g. {{"device": "pump-7"}}')
    return body


_ERROR_KINDS = {
    "BrokerUnreachable": "broker_unreachable",
    "PublishRefused": "publish_refused",
    "NoReply": "no_reply",
}


def _fail(
    args: argparse.Namespace, kind: str, sentence: str, status: int = EXIT_ENVIRONMENT
) -> int:
    print(f"edge-gateway command send: {sentence}", file=sys.stderr)
    if args.json:
        print(json.dumps({"error": kind, "reason": sentence}, indent=2))
    return status


def _print_reply(args: argparse.Namespace, reply: Reply, elapsed: float) -> None:
    if args.json:
        print(json.dumps(reply.to_json(), indent=2))
        return
    head = reply.outcome if reply.code is None else f"{reply.outcome} ({reply.code})"
    print(f"{head}: {reply.verb} on {reply.gateway_id}, answered in {elapsed:.2f} s")
    if reply.reason:
        print(f"reason: {reply.reason}")
    if reply.note:
        print(f"note: {reply.note}")
    if reply.result is not None:
        print(json.dumps(reply.result, indent=2, ensure_ascii=False))
