"""What the endpoint does with its clients is on its own /metrics (issue 11: every drop counted in a metric).

A real prometheus child serves; a request it refuses shows up within a second, every status and
phase known in advance is there at 0 before, and the figures are the endpoint's own (not a heartbeat behind).
"""

from __future__ import annotations

import socket

import pytest

import support
from rctmon.exporters.httpserver import REFUSAL_STATUSES, Phase
from rctmon.registry import ENDPOINT_REFUSAL_STATUSES, ENDPOINT_TIMEOUT_PHASES
from test_prometheus_exporter import make_config, sample, start_exporter

__all__ = ["start_exporter"]  # the fixture, imported so that pytest finds it here

pytestmark = pytest.mark.timeout(30)


def test_the_registry_knows_every_refusal_status_and_timeout_phase_of_the_endpoint() -> None:
    assert ENDPOINT_REFUSAL_STATUSES == tuple(str(status) for status in REFUSAL_STATUSES)
    assert set(ENDPOINT_TIMEOUT_PHASES) == {phase.value for phase in Phase} - {Phase.LINGERING.value}


def _refused_request(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: \xb2\r\n\r\n")
        return sock.recv(100)


def test_refused_requests_and_accepted_connections_are_counted_with_every_status_at_zero_first(start_exporter) -> None:
    exporter = start_exporter(make_config(exposition=False, influxdb=False, mqtt=False))
    before = exporter.metrics()
    for code in ENDPOINT_REFUSAL_STATUSES:
        assert sample(before, "rctmon_http_requests_refused_total", code=code) == 0, code
    for phase in ENDPOINT_TIMEOUT_PHASES:
        assert sample(before, "rctmon_http_connections_timed_out_total", phase=phase) == 0, phase
    for name in ("rctmon_http_connections_shed_total", "rctmon_http_tls_handshake_failures_total"):
        assert sample(before, name) == 0, name
    assert (sample(before, "rctmon_http_connections_accepted_total") or 0) >= 1  # the probe that Started waited for

    assert _refused_request(exporter.port).startswith(b"HTTP/1.1 400 ")
    # A rendering is shared for up to a second (ExpositionCache); the figures are the endpoint's own, not the
    # supervisor's copy from a heartbeat up to 10 s old.
    after = support.wait_for(lambda: (text := exporter.metrics()) and sample(
        text, "rctmon_http_requests_refused_total", code="400") == 1 and text, 3, message="the refusal counted")
    assert (sample(after, "rctmon_http_connections_accepted_total") or 0) >= 3
    assert (sample(after, "rctmon_http_requests_answered_total") or 0) >= 2
