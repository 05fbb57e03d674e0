"""Bind the Prometheus endpoint's listening socket.

The supervisor binds the port itself and hands the socket to each incarnation of the prometheus child, so the port
stays bound (and scrapers' connections queue in the backlog) while the child restarts. This module is imported by
the supervisor and therefore uses nothing but the standard library's `socket`.
"""

from __future__ import annotations

import errno
import socket

#: Connections the kernel completes and queues for the endpoint to accept. prometheus_client's server uses 5, which a
#: burst of scrapers overflows (see DESIGN.md). A full queue drops new SYNs, and the client retries after 1 s: so the
#: queue must hold what a flood of clients can keep pending while the endpoint accepts and sheds (issue 11: 1,000
#: reconnecting clients overflowed 128 and delayed a scrape by the 1 s retransmit). The kernel caps it at
#: net.core.somaxconn (4096 since Linux 5.4, 128 before).
DEFAULT_BACKLOG = 4096


def _host(address: str) -> str:
    """Return the address as getaddrinfo wants it: "[::1]" -> "::1", "" -> every IPv4 interface."""
    address = address.strip()
    if address.startswith("[") and address.endswith("]"):
        address = address[1:-1]
    return address or "0.0.0.0"


def bind_endpoint(address: str, port: int, backlog: int = DEFAULT_BACKLOG) -> socket.socket:
    """Return a TCP socket bound to (address, port) and listening; raise OSError naming the endpoint if not.

    `address` is an IPv4 or IPv6 literal or a host name ("::" listens on IPv6 and, where the system allows,
    IPv4 too). SO_REUSEADDR lets a restarted daemon bind again while old connections linger in TIME_WAIT.
    """
    host = _host(address)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise OSError(exc.errno, f"cannot listen on {address}:{port}: unknown address ({exc.strerror})") from exc
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        shown = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        in_use = exc.errno == errno.EADDRINUSE
        hint = " (is another rctmon or exporter using that port? see prometheus.bind_port)" if in_use else ""
        raise OSError(exc.errno, f"cannot listen on {shown}: {exc.strerror}{hint}") from exc
    return sock

