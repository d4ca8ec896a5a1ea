"""HOST:PORT: the one parser every flag and peer list goes through, and its writer."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.addr import format_hostport, parse_hostport


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.1:4317", ("10.0.0.1", 4317)),
        ("ingestor-0.ingestor.adx-mon.svc:4317", ("ingestor-0.ingestor.adx-mon.svc", 4317)),
        ("[::1]:4317", ("::1", 4317)),
        ("[fd00::2]:1", ("fd00::2", 1)),
        ("::1:4317", ("::1", 4317)),  # no brackets: the port is after the last colon
        ("h:65535", ("h", 65535)),
    ],
)
def test_host_and_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text) == expected


def test_an_empty_host_is_the_default_host_when_there_is_one() -> None:
    assert parse_hostport(":4317", default_host="0.0.0.0") == ("0.0.0.0", 4317)
    assert parse_hostport("[]:4317", default_host="") == ("", 4317)
    with pytest.raises(ValueError, match="is not HOST:PORT: no host"):
        parse_hostport(":4317")


def test_port_zero_only_for_a_listener() -> None:
    assert parse_hostport("127.0.0.1:0", allow_port_zero=True) == ("127.0.0.1", 0)
    with pytest.raises(ValueError, match="the port must be 1-65535"):
        parse_hostport("127.0.0.1:0")
    with pytest.raises(ValueError, match="the port must be 0-65535"):
        parse_hostport("127.0.0.1:65536", allow_port_zero=True)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("host", "no port"),
        ("host:", "no port"),
        ("[::1]", "no port"),
        ("host:http", "the port 'http' is not a number"),
        ("host:-1", "is not a number"),
        ("host:²", "is not a number"),
        ("host:70000", "the port must be 1-65535"),
        ("[::1:4317", "no ']' after the host"),
        ("[::1]x:4317", "':PORT' must follow ']'"),
        ("a]:4317", "brackets go around the whole host"),
        ("", "no port"),
    ],
)
def test_what_is_refused_says_why(text: str, why: str) -> None:
    with pytest.raises(ValueError, match="is not HOST:PORT: ") as e:
        parse_hostport(text, default_host="x")
    assert why in str(e.value) and repr(text) in str(e.value)


def test_format_brackets_ipv6_hosts() -> None:
    assert format_hostport("10.0.0.1", 4317) == "10.0.0.1:4317"
    assert format_hostport("fd00::2", 4317) == "[fd00::2]:4317"


host_names = st.from_regex(r"[a-z0-9]([a-z0-9.-]{0,30}[a-z0-9])?", fullmatch=True)
ipv6 = st.ip_addresses(v=6).map(str)


@given(host=st.one_of(host_names, ipv6), port=st.integers(1, 65535))
def test_format_then_parse_is_the_identity(host: str, port: int) -> None:
    assert parse_hostport(format_hostport(host, port)) == (host, port)
