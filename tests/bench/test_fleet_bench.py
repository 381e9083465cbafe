"""bench/fleet_bench.py runs, and its books balance: a small fleet, quick.

The full run (1,000 gateways, a broker restart) is in docs/performance.md; here 20
gateways for a few seconds, no restart, so every batch must reach the consumer group
exactly once and each consumer must get a share.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.fleet_bench import storm

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.rig
def test_every_batch_of_a_small_fleet_reaches_the_consumer_group_once() -> None:
    command = [
        sys.executable,
        str(REPO / "bench" / "fleet_bench.py"),
        "--gateways=20",
        "--procs=1",
        "--interval=1s",
        "--warmup=1s",
        "--duration=2s",
        "--outage=0s",
        "--consumers=2",
        "--json",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)

    books = result["accounting"]
    assert books["batches_stored"] >= 20 * 3  # every gateway stored a batch a second
    assert books["missing"] == 0
    assert books["duplicates"] == 0
    assert books["duplicates_to_two_consumers"] == 0
    shares = books["per_consumer"].values()
    assert sum(shares) == books["deliveries"] == books["batches_stored"]
    assert min(shares) > 0  # the shared subscription spread the load
    assert result["cold_start"]["back"] == 20
    assert result["steady"]["broker_rss_kib"] > 0
    assert result["retained"]["status_messages"] == 20


def test_a_storm_is_timed_from_each_gateways_first_connect() -> None:
    events = [
        (10.0, 0, "failed"),
        (10.5, 0, "connected"),
        (10.6, 1, "connected"),
        (12.0, 1, "connected"),  # dropped and back: counted once for "back"
        (13.0, 2, "connected"),
        (9.0, 3, "connected"),  # before the window
    ]
    figures = storm(events, 10.0, 3, 20.0)
    assert figures.back == 3
    assert figures.all_back_s == pytest.approx(3.0)
    assert figures.failed_attempts == 1
    assert figures.reconnects_beyond_one == 1
    assert figures.peak_connects_per_s == 2
    assert storm(events, 10.0, 4, 20.0).all_back_s is None  # one never came back
