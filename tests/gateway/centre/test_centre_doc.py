"""docs/centre.md shows what the code prints: the line protocol of the wire format's
example batch, and a completeness view with exactly the fields the accounting gives."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from gateway.centre.accounting import Accounting
from gateway.centre.influx import batch_lines
from gateway.commands import tail, watch
from gateway.wire import decode_batch
from tests.gateway.centre.helpers import A, B, batch, event, feed, health, status, view

REPO = Path(__file__).resolve().parents[3]
DOC = (REPO / "docs" / "centre.md").read_text()


def test_the_line_protocol_in_the_doc_is_what_tail_prints_for_the_golden_batch() -> None:
    block = re.search(r"<!-- influx-example -->\n```\n(.*?)```", DOC, re.S)
    assert block is not None
    golden = decode_batch((REPO / "tests/gateway/golden/batch-v2.msgpack").read_bytes())
    assert block.group(1).splitlines() == list(batch_lines(golden))


def test_the_completeness_example_in_the_doc_has_the_fields_the_accounting_gives() -> None:
    block = re.search(r"```json\n(\{\"gateway_id\": \"cab-1\".*?)```", DOC, re.S)
    assert block is not None
    documented = json.loads(block.group(1))
    accounting = Accounting()
    feed(
        accounting,
        ("status", status(A, "online")),
        ("health", health(A, first_unsent=3, last=4, pending=5)),
        ("data", batch(1, A)),
        ("status", status(B, "online", ts=1100.0)),
        ("health", health(B, ts=1110.0, first_unsent=4, last=1_000_004, boot_first=1_000_005)),
        ("event", event("eviction_stopped", first_seq=2, last_seq=2, batches=1)),
    )
    assert _shape(documented) == _shape(view(accounting))


def _shape(doc: Any) -> Any:
    """The keys of every object, recursively (lists by their first item)."""
    if isinstance(doc, dict):
        return {key: _shape(value) for key, value in doc.items()}
    if isinstance(doc, list) and doc and isinstance(doc[0], dict):
        return [_shape(doc[0])]
    return None


def test_the_doc_names_every_option_of_tail_and_watch() -> None:
    import argparse

    for command in (tail, watch):
        parser = argparse.ArgumentParser()
        command.add_arguments(parser)
        for action in parser._actions:
            for option in action.option_strings:
                if option.startswith("--") and option not in ("--help", "--password"):
                    assert option in DOC, f"docs/centre.md does not name {command.NAME} {option}"
