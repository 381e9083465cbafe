"""`edge-gateway exporter`: every gateway on a broker as Prometheus metrics on `/metrics`.

Subscribes to `{prefix}/+/status`, `health`, `event`, `device/+` and `alarms/active`,
keeps the latest of each, and serves them to Prometheus (gateway/centre/exporter.py has
the logic and the catalogue of metrics; docs/exporter.md documents each). Runs until
SIGTERM (exit 0) or Ctrl-C (130); a broker that is away is tried again, never a reason
to stop.
"""

from __future__ import annotations

import argparse
import sys

from gateway.commands.broker_args import add_broker_arguments, connection, duration
from gateway.commands.common import (
    EXIT_CONFIG,
    EXIT_ENVIRONMENT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    setup_logging,
)

NAME = "exporter"
HELP = "serve Prometheus metrics of every gateway on a broker (status, health, devices, alarms)"
ORDER = 55

DEFAULT_LISTEN = "127.0.0.1:9108"

EPILOG = """\
examples:
  edge-gateway exporter --broker 127.0.0.1
  edge-gateway exporter --broker mqtt.city.example:8883 --tls-ca ca.pem --username centre \\
      --listen 0.0.0.0:9108 --stale 15m

then, in prometheus.yml:
  scrape_configs:
    - job_name: edge-gateway
      static_configs: [{targets: ["127.0.0.1:9108"]}]

The metrics, their labels and a Grafana dashboard (config/grafana/edge-gateway-fleet.json):
docs/exporter.md.

exit codes: 0 stopped by SIGTERM; 2 bad input (an argument, a CA file); 3 the --listen
address cannot be listened on (in use, not permitted); 130 interrupted (Ctrl-C). A broker
that cannot be reached is no reason to stop: the exporter tries again, says so once in the
log, and edge_gateway_exporter_broker_connected is 0 meanwhile."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    add_broker_arguments(parser)
    parser.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"where to serve /metrics (default {DEFAULT_LISTEN}; 0.0.0.0:9108 for every "
        "interface)",
    )
    parser.add_argument(
        "--stale",
        type=_stale,
        default="10m",
        metavar="DURATION",
        help="stop exporting a gateway, or a device, once nothing has been heard of it for "
        "this long (default 10m; at least 1s; several of the gateways' health_interval)",
    )
    parser.add_argument(
        "--max-gateways",
        type=int,
        default=10_000,
        metavar="N",
        help="at most this many gateways at once (default 10000): bounds the series a "
        "broker flooded with made-up gateway ids can cause",
    )
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default="info",
        help="what the log on stderr says (default info: connects and losses, once each)",
    )


def _stale(text: str) -> float:
    seconds = duration(text)
    if seconds < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is too short: at least 1s")
    return seconds


def run(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from gateway.centre.exporter import Fleet, FleetCollector, MetricsServer, follow, listen_address

    try:
        broker = connection(args)
        host, port = listen_address(args.listen)
        if args.max_gateways < 1:
            raise ValueError(f"--max-gateways {args.max_gateways}: at least 1")
    except ValueError as err:
        print(f"edge-gateway exporter: {err}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(args.log_level)
    fleet = Fleet(args.prefix, stale=args.stale, max_gateways=args.max_gateways)
    try:
        server = MetricsServer(FleetCollector(fleet), host, port)
    except OSError as err:
        print(
            f"edge-gateway exporter: cannot listen on {args.listen}: {err.strerror or err}",
            file=sys.stderr,
        )
        return EXIT_ENVIRONMENT
    print(
        f"edge-gateway exporter: serving http://{args.listen}/metrics for the gateways under "
        f"{args.prefix}/ on {broker.address}",
        file=sys.stderr,
    )
    interrupted = False

    async def _main() -> None:
        nonlocal interrupted
        stop = asyncio.Event()

        def _on(sig: signal.Signals) -> None:
            nonlocal interrupted
            interrupted = sig == signal.SIGINT
            stop.set()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, _on, sig)
        async with asyncio.TaskGroup() as tg:
            following = tg.create_task(follow(broker, fleet), name="exporter-follow")
            await stop.wait()
            following.cancel()

    try:
        asyncio.run(_main())
    finally:
        server.close()
    return EXIT_INTERRUPTED if interrupted else EXIT_OK
