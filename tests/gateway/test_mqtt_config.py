"""The [mqtt] section: what the broker would refuse or never deliver is a config error
with its key path, never a traceback at start (issue 8, section 4)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.settings import parse_config

DEVICE = """
[[devices]]
name = "pump"
protocol = "modbus_tcp"
host = "127.0.0.1"
points = [{ name = "p", address = 0 }]
"""


def problems(mqtt: str) -> list[str]:
    text = f'[gateway]\nid = "gw"\n[mqtt]\n{mqtt}\n{DEVICE}'
    with pytest.raises(ConfigError) as err:
        parse_config(text.encode())
    return err.value.problems


@pytest.mark.parametrize(
    ("mqtt", "key", "said"),
    [
        ('topic_prefix = "city\\u0000x"', "mqtt.topic_prefix", "control characters"),
        ('topic_prefix = "$SYS/x"', "mqtt.topic_prefix", "starts with '$'"),
        ('topic_prefix = "city/+"', "mqtt.topic_prefix", "wildcard"),
        (f'topic_prefix = "{"c" * 70000}"', "mqtt.topic_prefix", "longer than MQTT allows"),
        (f'topic_prefix = "{"c" * 2000}"', "mqtt.topic_prefix", "at most 1000"),
        ('topic_prefix = "city//north"', "mqtt.topic_prefix", "empty topic levels"),
        ('topic_prefix = ""', "mqtt.topic_prefix", "is empty"),
        (f'client_id = "{"x" * 70000}"', "mqtt.client_id", "longer than MQTT allows"),
        ('client_id = "gw\\n2"', "mqtt.client_id", "control characters"),
        ('keepalive = "70000s"', "mqtt.keepalive", "65535"),
        ('port = "15020"', "mqtt.port", "write numbers without quotes: port = 15020"),
        ('host = "mqtt://broker.example"', "mqtt.host", "has a scheme"),
        ('host = "broker.example:8883"', "mqtt.host", "has a port"),
        ('password = "secret"', "mqtt.password", "username is not"),
    ],
    ids=[
        "prefix-nul",
        "prefix-dollar",
        "prefix-wildcard",
        "prefix-over-65535-bytes",
        "prefix-too-long",
        "prefix-empty-level",
        "prefix-empty",
        "client-id-over-65535-bytes",
        "client-id-newline",
        "keepalive-over-16-bits",
        "port-as-text",
        "host-with-scheme",
        "host-with-port",
        "password-without-user",
    ],
)
def test_an_undeliverable_mqtt_setting_is_an_error_naming_its_key(
    mqtt: str, key: str, said: str
) -> None:
    found = problems(mqtt)
    assert any(p.startswith(f"{key}:") and said in p for p in found), found


def test_a_ca_file_that_is_not_a_certificate_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("this is not a certificate\n")
    found = problems(f'[mqtt.tls]\nca_file = "{bogus}"')
    assert any(p.startswith("mqtt.tls.ca_file:") and "no usable CA" in p for p in found), found


@pytest.mark.rig  # a process of its own
def test_a_client_certificate_without_its_key_is_an_error(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    key = tmp_path / "ca.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
         "/CN=test-ca", "-keyout", str(key), "-out", str(ca)],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    other_key = tmp_path / "other.key"
    subprocess.run(
        ["openssl", "genrsa", "-out", str(other_key), "2048"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    found = problems(f'[mqtt.tls]\nca_file = "{ca}"\ncert_file = "{ca}"\nkey_file = "{other_key}"')
    assert any(p.startswith("mqtt.tls.cert_file:") for p in found), found
