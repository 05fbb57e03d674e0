"""Helpers shared by the tests and the benchmarks: free loopback ports, polling with a deadline, starting and stopping
processes, a real InfluxDB-compatible server (victoria-metrics), the supervisor's end of a child's channel.

pytest finds it through `pythonpath` in pyproject.toml (`from support import ...`); bench/ runs from the checkout and
imports it as `tests.support`. So it imports nothing from its sibling modules and pytest only where a test needs it.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from typing import Callable, TypeVar
from collections.abc import Iterator

from rctmon.channel import Channel

T = TypeVar("T")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Real bytes recorded from inverters (copied from the project's shared fixtures; see fixtures/README.md).
FIXTURES = os.path.join(REPO, "tests", "fixtures")


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class TimedOut(AssertionError):
    """A condition `wait_for` polled for did not come true in time (a failed test; bench/ makes it a BenchError)."""


def wait_for(predicate: Callable[[], T | None], timeout: float, interval: float = 0.05,
             message: str = "condition") -> T:
    """Poll `predicate` until it returns something truthy and return that; raise TimedOut at the deadline."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            result = predicate()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 - a poll may fail until the thing is up
            last_exc = exc
        if time.monotonic() >= deadline:
            raise TimedOut(f"timed out after {timeout:g} s waiting for {message}"
                                 + (f" (last error: {last_exc!r})" if last_exc else ""))
        time.sleep(interval)


def scrape_samples(port: int, timeout: float = 5.0) -> dict[str, float]:
    """Return what rctmon's endpoint on loopback exposes, as {'name{labels}': value} (comments skipped)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as resp:
        text = resp.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def require_binary(name: str) -> str:
    """Return the path of a program the test needs; skip locally, fail in CI, when it is missing."""
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    if path:
        return path
    import pytest  # here: the benchmarks import this module without pytest

    if os.environ.get("CI"):
        pytest.fail(f"{name} is required in CI (scripts/install-system-deps installs it)")
    pytest.skip(f"{name} is not installed")
    raise AssertionError("unreachable")


def rctmon_command(*args: str) -> list[str]:
    """Return the argv that runs rctmon from this checkout with the test's interpreter."""
    return [sys.executable, "-m", "rctmon.cli", *args]


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int | None:
    """Stop a process started by a test: SIGTERM, wait, then SIGKILL. Return its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def child_pids(pid: int) -> dict[str, int]:
    """Return {process title: pid} of the direct children of `pid` (rctmon names each by its role)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids = [int(p) for p in f.read().split()]
    except OSError:
        return {}
    result = {}
    for child in pids:
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                result[f.read().split(b"\0")[0].decode()] = child
        except OSError:
            continue
    return result


def pid_gone(pid: int) -> bool:
    """Return whether a process no longer runs (a zombie awaiting its parent counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


# --- victoria-metrics: a real server that speaks the InfluxDB write API ---------------------------------------------
#
# VictoriaMetrics accepts line protocol at /api/v2/write (what influxdb-client posts to) and /write, and names each
# series `<measurement>_<field>` with the tags as labels; booleans become 1/0 and strings 0. It keeps timestamps in
# milliseconds (-influxTrimTimestamp defaults to 1ms), so tests compare the reading's epoch ns // 1e6. Read back with
# `export()` (/api/v1/export, raw samples) after /internal/force_flush so that freshly written samples are visible.
# `stop()` and `start()` again keep the port and the data directory: that is how tests make an outage.

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


# --- the supervisor's end of a child's channel --------------------------------------------------------------------


def wait_messages(channel: Channel, timeout: float | None) -> list[object]:
    """Flush what is queued, then wait up to `timeout` seconds for messages and return them (raise ChannelClosed
    once the other end has gone)."""
    channel.flush()
    writers = [channel] if channel.pending_bytes else []
    readable, writable, _ = select.select([channel], writers, [], timeout)
    if writable:
        channel.flush()
    return channel.receive() if readable else []
