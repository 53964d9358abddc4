"""``HOST:PORT`` text, both ways, for the CLI and the dashboard."""

from __future__ import annotations

import ipaddress

DEFAULT_HOST = "127.0.0.1"


def parse_address(text: str) -> tuple[str, int]:
    """``"HOST:PORT"``, ``"[::1]:PORT"`` or a bare ``"PORT"`` (on
    127.0.0.1) as ``(host, port)``.

    Raises:
        ValueError: not an address with a port in 1..65535.
    """
    text = text.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = DEFAULT_HOST, text
    host = host.strip("[]") or DEFAULT_HOST
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"expected HOST:PORT (e.g. 127.0.0.1:8001), got {text!r}") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"the port must be in 1..65535, got {port}")
    return host, port


def join_address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets (``[::1]:8001``): the
    inverse of :func:`parse_address`."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
