"""`edge-gateway tail`: the readings of every gateway on a broker, decoded and
de-duplicated, as JSON lines or InfluxDB line protocol; or, with `--completeness`, the
account of every seq (docs/centre.md).

Subscribes to `{prefix}/+/data/#` (both data lanes; `--gateway` narrows it), and for
`--completeness` to the status, health and event topics too. A batch is printed the first
time its `(gateway, boot, seq)` arrives: delivery is at-least-once, the output is not.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from gateway.commands.broker_args import add_broker_arguments, connection, duration
from gateway.commands.common import EXIT_CONFIG, EXIT_ENVIRONMENT, EXIT_FAILURE, EXIT_OK

if TYPE_CHECKING:
    from gateway.centre.accounting import Accounting
    from gateway.centre.client import Connection, Received
    from gateway.wire import Batch

NAME = "tail"
HELP = "print every gateway's readings as they arrive (JSON lines or InfluxDB line protocol)"
ORDER = 52

EPILOG = """\
examples:
  edge-gateway tail --broker 127.0.0.1
  edge-gateway tail --broker mqtt.city.example:8883 --tls-ca ca.pem --username centre \\
      --format influx --share influx-writers
  edge-gateway tail --broker 127.0.0.1 --gateway cabinet-0412 --completeness --for 2m

--format influx prints one line of InfluxDB line protocol per reading: the measurement
is the device (or --measurement), tags gateway, device, point and quality, a number or
bool in the float field value, text in the string field text, no value as the integer
field quality_code (or no line, --empty skip); nanosecond timestamps. Telegraf's
inputs.execd runs it as it is (docs/centre.md).

exit codes: 0 stopped by --for or SIGTERM; 1 a payload on a data topic did not decode
(said on stderr, once per gateway; the rest goes on); 2 bad input (an argument, a CA
file); 3 the broker cannot be reached, or the connection was lost; 130 interrupted
(Ctrl-C); 141 the reader of the output went away (| head), quietly."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    add_broker_arguments(parser)
    parser.add_argument(
        "--gateway",
        action="append",
        metavar="ID",
        help="only this gateway (repeat for more; default: every gateway on the broker)",
    )
    parser.add_argument(
        "--format",
        choices=["json", "influx"],
        default="json",
        help="json: one JSON object per reading (gateway_id, boot_id, seq, device, point, "
        "ts_ms, value, quality), as `edge-gateway decode` prints; influx: InfluxDB line "
        "protocol (below)",
    )
    parser.add_argument(
        "--measurement",
        metavar="NAME",
        help="influx: one measurement for every reading (default: the device's name)",
    )
    parser.add_argument(
        "--empty",
        choices=["field", "skip"],
        default="field",
        help="influx: a reading without a value (comm_error, device_offline, invalid_value) "
        "as a line with only the integer field quality_code (field, the default), or none",
    )
    parser.add_argument(
        "--share",
        metavar="GROUP",
        help="subscribe as a member of the MQTT 5 shared subscription $share/GROUP/...: "
        "the broker gives each batch to one member, so several consumers split a fleet "
        "(duplicates are dropped per member; not with --completeness)",
    )
    parser.add_argument(
        "--completeness",
        action="store_true",
        help="print no readings but the account of every gateway's seqs, one JSON object "
        "per gateway: received, still on the gateway's disk, evicted, lost at a crash, "
        "missing (docs/centre.md); every --every and when stopping",
    )
    parser.add_argument(
        "--every",
        type=duration,
        default=10.0,
        metavar="DURATION",
        help="with --completeness: how often to print the account (default 10s)",
    )
    parser.add_argument(
        "--for",
        dest="seconds",
        type=duration,
        metavar="DURATION",
        help="stop after this long, e.g. 30s or 5m (default: run until SIGTERM or Ctrl-C)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="say on stderr when subscribed (and to what)",
    )


def run(args: argparse.Namespace) -> int:
    import asyncio

    from gateway.centre.client import CentreError

    problem = _bad_combination(args)
    if problem is not None:
        print(f"edge-gateway tail: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        to_broker = connection(args)
    except ValueError as err:
        print(f"edge-gateway tail: {err}", file=sys.stderr)
        return EXIT_CONFIG
    tail = _Tail(args)
    try:
        asyncio.run(tail.run(to_broker))
    except CentreError as err:
        tail.report()
        print(f"edge-gateway tail: {err}", file=sys.stderr)
        return EXIT_ENVIRONMENT
    tail.report()
    return EXIT_FAILURE if tail.undecodable else EXIT_OK


def _bad_combination(args: argparse.Namespace) -> str | None:
    if args.share is not None and args.completeness:
        return (
            "--completeness needs every batch, and a member of a --share group receives "
            "only its part: use one without the other"
        )
    if args.share is not None and (not args.share or any(c in args.share for c in "/+#")):
        return f"--share {args.share!r}: a group name holds no '/', '+' or '#'"
    if args.completeness and args.format != "json":
        return "--completeness prints JSON (one object per gateway): leave out --format"
    if args.format != "influx" and (args.measurement is not None or args.empty != "field"):
        return "--measurement and --empty go with --format influx"
    if args.gateway and any(not g or any(c in g for c in "/+#") for g in args.gateway):
        return "--gateway takes a gateway id (no '/', '+' or '#')"
    return None


class _Tail:
    """What one run of `tail` keeps: the accounting, and what it printed."""

    def __init__(self, args: argparse.Namespace) -> None:
        from gateway.centre.accounting import Accounting

        self.args = args
        self.accounting: Accounting = Accounting(args.prefix)
        self.undecodable = 0
        self._warned: set[str] = set()
        self._reported = False

    def filters(self) -> list[str]:
        from gateway.centre.listening import share
        from gateway.uplink.topics import Topics

        args = self.args
        filters = []
        for gateway_id in args.gateway or ["+"]:
            topics = Topics(args.prefix, gateway_id)
            filters.append(share(args.share, f"{topics.data}/#"))
            if args.completeness:
                filters += [topics.status, topics.health, topics.event]
        return filters

    async def run(self, to_broker: Connection) -> None:
        from gateway.centre.listening import listen

        beside = []
        if self.args.completeness:
            beside.append(("report", self._report_every(self.args.every)))
        await listen(
            to_broker,
            self.filters(),
            self.handle,
            seconds=self.args.seconds,
            subscribed=self._subscribed,
            beside=beside,
        )

    def _subscribed(self) -> None:
        if self.args.verbose:
            print(
                f"edge-gateway tail: subscribed to {', '.join(self.filters())} "
                f"on {self.args.broker}",
                file=sys.stderr,
                flush=True,
            )

    def handle(self, message: Received) -> None:
        from gateway.wire import DecodeError

        try:
            batch = self.accounting.receive(message.topic, message.payload)
        except DecodeError as err:
            self.undecodable += 1
            if message.topic not in self._warned:
                self._warned.add(message.topic)
                print(
                    f"edge-gateway tail: a payload on {message.topic} does not decode "
                    f"({err}); skipped, and said once per topic",
                    file=sys.stderr,
                    flush=True,
                )
            return
        if batch is None or self.args.completeness:
            return
        text = "".join(line + "\n" for line in self._lines(batch))
        if text:
            sys.stdout.write(text)
            sys.stdout.flush()

    def _lines(self, batch: Batch) -> list[str]:
        if self.args.format == "influx":
            from gateway.centre.influx import batch_lines

            return list(
                batch_lines(batch, measurement=self.args.measurement, empty=self.args.empty)
            )
        from gateway.wire import batch_to_json_lines

        return list(batch_to_json_lines(batch))

    async def _report_every(self, seconds: float) -> None:
        import asyncio

        while True:
            await asyncio.sleep(seconds)
            self._print_accounts()

    def report(self) -> None:
        """The last account, once, when stopping (with --completeness)."""
        if self.args.completeness and not self._reported:
            self._reported = True
            self._print_accounts()

    def _print_accounts(self) -> None:
        import json

        views = self.accounting.completeness()
        if views:
            sys.stdout.write("".join(json.dumps(v, separators=(",", ":")) + "\n" for v in views))
            sys.stdout.flush()
