"""Configs that used to validate and then break (or crash `validate`) are errors now:
the key path, the reason in words, a hint where one helps. Issue 8."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.core.config_types import MAX_SIZE, host_problem, parse_duration, parse_size
from gateway.settings import parse_config
from tests.gateway.configs import GATEWAY, MINIMAL, problems, tcp_device


def one_problem(text: str) -> str:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


# --- numbers too large for anything ------------------------------------------------------


def test_a_size_of_400_digits_is_refused_not_an_overflow() -> None:
    found = one_problem(MINIMAL + f"[buffer]\nmax_bytes = '{'9' * 400}MB'\n")
    assert found.startswith("buffer.max_bytes: '999")
    assert "too large: sizes are at most 1TB" in found


def test_an_enormous_heartbeat_is_refused_not_an_overflow() -> None:
    text = MINIMAL.replace(
        "address = 0 }",
        f"address = 0, process = {{ deadband = 1.0, heartbeat = '{'9' * 400}h' }} }}",
    )
    found = one_problem(text)
    assert found.startswith("devices[0].points[0].process.heartbeat: ")
    assert "too long: durations are at most 8760h (a year)" in found


@pytest.mark.parametrize("text", ["8761h", "31536001s", "525601m", "1e3s", "inf s", "nan"])
def test_durations_beyond_a_year_or_not_numbers_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_the_longest_duration_and_the_largest_size_are_accepted() -> None:
    assert parse_duration("8760h") == 8760 * 3600
    assert parse_size("1TB") == MAX_SIZE
    with pytest.raises(ValueError, match="at most 1TB"):
        parse_size("1TiB")


def test_a_positive_duration_below_a_millisecond_is_refused() -> None:
    found = one_problem(
        MINIMAL.replace('host = "127.0.0.1"', 'host = "127.0.0.1"\ntimeout = "0.1ms"')
    )
    assert (
        found
        == "devices[0].timeout: '0.1ms' is shorter than 1ms, the finest time the gateway keeps"
    )


@given(st.one_of(st.text(max_size=30), st.from_regex(r"[0-9]{1,500}(\.[0-9]{1,50})?(ms|s|m|h)")))
def test_duration_parsing_is_total(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except ValueError:
        return
    assert 0 <= seconds <= 8760 * 3600


@given(
    st.one_of(
        st.text(max_size=30),
        st.from_regex(r"[0-9]{1,500}(\.[0-9]{1,50})?(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)"),
    )
)
def test_size_parsing_is_total(text: str) -> None:
    try:
        size = parse_size(text)
    except ValueError:
        return
    assert 0 <= size <= MAX_SIZE


def test_an_integer_of_5000_digits_is_refused_as_toml_in_words() -> None:
    found = one_problem(MINIMAL.replace("address = 0", f"address = {'9' * 5000}"))
    assert found.startswith("not valid TOML: ")
    assert "4300 digits" in found and "set_int_max_str_digits" not in found


def test_an_integer_of_400_digits_is_named_by_its_length_not_printed() -> None:
    found = one_problem(MINIMAL.replace("address = 0", f"address = {'9' * 400}"))
    assert found.startswith("devices[0].points[0].address: ")
    assert "a number of 400 digits" in found and "9999999999" not in found


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e400"])
def test_infinite_and_nan_numbers_are_refused(value: str) -> None:
    found = one_problem(MINIMAL.replace("address = 0", f"address = 0, scale = {value}"))
    assert found.startswith("devices[0].points[0].scale: ")
    assert "not a finite number" in found


# --- nesting --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "nested",
    [
        "x = " + "[" * 2000 + "]" * 2000,
        "x = " + "{a = " * 500 + "1" + "}" * 500,
        ".".join(["a"] * 3000) + " = 1",
        "[" + ".".join(["t"] * 40) + "]\nk = 1",
    ],
    ids=["arrays", "inline-tables", "dotted-keys", "table-header"],
)
def test_tables_and_arrays_nested_too_deeply_are_refused_in_words(nested: str) -> None:
    found = one_problem(nested + "\n" + MINIMAL)
    assert "nested too deeply (more than 16 levels)" in found


# --- no silent conversion -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        (
            ('host = "127.0.0.1"', 'host = "127.0.0.1"\nport = "15020"'),
            "devices[0].port: '15020' is text; write numbers without quotes: port = 15020",
        ),
        (
            ("address = 0", 'address = 0, scale = "0.1"'),
            "devices[0].points[0].scale: '0.1' is text; write numbers without quotes: scale = 0.1",
        ),
        (
            ("address = 0", 'address = "0x10"'),
            "devices[0].points[0].address: '0x10' is text, not a whole number",
        ),
        (
            ("address = 0", "address = 3.0"),
            "devices[0].points[0].address: 3.0 has a decimal point; write whole numbers "
            "without one: address = 3",
        ),
        (
            ("address = 0", "address = 2.5"),
            "devices[0].points[0].address: 2.5 is not a whole number",
        ),
        (
            ("address = 0", "address = true"),
            "devices[0].points[0].address: True is true or false, not a whole number",
        ),
        (
            ('host = "127.0.0.1"', 'host = "127.0.0.1"\nunit = "7"'),
            "devices[0].unit: '7' is text; write numbers without quotes: unit = 7",
        ),
    ],
)
def test_a_number_given_as_text_or_a_boolean_is_refused_with_the_line_to_write(
    patch: tuple[str, str], expected: str
) -> None:
    assert one_problem(MINIMAL.replace(*patch)) == expected


def test_an_integer_where_a_number_with_decimals_belongs_is_fine() -> None:
    config = parse_config(MINIMAL.replace("address = 0", "address = 0, scale = 2").encode()).config
    assert config.devices[0].points[0].scale == 2.0


NMEA = (
    GATEWAY
    + """
[[devices]]
name = "gps"
protocol = "serial_line"
port = "/dev/ttyUSB1"
framing = { kind = "delimiter", start = "$" }
parser = { kind = "nmea", sentence = "GGA", fields = { sats = 7 }, PARSER }
points = [{ name = "sats", type = "int" }]
"""
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"true"', "'true' is text; write true or false without quotes: require_checksum = true"),
        ('"no"', "'no' is text; write true or false without quotes: require_checksum = false"),
        ("1", "1 is a number; write true or false: require_checksum = true"),
        ("0", "0 is a number; write true or false: require_checksum = false"),
        (
            '"maybe"',
            "'maybe' is not true or false; write require_checksum = true or require_checksum = false",
        ),
    ],
)
def test_a_boolean_given_as_text_or_a_number_is_refused(value: str, expected: str) -> None:
    found = one_problem(NMEA.replace("PARSER", f"require_checksum = {value}"))
    assert found == f"devices[0].parser.require_checksum: {expected}"


def test_line_settings_that_are_choices_of_numbers_refuse_booleans_and_text() -> None:
    text = NMEA.replace(", PARSER", "").replace(
        'port = "/dev/ttyUSB1"', 'port = "/dev/ttyUSB1"\nstopbits = true\nbytesize = "8"'
    )
    assert problems(text) == [
        "devices[0].stopbits: True is true or false, not a whole number",
        "devices[0].bytesize: '8' is text; write numbers without quotes: bytesize = 8",
    ]  # in the order of the file


# --- hosts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        (
            "mqtt://broker.city.example",
            "has a scheme (mqtt://); write the name alone and the port in `port`: broker.city.example",
        ),
        (
            "modbus://10.0.0.5:502",
            "has a scheme (modbus://); write the name alone and the port in `port`: 10.0.0.5",
        ),
        ("tcp://plc-7", "has a scheme (tcp://)"),
        (
            "10.0.0.5:502",
            "has a port (:502); write the name alone and the port in `port`: 10.0.0.5",
        ),
        (
            "[fe80::1]:502",
            "has a port (:502); write the name alone and the port in `port`: fe80::1",
        ),
        ("plc 7", "contains spaces; write the name alone and the port in `port`"),
        (" 10.0.0.5", "contains spaces"),
        ("", "is empty"),
        ("300.1.2.3", "is not a valid IPv4 address"),
        ("fe80::1::2", "is not a valid IPv6 address"),
        ("plc!7", "is not a host name, an IPv4 or an IPv6 address"),
        ("[::1]", "write an IPv6 address without brackets: ::1"),
    ],
)
def test_a_device_host_with_a_scheme_a_port_or_spaces_is_refused_with_a_hint(
    host: str, expected: str
) -> None:
    found = one_problem(MINIMAL.replace('host = "127.0.0.1"', f'host = "{host}"'))
    assert found.startswith("devices[0].host: ") and expected in found, found


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "::1", "fe80::1%eth0", "plc-7", "plc-7.station.city.example.", "ser2net_3"],
)
def test_host_names_and_addresses_are_accepted(host: str) -> None:
    assert host_problem(host) is None


def test_a_modbus_rtu_over_tcp_host_is_checked_too() -> None:
    text = MINIMAL.replace("modbus_tcp", "modbus_rtu_over_tcp").replace(
        "127.0.0.1", "tcp://gw:4001"
    )
    assert one_problem(text).startswith("devices[0].host: 'tcp://gw:4001' has a scheme")


# --- serial line instruments -------------------------------------------------------------


def test_an_nmea_parser_with_fields_but_no_sentence_is_refused() -> None:
    found = one_problem(NMEA.replace('sentence = "GGA", ', "").replace(", PARSER", ""))
    assert found.startswith("devices[0].parser.sentence: required with fields: ")
    assert "GGA field 7 is the number of satellites, RMC field 7 the speed" in found


def test_an_nmea_parser_with_coordinates_but_no_sentence_is_refused() -> None:
    text = NMEA.replace(
        'sentence = "GGA", fields = { sats = 7 }, PARSER', "coordinates = { lat = [2, 3] }"
    )
    text = text.replace('{ name = "sats", type = "int" }', '{ name = "lat" }')
    assert one_problem(text).startswith("devices[0].parser.sentence: required with coordinates")


SERIAL = (
    GATEWAY
    + """
[[devices]]
name = "gas"
protocol = "serial_line"
port = "/dev/ttyUSB1"
framing = {framing}
parser = {parser}
points = [{points}]
"""
)


@pytest.mark.parametrize(
    ("framing", "parser", "produced"),
    [
        (
            '{ kind = "delimiter" }',
            """{ kind = "regex", pattern = 'CH4=(?P<ch4>[-\\d.]+);H2S=(?P<h2s>\\d+)' }""",
            "'ch4', 'h2s'",
        ),
        (
            '{ kind = "delimiter" }',
            '{ kind = "delimited", fields = ["ch4", "", "h2s"] }',
            "'ch4', 'h2s'",
        ),
        (
            '{ kind = "delimiter" }',
            '{ kind = "nmea", sentence = "GGA", fields = { sats = 7 }, coordinates = { lat = [2, 3] } }',
            "'sats', 'lat'",
        ),
        (
            '{ kind = "fixed", length = 4 }',
            '{ kind = "binary", layout = ">hh", fields = ["ch4", "h2s"] }',
            "'ch4', 'h2s'",
        ),
    ],
    ids=["regex", "delimited", "nmea", "binary"],
)
def test_a_serial_point_reading_a_field_the_parser_does_not_produce_is_refused(
    framing: str, parser: str, produced: str
) -> None:
    text = SERIAL.format(
        framing=framing, parser=parser, points='{ name = "co" }, { name = "x", field = "ch5" }'
    )
    assert problems(text) == [
        "devices[0].points[0].name: the point reads the field 'co' (its name, as no `field` "
        f"is set), which the parser does not produce; the parser produces {produced}: set "
        "`field` to one of them",
        f"devices[0].points[1].field: 'ch5' is not a field of the parser; the parser produces {produced}",
    ]


def test_a_poll_command_that_is_not_hex_is_refused_before_start() -> None:
    text = SERIAL.format(
        framing='{ kind = "delimiter" }',
        parser="""{ kind = "regex", pattern = '(?P<co>\\d+)' }""",
        points='{ name = "co" }',
    ).replace(
        'port = "/dev/ttyUSB1"', 'port = "/dev/ttyUSB1"\nmode = "polled"\npoll_command_hex = "ZZ"'
    )
    assert (
        one_problem(text)
        == "devices[0].poll_command_hex: poll_command_hex 'ZZ' is not hex bytes, e.g. 'AA55'"
    )


def test_a_serial_port_with_a_nul_character_is_refused() -> None:
    text = NMEA.replace(", PARSER", "").replace('"/dev/ttyUSB1"', '"/dev/tty\\u0000USB1"')
    assert one_problem(text).startswith(
        "devices[0].port: '/dev/tty\\x00USB1' contains a NUL character"
    )


# --- ports on a serial device server (rfc2217://) ----------------------------------------------

RTU = GATEWAY + (
    '[[devices]]\nname = "meter"\nprotocol = "modbus_rtu"\nport = "PORT"\n'
    'points = [{ name = "p", address = 0 }]\n'
)


@pytest.mark.parametrize(
    "port",
    [
        "rfc2217://10.0.0.9:4001",
        "rfc2217://moxa-3.cabinet:950?timeout=5",
        "rfc2217://[fe80::1]:4001",
    ],
)
def test_a_modbus_rtu_device_may_sit_behind_a_serial_device_server(port: str) -> None:
    loaded = parse_config(RTU.replace("PORT", port).encode(), "test.toml")
    assert loaded.config.devices[0].port == port  # type: ignore[union-attr]
    assert loaded.warnings == ()  # a network port is not looked for under /dev


@pytest.mark.parametrize(
    ("port", "expected"),
    [
        ("rfc2217://10.0.0.9", "names no TCP port; write rfc2217://HOST:PORT"),
        ("rfc2217://:4001", "names no host"),
        ("rfc2217://10.0.0.9:70000", "the TCP port is not a number from 1 to 65535"),
        ("rfc2217://10.0.0.9:4001/tty1", "nothing may follow the port but options"),
        ("rfc2217://10.0.0.9:4001?timeout=soon", "is a number of seconds from 0.1 to 10"),
        ("rfc2217://10.0.0.9:4001?timeout=60", "timeout='60': the wait for each step"),
        ("rfc2217://10.0.0.9:4001?timeout=0.01", "is a number of seconds from 0.1 to 10"),
        ("rfc2217://10.0.0.9:4001?poll_modem=false", "poll_modem takes no value"),
        ("rfc2217://10.0.0.9:4001?logging=debug", "[gateway] log_level says what it logs"),
        ("RFC2217://10.0.0.9:4001", "write the scheme in lower case, rfc2217://"),
        ("rfc2217://10.0.0.9:4001?baud=9600", "unknown option 'baud' (pyserial knows timeout"),
        ("socket://10.0.0.9:4001", 'protocol = "modbus_rtu_over_tcp" with its host and port'),
        ("loop://", "is not a serial device: name one, e.g. /dev/ttyUSB0, or a serial device"),
    ],
)
def test_a_port_url_pyserial_would_refuse_or_misread_is_refused_in_words(
    port: str, expected: str
) -> None:
    found = one_problem(RTU.replace("PORT", port))
    assert found.startswith(f"devices[0].port: {port!r}") and expected in found, found


def test_a_line_instrument_may_sit_behind_a_serial_device_server_too() -> None:
    text = NMEA.replace(", PARSER", "").replace('"/dev/ttyUSB1"', '"rfc2217://10.0.0.9:4001"')
    loaded = parse_config(text.encode(), "test.toml")
    assert loaded.config.devices[0].port == "rfc2217://10.0.0.9:4001"  # type: ignore[union-attr]
    assert loaded.warnings == ()


# --- the buffer ------------------------------------------------------------------------------


def test_a_buffer_path_that_is_an_existing_directory_is_refused_with_a_file_to_name(
    tmp_path: Path,
) -> None:
    found = one_problem(MINIMAL + f"[buffer]\npath = '{tmp_path}'\n")
    assert (
        found
        == f"buffer.path: {tmp_path} is a directory; name a file in it, e.g. {tmp_path / 'buffer.db'}"
    )


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("", "buffer.path: is empty; name a file, e.g. /var/lib/edge-gateway/buffer.db"),
        ("  ", "buffer.path: is empty; name a file, e.g. /var/lib/edge-gateway/buffer.db"),
        (
            "/srv/nothing-here/",
            "buffer.path: '/srv/nothing-here/' names a directory (it ends with '/'); name a "
            "file in it, e.g. /srv/nothing-here/buffer.db",
        ),
        ("/dev/null", "buffer.path: /dev/null is not a regular file"),
    ],
)
def test_an_empty_buffer_path_or_one_naming_a_directory_is_refused(
    path: str, expected: str
) -> None:
    assert one_problem(MINIMAL + f"[buffer]\npath = '{path}'\n").startswith(expected)


# --- every problem in one run, names used twice first --------------------------------------


def test_a_device_name_used_twice_is_reported_as_such_not_as_a_missing_alarm_point() -> None:
    text = (
        GATEWAY
        + tcp_device('{ name = "y", address = 0 }', name="x")
        + tcp_device('{ name = "z", address = 0 }', name="x").replace("127.0.0.1", "10.0.0.2")
        + '[[alarms]]\nname = "a"\nkind = "threshold"\ndevice = "x"\npoint = "y"\nhigh = 1.0\n'
    )
    assert problems(text) == [
        "devices[1].name: device name 'x' is used twice (devices[0].name and devices[1].name)"
    ]


def test_names_used_twice_are_reported_first_even_when_other_parts_are_broken() -> None:
    text = (
        GATEWAY.replace("gw-1", "gw 1")
        + tcp_device('{ name = "p", address = 0 }, { name = "p", address = "1" }', name="x")
        + tcp_device('{ name = "q", address = 0 }', name="x").replace("127.0.0.1", "tcp://b")
        + '[[alarms]]\nname = "a"\nkind = "threshold"\ndevice = "x"\npoint = "p"\nhigh = 1.0\n'
        + '[[alarms]]\nname = "a"\nkind = "threshold"\ndevice = "x"\npoint = "p"\n'
    )
    assert problems(text) == [
        "devices[1].name: device name 'x' is used twice (devices[0].name and devices[1].name)",
        "devices[0].points[1].name: point name 'p' is used twice "
        "(devices[0].points[0].name and devices[0].points[1].name)",
        "alarms[1].name: alarm name 'a' is used twice (alarms[0].name and alarms[1].name)",
        "gateway.id: 'gw 1' is not a valid name: use 1-64 letters, digits, '_', '.' or '-'",
        "devices[0].points[1].address: '1' is text; write numbers without quotes: address = 1",
        "devices[1].host: 'tcp://b' has a scheme (tcp://); write the name alone and the port "
        "in `port`: b",
        "alarms[1]: a threshold alarm needs high, low or both",
    ]


def test_cross_checks_are_reported_after_field_problems_for_the_parts_that_are_valid() -> None:
    text = (
        MINIMAL.replace('id = "gw-1"', 'id = "gw 1"')
        + tcp_device('{ name = "e", address = 0 }', name="meter")
        + '[[alarms]]\nname = "a"\nkind = "threshold"\ndevice = "pmup"\npoint = "p"\nhigh = 1.0\n'
        + '[[alarms]]\nname = "b"\nkind = "rate_of_rise"\ndevice = "pump"\npoint = "q"\n'
        'max_rise = 1.0\nper = "1m"\n'
    )
    assert problems(text) == [
        "gateway.id: 'gw 1' is not a valid name: use 1-64 letters, digits, '_', '.' or '-'",
        "alarms[0].device: there is no device 'pmup' (devices: 'meter', 'pump')",
        "alarms[1].point: device 'pump' has no point 'q' (its points: 'p')",
        "devices[1].unit: devices[1] and devices[0] are both unit 1 on 127.0.0.1:502: each "
        "slave on a line answers to its own unit id",
    ]


def test_an_alarm_on_a_device_that_is_itself_broken_is_not_reported_twice() -> None:
    text = MINIMAL.replace("address = 0", "address = -1") + (
        '[[alarms]]\nname = "a"\nkind = "threshold"\ndevice = "pump"\npoint = "p"\nhigh = 1.0\n'
    )
    assert problems(text) == [
        "devices[0].points[0].address: Input should be greater than or equal to 0 (got -1)"
    ]


def test_every_problem_of_one_section_is_reported_not_only_the_first() -> None:
    text = MINIMAL.replace(
        "address = 0",
        "address = 0, process = { min = 5.0, max = 1.0, deadband = 1.0, deadband_percent = 2.0 }",
    )
    assert problems(text) == [
        "devices[0].points[0].process.max: min 5 must be below max 1",
        "devices[0].points[0].process.deadband_percent: set deadband or deadband_percent, not both",
    ]


def test_two_slaves_with_one_unit_id_on_one_bus_are_refused() -> None:
    rtu = '[[devices]]\nname = "{}"\nprotocol = "modbus_rtu"\nport = "/dev/ttyUSB0"\npoints = [{{ name = "p", address = 0 }}]\n'
    found = one_problem(GATEWAY + rtu.format("a") + rtu.format("b"))
    assert found == (
        "devices[1].unit: devices[1] and devices[0] are both unit 1 on /dev/ttyUSB0: each "
        "slave on a line answers to its own unit id"
    )


@pytest.mark.parametrize(
    ("address", "table", "zero_based"),
    [
        (300053, "input", 52),
        (400001, "holding", 0),
        (465536, "holding", 65535),
        (100010, "discrete_input", 9),
    ],
)
def test_a_six_digit_datasheet_address_is_refused_with_the_0_based_address(
    address: int, table: str, zero_based: int
) -> None:
    found = one_problem(MINIMAL.replace("address = 0", f"address = {address}"))
    assert found == (
        f"devices[0].points[0].address: {address} is above 65535; it looks like register "
        f"{address} of a datasheet (6-digit notation); addresses here are 0-based: write "
        f'register = {address}, or table = "{table}", address = {zero_based}'
    )


@pytest.mark.parametrize("protocol", ["modbus_rtu", "modbus_rtu_over_tcp"])
def test_unit_0_on_a_serial_bus_is_refused_as_the_broadcast_address(protocol: str) -> None:
    text = MINIMAL.replace("modbus_tcp", protocol).replace(
        'host = "127.0.0.1"', 'host = "127.0.0.1"\nport = "/dev/ttyUSB0"\nunit = 0'
    )
    if protocol == "modbus_rtu":
        text = text.replace('host = "127.0.0.1"\n', "")
    else:
        text = text.replace('port = "/dev/ttyUSB0"\n', "")
    assert one_problem(text) == (
        "devices[0].unit: unit 0 is the broadcast address on a serial bus: no slave answers "
        "a read sent to it; use the slave's own id (1-247)"
    )


def test_unit_0_is_fine_for_modbus_tcp() -> None:
    text = MINIMAL.replace('host = "127.0.0.1"', 'host = "127.0.0.1"\nunit = 0')
    assert parse_config(text.encode()).config.devices[0].unit == 0


def test_one_server_port_written_two_ways_is_one_bus_and_must_be_written_alike() -> None:
    two = RTU.replace("PORT", "rfc2217://Moxa-3:4001") + RTU.replace(
        "PORT", "rfc2217://moxa-3:4001?timeout=2"
    ).replace('name = "meter"', 'name = "meter2"').replace(GATEWAY, "")
    found = problems(two)
    assert any(
        p.startswith(
            "devices[1].port: devices[1] and devices[0] share the bus on "
            "rfc2217://moxa-3:4001 but their port differs"
        )
        for p in found
    ), found
    assert any(
        "devices[1] and devices[0] are both unit 1 on rfc2217://moxa-3:4001" in p for p in found
    ), found
