"""The rig library: what a test of the gateway stands on, shipped with it.

A private mosquitto (`Mosquitto`), the gateway as a process (`GatewayProcess`,
`GatewayFactory`, configs from `gateway_config` / `modbus_device` / `rtu_device`), a link
that fails on cue (`LinkProxy`: down, blackhole, slow) and the centre's side
(`Collector`: decodes, keeps each `(gateway, boot, seq)` once, and accounts for every
batch per gateway with the centre's own `gateway.centre.accounting`).
Simulated devices are `edge-gateway simulate`'s (`SimulatorProcess`, faults through its
control socket) or, in the test's event loop, `drivers.sim`'s. The pytest fixtures
(`edge_broker`, `edge_collector`, `edge_gateway`, `edge_proxy`, `edge_simulator`) are in
`gateway.devtools.pytest_plugin`, which pytest loads by itself. docs/test-rigs.md is the
guide.

Everything listens and connects on 127.0.0.1 only, and every wait has a deadline.
"""

from gateway.devtools.broker import BrokerError, Mosquitto
from gateway.devtools.rig.collector import Collector, Endpoint
from gateway.devtools.rig.configs import gateway_config, modbus_device, rtu_device
from gateway.devtools.rig.process import GatewayFactory, GatewayProcess
from gateway.devtools.rig.proxy import Direction, LinkProxy, LinkProxyError
from gateway.devtools.rig.simulator import SimulatorError, SimulatorProcess
from gateway.devtools.rig.waiting import RigTimeout, wait_until, wait_until_async

__all__ = [
    "BrokerError",
    "Collector",
    "Direction",
    "Endpoint",
    "GatewayFactory",
    "GatewayProcess",
    "LinkProxy",
    "LinkProxyError",
    "Mosquitto",
    "RigTimeout",
    "SimulatorError",
    "SimulatorProcess",
    "gateway_config",
    "modbus_device",
    "rtu_device",
    "wait_until",
    "wait_until_async",
]
