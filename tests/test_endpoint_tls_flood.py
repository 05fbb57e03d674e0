"""Issue 11, TLS connection flood: with TLS on, the old endpoint gave every connection a thread of its own, uncapped.

300 bare TCP connections under the unit's TasksMax=256 made `Thread.start()` raise in the accept loop: the serving
thread died while the port still listened and the child still sent heartbeats, so nothing restarted it. Without a
limit, 2,000 idle TLS connections cost 2,000 threads and RSS 53 -> 187 MB. Now one event loop serves every
connection, TLS or not, within one cap; an endpoint that can no longer accept ends its process.
"""

from __future__ import annotations

import socket
import ssl

import pytest

import support
from endpoint_harness import certificate, endpoint_child, need_descriptors
from rctmon.exporters.httpserver import Limits

__all__ = ["certificate", "endpoint_child"]  # fixtures, imported so that pytest finds them here

pytestmark = pytest.mark.timeout(90)

MIB = 1 << 20


def test_issue11_bare_tcp_connections_to_the_https_endpoint_start_no_thread(endpoint_child, certificate):
    child = endpoint_child(tls=certificate, limits=Limits(handshake_timeout=60.0))  # all held while counted
    assert child.get()[0] == 200
    threads = child.threads()
    bare = []
    try:
        for _ in range(300):
            bare.append(socket.create_connection(("127.0.0.1", child.port), timeout=5))
        # Counted by their ports: a count of descriptors against a baseline taken just after the scrape above failed
        # under load (the scrape's connection, still closing, was in the baseline and then gone).
        ports = {sock.getsockname()[1] for sock in bare}
        support.wait_for(lambda: child.connections_from(ports) == 300, 20,
                         message="the child to accept 300 connections")
        assert child.threads() == threads
        status, seconds = child.get()
        assert status == 200 and seconds < 1.0, (status, seconds)
    finally:
        for sock in bare:
            sock.close()


def test_issue11_a_thousand_idle_tls_connections_cost_no_thread_and_little_memory(endpoint_child, certificate):
    need_descriptors(1000)
    child = endpoint_child(tls=certificate)
    assert child.get()[0] == 200
    threads, rss = child.threads(), child.rss_bytes()
    context = ssl.create_default_context(cafile=certificate[0])
    held: list[socket.socket] = []
    try:
        for _ in range(1000):
            sock = socket.create_connection(("127.0.0.1", child.port), timeout=10)
            held.append(sock)
            held[-1] = context.wrap_socket(sock, server_hostname="127.0.0.1")  # the handshake, then idle
        assert child.threads() == threads
        status, seconds = child.get()
        assert status == 200 and seconds < 1.0, (status, seconds)
        grown = child.rss_bytes() - rss
        assert grown < 40 * MIB, f"RSS grew by {grown / MIB:.1f} MiB"
    finally:
        for sock in held:
            sock.close()


def test_issue11_an_endpoint_that_can_no_longer_accept_ends_its_process(endpoint_child):
    """The supervisor restarts a child that exits; a child that lives on without serving is never restarted."""
    child = endpoint_child()
    assert child.get()[0] == 200
    child.sock.shutdown(socket.SHUT_RDWR)  # the listening socket the child shares stops listening: accept fails
    child.process.join(10)
    assert child.process.exitcode not in (None, 0)
