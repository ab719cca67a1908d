"""Loopback ports for services and the servers tests start: one way to find a free one."""

from __future__ import annotations

import random
import socket
from pathlib import Path

__all__ = ["LOWEST_FREE_PORT", "free_port", "port_in_use", "service_url"]

LOWEST_FREE_PORT = 20_000
_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    """The lowest port the kernel gives outgoing connections (Linux's ip_local_port_range; 32768 elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on `host`, below the kernel's range for outgoing connections.

    A port the kernel picks itself (bind to 0) comes from that range, where any outgoing connection made before
    the service binds it may take it as its local port ("Address already in use" at start, seen in CI).
    """
    low = _ephemeral_low()
    rng = random.SystemRandom()
    for _ in range(200) if low - LOWEST_FREE_PORT >= 1000 else ():
        port = rng.randrange(LOWEST_FREE_PORT, low)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    """Whether something accepts connections on `host`:`port` (IPv4 or IPv6)."""
    try:
        with socket.create_connection((host, port), timeout=0.3):
            return True
    except OSError:
        return False


def service_url(host: str, port: int) -> str:
    """The URL at which this machine reaches a service listening on `host`:`port`.

    A wildcard listen address (0.0.0.0, ::) is reached on its loopback; an IPv6 address goes in brackets (`http://:::3000`
    is no URL)."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":  # an IPv6 wildcard may listen on IPv6 only (bindv6only)
        host = "::1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"
