"""Free loopback ports for services and test servers."""

from __future__ import annotations

import socket
from pathlib import Path

from pyrocast.ports import LOWEST_FREE_PORT, free_port


def test_free_ports_are_outside_the_range_outgoing_connections_take() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50  # never the same one twice in a process
    assert all(LOWEST_FREE_PORT <= p < low for p in ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[0]))  # really free


def test_a_service_url_reaches_wildcard_and_ipv6_listen_addresses() -> None:
    from pyrocast.ports import port_in_use, service_url

    assert service_url("127.0.0.1", 8000) == "http://127.0.0.1:8000"
    assert service_url("0.0.0.0", 8000) == "http://127.0.0.1:8000"
    assert service_url("::", 8000) == "http://[::1]:8000"  # an IPv6 wildcard may be IPv6 only
    assert service_url("::1", 3000) == "http://[::1]:3000"
    assert service_url("localhost", 5000) == "http://localhost:5000"
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        s.listen()
        assert port_in_use("::1", s.getsockname()[1])
