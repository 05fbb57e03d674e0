"""The whole daemon with InfluxDB on: `rctmon daemon` against `rctmon simulator` and victoria-metrics on loopback.

test_influxdb_exporter.py covers the child in detail; these show the issue's promises end to end. Which readings
the collector took is not visible from outside, but every value is polled at a known interval (1, 2 or 3 s here):
a reading lost would leave a hole of twice the interval in its series, and a reading written with the wrong time
would sit outside the window it was taken in. So "nothing lost" is checked as "no series has a hole longer than
1.5 times its interval over the window", on the original timestamps (victoria-metrics keeps milliseconds).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable
from collections.abc import Iterator

import pytest

from rctmon.catalog import Tier, enabled_series
from rctmon.exporters.lineprotocol import field_type
from rctmon.inventory import Inventory
from support import child_pids, free_port, rctmon_command, scrape_samples, stop_process, wait_for
from vmserver import VictoriaMetrics, wait_until_down

NAME = "Carport PS 6.0"
TOKEN_PASSWORD = "Pa55-never-logged"
MODULES = 2
FAST = 1.0  # seconds: device.intervals.fast in the test configuration
INTERVALS = {Tier.FAST: FAST, Tier.MEDIUM: 2.0, Tier.SLOW: 3.0}  # static values are read once an hour: not checked
FLUSH = 0.5  # seconds: influxdb.flush_interval
GAP_FACTOR = 1.5  # a series polled every N s with a hole longer than 1.5 N has lost a reading
INVENTORY = Inventory(name=NAME, generators=("a", "b"), battery_modules=MODULES, power_switch=True, complete=True)
#: (victoria-metrics name, labels) -> polling interval, of every polled series the simulated inverter has.
POLLED: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {
    (f"{s.row.measurement}_{s.row.field}", tuple(sorted((("inverter", NAME),) + labels))): INTERVALS[s.tier]
    for s in enabled_series(INVENTORY) if s.tier in INTERVALS and field_type(s) is not None
    for labels in s.sample_labels}
Series = tuple[str, tuple[tuple[str, str], ...]]


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Daemon:
    """The simulator, and the daemon reading it with prometheus and influxdb enabled."""

    def __init__(self, tmp_path: Path, influx_url: str) -> None:
        self.tmp_path = tmp_path
        self.sim_port, self.metrics_port = free_port(), free_port()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self.config_path = tmp_path / "rctmon.yml"
        self.config_path.write_text(f"""\
device:
  host: 127.0.0.1
  port: {self.sim_port}
  intervals: {{fast: {FAST}, medium: 2, slow: 3, static: 60}}
prometheus:
  bind_address: 127.0.0.1
  bind_port: {self.metrics_port}
influxdb:
  enable: true
  url: {influx_url}
  token: "rctmon:{TOKEN_PASSWORD}"
  bucket: rct
  flush_interval: {FLUSH}
  spool_path: {tmp_path / "spool" / "influxdb-spool.sqlite"}
""", encoding="utf-8")
        self.config_path.chmod(0o600)
        self._start("simulator", "simulator", "--port", str(self.sim_port), "--name", NAME,
                    "--battery-modules", str(MODULES))
        wait_for(lambda: _accepts(self.sim_port), 15, message="the simulator")
        self.daemon = self.start_daemon()

    def _start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        path = self.tmp_path / f"{name}.log"
        self.logs.append(path)
        with open(path, "ab") as log:
            proc = subprocess.Popen(rctmon_command(*args), stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def start_daemon(self) -> subprocess.Popen[bytes]:
        self.daemon = self._start("daemon", "-c", str(self.config_path), "daemon")
        wait_for(lambda: self.metrics().get('rctmon_process_up{process="influxdb"}') == 1.0, 20,
                 message="the daemon with its influxdb child")
        return self.daemon

    def metrics(self) -> dict[str, float]:
        """Return the daemon's samples as {'name{labels}': value}."""
        return scrape_samples(self.metrics_port)

    def influxdb_child(self) -> int:
        """Return the pid of the daemon's influxdb child."""
        pids = {title.split(": ", 1)[-1]: pid for title, pid in child_pids(self.daemon.pid).items()}
        assert "influxdb" in pids, f"no influxdb child: {pids}"
        return pids["influxdb"]

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop_process(proc)

    def log_tail(self) -> str:
        return "\n".join(f"--- {path}\n" + path.read_text(errors="replace")[-3000:] for path in self.logs)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    vm = VictoriaMetrics(data_dir=str(tmp_path / "vm"))
    try:
        vm.start()
        yield vm
    finally:
        vm.close()


@pytest.fixture
def daemon(tmp_path: Path, server: VictoriaMetrics) -> Iterator[Daemon]:
    running = Daemon(tmp_path, server.url)
    try:
        yield running
    finally:
        running.stop()


def timestamps(server: VictoriaMetrics) -> dict[Series, list[int]]:
    """Return the sorted distinct ms timestamps of every series stored."""
    found: dict[Series, set[int]] = {}
    for name, labels, ts, _ in server.export():
        found.setdefault((name, labels), set()).add(ts)
    return {key: sorted(values) for key, values in found.items()}


def gaps(server: VictoriaMetrics, start_ms: int, end_ms: int) -> dict[Series, int]:
    """Return the polled series with a hole too long for their interval in [start_ms, end_ms], and its length."""
    stored = timestamps(server)
    too_long = {}
    for series, interval in POLLED.items():
        points = [start_ms] + [t for t in stored.get(series, []) if start_ms <= t <= end_ms] + [end_ms]
        longest = max(b - a for a, b in zip(points, points[1:]))
        if longest > GAP_FACTOR * interval * 1000:
            too_long[series] = longest
    return too_long


def wait_no_gaps(server: VictoriaMetrics, daemon: Daemon, start_ms: int, end_ms: int, timeout: float) -> None:
    last: dict[Series, int] = {}

    def complete() -> bool:
        nonlocal last
        last = gaps(server, start_ms, end_ms)
        return not last

    try:
        wait_for(complete, timeout, interval=0.5, message="every reading of the window in victoria-metrics")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; gaps (ms): {last}\n{daemon.log_tail()}") from None


def readings_rate(daemon: Daemon, seconds: float,
                  during: Callable[[dict[str, float]], None] | None = None) -> tuple[float, float]:
    """Scrape once a second for `seconds`; return (readings per second, the stalest the last reading got)."""
    began, first = time.monotonic(), daemon.metrics()["rctmon_readings_total"]
    stale, scrape_at = 0.0, began
    while time.monotonic() - began < seconds:
        wait_for(lambda scrape_at=scrape_at: time.monotonic() >= scrape_at, 2, interval=0.05, message="the next scrape")
        scrape_at += 1.0
        metrics = daemon.metrics()
        stale = max(stale, time.time() - metrics["rctmon_last_reading_timestamp_seconds"])
        if during is not None:
            during(metrics)
    return (daemon.metrics()["rctmon_readings_total"] - first) / (time.monotonic() - began), stale


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_points_arrive_as_documented_and_an_outage_of_20_s_loses_nothing(server: VictoriaMetrics,
                                                                         daemon: Daemon) -> None:
    # Every series the inventory enables arrives, named and tagged as docs/influxdb.md says.
    expected = {(f"{s.row.measurement}_{s.row.field}", tuple(sorted((("inverter", NAME),) + labels)))
                for s in enabled_series(INVENTORY) if field_type(s) is not None for labels in s.sample_labels}
    wait_for(lambda: expected <= set(timestamps(server)), 30, interval=0.5, message="every documented series")
    assert len(POLLED) > 50 and set(POLLED) <= expected

    rate_before, _ = readings_rate(daemon, 5)
    server.stop()
    wait_until_down(server)
    down_ms = int(time.time() * 1000)
    spooled: list[float] = []
    rate_during, stale = readings_rate(daemon, 22, lambda m: spooled.append(m["rctmon_influxdb_spool_points"]))
    up_ms = int(time.time() * 1000)
    server.start()
    metrics = daemon.metrics()
    # last_reading_timestamp travels with the collector's heartbeat (every 2 s): 6 s means no stall
    assert stale < 6.0, f"no reading for {stale:.1f} s while InfluxDB was down\n{daemon.log_tail()}"
    assert rate_during >= 0.8 * rate_before, (rate_before, rate_during)
    assert max(spooled) > 0, spooled
    assert metrics['rctmon_influxdb_write_errors_total{kind="connection"}'] > 0

    wait_no_gaps(server, daemon, down_ms - 5000, up_ms + 2000, 40)
    wait_for(lambda: daemon.metrics()["rctmon_influxdb_spool_points"] < 200, 20, message="the spool drained")
    metrics = daemon.metrics()
    assert metrics["rctmon_influxdb_points_dropped_total"] == 0
    assert metrics['rctmon_readings_dropped_total{process="influxdb",reason="backlog_full"}'] == 0
    assert metrics['rctmon_process_restarts_total{process="influxdb"}'] == 0
    assert TOKEN_PASSWORD not in (daemon.tmp_path / "daemon.log").read_text()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_kill_9_of_the_child_and_then_the_daemon_while_influxdb_is_down_loses_nothing(server: VictoriaMetrics,
                                                                                        daemon: Daemon) -> None:
    wait_for(lambda: daemon.metrics()["rctmon_influxdb_points_written_total"] > 0, 30, message="first points")
    server.stop()
    wait_until_down(server)
    down_ms = int(time.time() * 1000)
    wait_for(lambda: daemon.metrics()["rctmon_influxdb_spool_points"] > 100, 20, message="points in the spool")

    os.kill(daemon.influxdb_child(), signal.SIGKILL)  # the supervisor replays what it had not acknowledged
    wait_for(lambda: daemon.metrics()['rctmon_process_restarts_total{process="influxdb"}'] == 1, 20,
             message="the influxdb child restarted")
    wait_for(lambda: daemon.metrics()['rctmon_process_up{process="influxdb"}'] == 1, 20, message="it is up")
    child_killed_ms = int(time.time() * 1000)
    wait_for(lambda: time.time() * 1000 > child_killed_ms + 4000, 6, interval=0.1, message="4 s more readings")

    daemon.daemon.send_signal(signal.SIGKILL)  # the whole daemon: its children die with it
    daemon.daemon.wait(10)
    daemon_killed_ms = int(time.time() * 1000)
    daemon.start_daemon()  # on the same spool, still without InfluxDB
    wait_for(lambda: time.time() * 1000 > daemon_killed_ms + 5000, 10, interval=0.1, message="5 s more readings")
    server.start()
    restarted_ms = int(time.time() * 1000)

    # Nothing older than one flush interval at the moment of the kill is missing; after the restart nothing at all.
    wait_no_gaps(server, daemon, down_ms - 3000, daemon_killed_ms - int(FLUSH * 1000), 40)
    first_after = max(min((t for t in ts if t > daemon_killed_ms), default=restarted_ms)
                      for s, ts in timestamps(server).items() if s in POLLED)
    wait_no_gaps(server, daemon, first_after, restarted_ms + 2000, 20)
    assert daemon.metrics()["rctmon_influxdb_points_dropped_total"] == 0
