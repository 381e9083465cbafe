"""The uplink over mutual TLS with a username and password, against a real mosquitto."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
from rig import GatewayProcess, Subscriber, gateway_config, modbus_device

from drivers.modbus.decode import DataType, Table
from drivers.sim.modbus import ModbusSimServer, SimulatedDevice, free_tcp_port
from gateway.devtools.broker import Mosquitto

POINT = '{ name = "level", table = "input", address = 0, type = "float32" }'


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(d: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        cwd=d,
    )
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        openssl(
            "req",
            *ec,
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
            cwd=d,
        )
        openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.crt",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            cwd=d,
        )
    # A second CA the broker does not trust.
    openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "other.key",
        "-out",
        "other.crt",
        "-days",
        "2",
        "-subj",
        "/CN=other-ca",
        cwd=d,
    )


@pytest.fixture
def secure_broker(tmp_path: Path):  # type: ignore[no-untyped-def]
    pki = tmp_path / "pki"
    pki.mkdir()
    make_pki(pki)
    passwords = tmp_path / "passwd"
    passwords.touch()
    for user, password in (("cabinet-0412", "s3cret"), ("centre", "c3ntre")):
        subprocess.run(
            ["mosquitto_passwd", "-b", str(passwords), user, password],
            check=True,
            capture_output=True,
            timeout=30,
        )
    tls_port = free_tcp_port()
    broker = Mosquitto(
        tmp_path / "broker",
        extra_config=(
            "allow_anonymous false\n"
            f"password_file {passwords}\n"
            f"listener {tls_port} 127.0.0.1\n"
            f"cafile {pki / 'ca.crt'}\ncertfile {pki / 'server.crt'}\n"
            f"keyfile {pki / 'server.key'}\nrequire_certificate true\n"
        ),
    )
    broker.start()
    yield broker, tls_port, pki
    broker.kill()


def tls_section(pki: Path, ca: str = "ca.crt", password: str = "s3cret") -> str:
    return (
        f'username = "cabinet-0412"\npassword = "{password}"\n'
        f'[mqtt.tls]\nca_file = "{pki / ca}"\n'
        f'cert_file = "{pki / "client.crt"}"\nkey_file = "{pki / "client.key"}"\n'
    )


def level_device() -> SimulatedDevice:
    device = SimulatedDevice(unit=1)
    device.set_value(Table.INPUT, 0, 1.75, DataType.FLOAT32)
    return device


async def run_for(gp: GatewayProcess, sub: Subscriber, seconds: float) -> None:
    gp.start()
    await asyncio.to_thread(gp.wait_started)
    await asyncio.sleep(seconds)
    await asyncio.to_thread(gp.stop)


async def test_readings_arrive_over_mutual_tls_with_username_and_password(
    tmp_path: Path, secure_broker, gateway_process
) -> None:
    broker, tls_port, pki = secure_broker
    sub = Subscriber(broker, username="centre", password="c3ntre")
    try:
        async with ModbusSimServer([level_device()]) as sim:
            gp = gateway_process(
                gateway_config(
                    broker_port=tls_port,
                    buffer_path=tmp_path / "buffer.db",
                    devices=modbus_device("gauge", sim.port, 1, POINT),
                    extra_mqtt=tls_section(pki),
                )
            )
            gp.start()
            await sub.wait_async(lambda: len(sub.readings("gauge")) >= 5, 20, "readings over TLS")
            assert await asyncio.to_thread(gp.stop) == 0
    finally:
        sub.close()
    assert {r.value for r in sub.readings("gauge")} == {1.75}
    assert f"connected to MQTT broker 127.0.0.1:{tls_port}" in gp.log


@pytest.mark.parametrize(
    ("ca", "password", "why"),
    [
        ("other.crt", "s3cret", "certificate verify failed"),
        ("ca.crt", "wrong", "Not authorized"),
    ],
    ids=["untrusted-broker-certificate", "wrong-password"],
)
async def test_a_refused_connection_is_logged_once_and_readings_stay_on_disk(
    tmp_path: Path, secure_broker, gateway_process, ca: str, password: str, why: str
) -> None:
    _broker, tls_port, pki = secure_broker
    async with ModbusSimServer([level_device()]) as sim:
        gp = gateway_process(
            gateway_config(
                broker_port=tls_port,
                buffer_path=tmp_path / "buffer.db",
                devices=modbus_device("gauge", sim.port, 1, POINT),
                extra_mqtt=tls_section(pki, ca=ca, password=password),
            )
        )
        gp.start()
        await asyncio.to_thread(gp.wait_started)  # it polls from here (about 10 polls a second)
        await asyncio.sleep(1.5)
        assert await asyncio.to_thread(gp.stop) == 0
    log = gp.log
    assert log.count("cannot reach the MQTT broker") == 1, log
    assert why in log, log
    remaining = int(log.rsplit("stopped; ", 1)[1].split(" batch")[0])
    assert remaining >= 3, log
