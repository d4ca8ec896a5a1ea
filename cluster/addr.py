"""HOST:PORT, parsed and written in one place.

    parse_hostport("10.0.0.1:4317")                      -> ("10.0.0.1", 4317)
    parse_hostport("[::1]:4317")                         -> ("::1", 4317)
    parse_hostport(":4317", default_host="0.0.0.0")      -> ("0.0.0.0", 4317)
    parse_hostport("0.0.0.0:0", allow_port_zero=True)    -> ("0.0.0.0", 0)   a listener: any free port
    format_hostport("::1", 4317)                         -> "[::1]:4317"

The port is the part after the last colon, so an IPv6 host without brackets (`::1:4317`) reads
as host `::1`, as it always has here; `format_hostport` writes brackets around any host with a
colon. The host itself is not checked further (a name, an IPv4 or an IPv6 address): whoever
connects or binds says whether it exists.
"""

from __future__ import annotations


def parse_hostport(text: str, *, default_host: str | None = None, allow_port_zero: bool = False) -> tuple[str, int]:
    """(host, port) of `HOST:PORT` or `[IPV6]:PORT`, brackets removed.

    An empty host (`:4317`) is `default_host`, or a ValueError when there is none. The port is
    1-65535, or 0-65535 with `allow_port_zero` (a listener that takes any free port). Every
    ValueError says `... is not HOST:PORT` and why.
    """
    if text.startswith("["):
        host, close, rest = text[1:].partition("]")
        if not close:
            raise ValueError(f"{text!r} is not HOST:PORT: no ']' after the host")
        if not rest.startswith(":"):
            raise ValueError(f"{text!r} is not HOST:PORT: " + ("no port" if not rest else "':PORT' must follow ']'"))
        port = rest[1:]
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError(f"{text!r} is not HOST:PORT: no port")
        if "[" in host or "]" in host:
            raise ValueError(f"{text!r} is not HOST:PORT: brackets go around the whole host")
    if not host:
        if default_host is None:
            raise ValueError(f"{text!r} is not HOST:PORT: no host")
        host = default_host
    if not port:
        raise ValueError(f"{text!r} is not HOST:PORT: no port")
    if not (port.isascii() and port.isdigit()):
        raise ValueError(f"{text!r} is not HOST:PORT: the port {port!r} is not a number")
    number = int(port)
    low = 0 if allow_port_zero else 1
    if not low <= number <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT: the port must be {low}-65535")
    return host, number


def format_hostport(host: str, port: int) -> str:
    """`host:port`, with the host in brackets when it is an IPv6 address (has a colon)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
