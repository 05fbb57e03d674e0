"""Issue 11, slow clients: a legitimate scrape answers within 1 s whatever a thousand other clients do.

Against the old endpoint, 300 connections dripping a byte at a time delayed a scrape to 8 s; 600 that reconnect,
7 to 28 s; 2,000 held, past Prometheus' 10 s scrape timeout. The hostile clients are bench/slow_clients.py in a
process of their own: each connection the server closes is replaced at once.
"""

from __future__ import annotations

import pytest

import support

from endpoint_harness import certificate, endpoint_child, slow_clients
from rctmon.exporters.httpserver import Limits

__all__ = ["certificate", "endpoint_child", "slow_clients"]  # fixtures, imported so that pytest finds them here

pytestmark = pytest.mark.timeout(90)

SCRAPES = 5


@pytest.mark.parametrize("kinds, count, tls", [
    ("drip", 300, False),
    ("reconnect", 600, False),
    ("idle", 1000, False),
    ("idle,drip,reconnect", 1000, False),
    ("idle", 1000, True),  # bare TCP to the TLS endpoint: not even a handshake
])
def test_issue11_a_scrape_answers_within_a_second_beside_slow_clients(endpoint_child, slow_clients, certificate,
                                                                      kinds, count, tls):
    child = endpoint_child(tls=certificate if tls else None)
    holder = slow_clients(child.port, count, kinds)
    holder.wait_connected(count)
    for _ in range(SCRAPES):
        status, seconds = child.get()
        assert status == 200 and seconds < 1.0, (status, seconds, holder.counters())


@pytest.mark.parametrize("kinds", ["idle", "idle,drip,reconnect"])
def test_issue11_clients_reconnecting_as_fast_as_they_are_shed_let_a_scrape_in(endpoint_child, slow_clients, kinds):
    """Past the cap every connection made sheds another, whose client connects again at once: a scrape still goes
    through the accept queue and past the shedding within a second."""
    child = endpoint_child(limits=Limits(max_connections=100))
    holder = slow_clients(child.port, 400, kinds)
    holder.wait_connected(400)
    support.wait_for(lambda: holder.counters().get("closed_by_server", 0) >= 300, 20, message="shedding")
    for _ in range(SCRAPES):
        status, seconds = child.get()
        assert status == 200 and seconds < 1.0, (status, seconds, holder.counters())
    assert child.descriptors() < 100 + 50
