"""Issue 11, slow clients: a legitimate scrape answers within 1 s whatever a thousand other clients do.

Against the old endpoint, 300 connections dripping a byte at a time delayed a scrape to 8 s; 600 that reconnect,
7 to 28 s; 2,000 held, past Prometheus' 10 s scrape timeout. The hostile clients are bench/slow_clients.py in a
process of their own: each connection the server closes is replaced at once.
"""

from __future__ import annotations

import pytest

from endpoint_harness import certificate, endpoint_child, slow_clients

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
