"""pytest fixtures around victoria-metrics (support.VictoriaMetrics): a server per test, and waiting for an outage."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from support import Sample, VictoriaMetrics, wait_for


@pytest.fixture
def victoria() -> Iterator[VictoriaMetrics]:
    """A running victoria-metrics, stopped and removed after the test whatever happens."""
    server = VictoriaMetrics()
    try:
        server.start()
        yield server
    finally:
        server.close()


def wait_until_down(server: VictoriaMetrics, timeout: float = 10.0) -> None:
    """Wait until nothing answers on the server's port any more."""
    def down() -> bool:
        try:
            urllib.request.urlopen(f"{server.url}/health", timeout=0.5).close()
            return False
        except (urllib.error.URLError, OSError):
            return True
    wait_for(down, timeout, message="victoria-metrics to be down")


__all__ = ["VictoriaMetrics", "victoria", "wait_until_down", "Sample"]
