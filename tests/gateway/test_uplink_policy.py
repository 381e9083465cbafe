"""The uplink's pure decisions: back-off, the defaults' recovery bound, reasons in words."""

from __future__ import annotations

import socket
import ssl

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import ValidationError

from drivers.core.backoff import backoff_delay
from gateway.uplink.config import MqttConfig
from gateway.uplink.mqtt import (
    DENIED_RETRY,
    TAKEOVER_BACKOFF,
    Ending,
    describe_connect_failure,
    describe_ending,
    probe_delay,
    reason_text,
)


@pytest.mark.parametrize("failures", [1, 2, 5, 10, 1000, 10**9])
def test_the_back_off_never_exceeds_its_cap(failures: int) -> None:
    for _ in range(2000):
        assert 0 < backoff_delay(failures, 0.5, 5.0) <= 5.0


def test_the_back_off_doubles_from_its_base_and_jitter_only_shortens_it() -> None:
    for failures, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 5.0), (6, 5.0)]:
        delays = [backoff_delay(failures, 0.5, 5.0) for _ in range(2000)]
        assert ceiling / 2 <= min(delays) and max(delays) <= ceiling
        assert max(delays) - min(delays) > ceiling / 4  # spread: gateways do not return together


def test_the_probe_after_a_silent_drop_spreads_a_fleet_over_a_quarter_to_two_seconds() -> None:
    """A broker restart drops a thousand gateways at one instant: their quick probes must
    not arrive in one burst (bench/fleet_bench.py measured ~300 in 100 ms before)."""
    delays = sorted(probe_delay(0.5, 5.0) for _ in range(1000))
    assert delays[0] >= 0.25 and delays[-1] <= 2.0
    busiest = max(
        sum(1 for d in delays if start <= d < start + 0.1)
        for start in (x / 100 for x in range(200))
    )
    assert busiest <= 90  # 1,000 spread over 1.75 s: ~57 per 100 ms on average
    # bounded by reconnect_max, and never below half of reconnect_min
    assert all(0.05 <= probe_delay(0.1, 0.25) <= 0.25 for _ in range(500))
    assert all(1.0 <= probe_delay(2.0, 2.0) <= 2.0 for _ in range(500))


def test_a_taken_over_session_waits_half_a_minute_or_more_and_at_most_five_minutes() -> None:
    first = [backoff_delay(1, *TAKEOVER_BACKOFF) for _ in range(500)]
    late = [backoff_delay(20, *TAKEOVER_BACKOFF) for _ in range(500)]
    assert min(first) >= 30 and max(first) <= 60
    assert min(late) >= 150 and max(late) <= 300


def test_a_refused_lane_retries_within_seconds_and_at_least_every_minute() -> None:
    assert [max(backoff_delay(n, *DENIED_RETRY) for _ in range(500)) for n in (1, 10)] <= [
        2.0,
        60.0,
    ]


def test_the_default_settings_bring_data_back_within_ten_seconds_of_the_link_returning() -> None:
    cfg = MqttConfig()
    assert cfg.protocol == "5"
    # An attempt begun just before the link returned runs out its connect_timeout; the next
    # one starts at most reconnect_max after the previous one started (delays count from
    # the start of an attempt), so the first good attempt begins within the longer of the two.
    assert max(cfg.connect_timeout, cfg.reconnect_max) + 1.0 <= 10.0
    # A connection that lost bytes and came back is given up publish_timeout after its last
    # PUBACK at the latest, and reconnecting takes one short delay.
    assert cfg.publish_timeout + cfg.reconnect_min + 1.0 <= 10.0
    # The broker publishes our last will within 1.5 keepalives of silence.
    assert 1.5 * cfg.keepalive <= 15.0


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("keepalive", "20h", "less than or equal to 65535"),
        ("connect_timeout", "100ms", "greater than or equal to 0.5"),
        ("reconnect_max", "2h", "less than or equal to 3600"),
        ("publish_timeout", "500ms", "greater than or equal to 1"),
    ],
)
def test_uplink_timings_outside_sensible_bounds_are_refused(key: str, value: str, why: str) -> None:
    with pytest.raises(ValidationError, match=why):
        MqttConfig.model_validate({key: value})


def test_reason_codes_are_named_in_words_with_their_number() -> None:
    assert reason_text(ReasonCode(PacketTypes.PUBACK, identifier=0x87)) == (
        "Not authorized (reason code 0x87)"
    )
    assert reason_text(ReasonCode(PacketTypes.DISCONNECT, identifier=0x8E)) == (
        "Session taken over (reason code 0x8E)"
    )


def test_a_disconnect_saying_session_taken_over_is_a_takeover() -> None:
    code = ReasonCode(PacketTypes.DISCONNECT, identifier=0x8E)
    end = describe_ending(Ending(True, code, None), keepalive=10, refused=False)
    assert end.kind == "takeover" and end.code == 0x8E


@pytest.mark.parametrize(
    ("code", "from_broker", "kind", "words"),
    [
        (0x8B, True, "disconnected", "the broker is shutting down"),
        (0x97, True, "disconnected", "Quota exceeded"),
        (0x8D, False, "keepalive", "did not answer within the keepalive (10s)"),
        (0x82, False, "protocol", "a packet we could not read"),
        (0x80, False, "closed", "closed the connection without a word"),
    ],
)
def test_every_way_a_connection_ends_is_said_in_words(
    code: int, from_broker: bool, kind: str, words: str
) -> None:
    reason = ReasonCode(PacketTypes.DISCONNECT, identifier=code)
    end = describe_ending(Ending(from_broker, reason, None), keepalive=10, refused=False)
    assert end.kind == kind and words in end.reason and "[code:" not in end.reason


@pytest.mark.parametrize(
    ("cause", "words"),
    [
        (ConnectionRefusedError(111, "Connection refused"), "nothing accepts connections at"),
        (TimeoutError("timed out"), "did not answer within 5s (TCP connect timed out)"),
        (socket.gaierror(-2, "Name or service not known"), "cannot resolve the broker's host"),
        (ssl.SSLError(1, "wrong version number"), "TLS handshake with h:1883 failed"),
        (OSError(113, "No route to host"), "cannot connect to h:1883 (No route to host)"),
    ],
)
def test_every_way_a_connect_fails_is_said_in_words(cause: BaseException, words: str) -> None:
    reason, code = describe_connect_failure(RuntimeError(str(cause)), cause, "h:1883", 5.0)
    assert words in reason and code is None
