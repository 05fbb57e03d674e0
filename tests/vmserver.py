"""A real server that speaks the InfluxDB write API, for tests and benchmarks: Debian's victoria-metrics on loopback.

VictoriaMetrics accepts line protocol at /api/v2/write (what influxdb-client posts to) and /write, and names each
series `<measurement>_<field>` with the tags as labels; booleans become 1/0 and strings 0. It keeps timestamps in
milliseconds (-influxTrimTimestamp defaults to 1ms), so tests compare the reading's epoch ns // 1e6. Read back with
`export()` (/api/v1/export, raw samples) after /internal/force_flush so that freshly written samples are visible.

`stop()` and `start()` again keep the port and the data directory: that is how tests make an outage.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator

import pytest

from support import free_port, require_binary, stop_process, wait_for

#: Flags that make what was just written visible to queries at once (this is version 1.79).
QUERY_NOW_FLAGS = ("-search.latencyOffset=0s", "-search.disableCache")

Sample = tuple[str, tuple[tuple[str, str], ...], int, float]  # (series name, sorted labels, ms timestamp, value)


class VictoriaMetrics:
    """One victoria-metrics process on 127.0.0.1 with its own data directory."""

    def __init__(self, binary: str | None = None, data_dir: str | None = None, port: int = 0) -> None:
        self.binary = binary or require_binary("victoria-metrics")
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="rctmon-vm-")
        os.makedirs(self.data_dir, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = os.path.join(self.data_dir, "victoria-metrics.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> VictoriaMetrics:
        """Start the server (again) and wait until it answers /health."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                [self.binary, f"-httpListenAddr=127.0.0.1:{self.port}",
                 f"-storageDataPath={os.path.join(self.data_dir, 'data')}", "-loggerLevel=ERROR",
                 "-retentionPeriod=100y", *QUERY_NOW_FLAGS],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log.close()
        wait_for(self._healthy, timeout, message=f"victoria-metrics on port {self.port}")
        return self

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"victoria-metrics exited with {self.proc.returncode}: {self.log_tail()}")
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1) as answer:
                return answer.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL); the data directory stays."""
        if self.proc is not None:
            stop_process(self.proc, timeout=10)

    def close(self) -> None:
        """Stop the server and remove its data directory if this object made it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def log_tail(self, size: int = 2000) -> str:
        try:
            with open(self.log_path, "rb") as log:
                return log.read()[-size:].decode("utf-8", "replace")
        except OSError:
            return ""

    def _get(self, path: str, params: dict[str, str], timeout: float = 30.0) -> bytes:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=timeout) as answer:
            return answer.read()

    def flush(self) -> None:
        """Make samples written so far visible to queries."""
        self._get("/internal/force_flush", {})

    def export(self, match: str = '{__name__=~".+"}') -> Iterator[Sample]:
        """Yield every raw sample of the series that `match` selects."""
        self.flush()
        body = self._get("/api/v1/export", {"match[]": match, "start": "0"})
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            metric = dict(item["metric"])
            name = metric.pop("__name__")
            labels = tuple(sorted(metric.items()))
            for ts, value in zip(item["timestamps"], item["values"]):
                yield name, labels, int(ts), float(value)

    def samples(self, match: str = '{__name__=~".+"}') -> list[Sample]:
        return list(self.export(match))

    def count(self, match: str = '{__name__=~".+"}') -> int:
        """Return the number of distinct samples (series, timestamp) stored."""
        return len({(name, labels, ts) for name, labels, ts, _ in self.export(match)})

    def series_count(self) -> int:
        body = self._get("/api/v1/query", {"query": 'count({__name__=~".+"})'})
        result = json.loads(body)["data"]["result"]
        return int(float(result[0]["value"][1])) if result else 0


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
