"""The daemon's backfill end to end: `rctmon daemon` against the simulator (its logger over TCP) and victoria-metrics.

The simulator knows what its logger holds (`records.logger.points`), so every check compares what reached
victoria-metrics with the truth: the 5-minute steps of the hole, each once, none missing. Tests that need the logger
to move use a short logger step (10 or 60 s instead of 300). victoria-metrics keeps a re-sent sample beside the
first (InfluxDB overwrites it), so "nothing twice" is checked on the raw samples where nothing is re-read.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import defaultdict
from pathlib import Path
from collections.abc import Iterator

import pytest
from support import child_pids, free_port, pid_gone, rctmon_command, scrape_samples, stop_process, wait_for
from vmserver import VictoriaMetrics, victoria

from rctmon.history.series import rows_for
from rctmon.simulator import SimulatorOptions, SimulatorThread

__all__ = ["victoria"]  # the fixture, imported so that pytest finds it here

NAME = "PS 6.0 backfill"
ROWS = rows_for("minutes")
FAST = 1.0  # device.intervals.fast


class Plant:
    """A simulator (in this process, so that its logger can be asked) and the daemon reading it into InfluxDB."""

    def __init__(self, tmp_path: Path, sim: SimulatorThread, influx_url: str, history: str,
                 device: str = "") -> None:
        self.tmp_path = tmp_path
        self.sim = sim
        self.metrics_port = free_port()
        self.state = tmp_path / "state"
        self.record_path = self.state / "history-record.json"
        self.config = tmp_path / "rctmon.yml"
        self.config.write_text(f"""\
device:
  host: 127.0.0.1
  port: {sim.port}
  intervals: {{fast: {FAST}, medium: 2, slow: 3, static: 60}}
{device}prometheus:
  bind_address: 127.0.0.1
  bind_port: {self.metrics_port}
influxdb:
  enable: true
  url: {influx_url}
  token: "rctmon:secret"
  bucket: rct
  flush_interval: 0.2
  spool_path: {self.state / "influxdb-spool.sqlite"}
history:
{history}""", encoding="utf-8")
        self.config.chmod(0o600)
        self.daemon: subprocess.Popen[bytes] | None = None
        self.log = tmp_path / "daemon.log"

    def start(self) -> subprocess.Popen[bytes]:
        with open(self.log, "ab") as log:
            self.daemon = subprocess.Popen(rctmon_command("-c", str(self.config), "daemon"), stdout=log,
                                           stderr=subprocess.STDOUT)
        return self.daemon

    def stop(self) -> None:
        if self.daemon is not None:
            stop_process(self.daemon)

    def metrics(self) -> dict[str, float]:
        try:
            return scrape_samples(self.metrics_port)
        except OSError:
            return {}

    def record(self) -> dict[str, object]:
        try:
            data: dict[str, object] = json.loads(self.record_path.read_text(encoding="utf-8"))
            return data
        except (OSError, ValueError):
            return {}

    def complete(self, since: float) -> bool:
        """Return whether the record says the backfill is done and the record reaches past `since`."""
        record = self.record()
        until = record.get("complete_until")
        return record.get("missing") == {} and isinstance(until, int) and until >= since

    def children(self) -> dict[str, int]:
        assert self.daemon is not None
        return child_pids(self.daemon.pid)

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


@pytest.fixture
def plants(tmp_path: Path) -> Iterator[list[Plant]]:
    made: list[Plant] = []
    try:
        yield made
    finally:
        for plant in made:
            plant.stop()
        for plant in made:
            text = plant.log_text() if plant.log.exists() else ""
            assert "Traceback" not in text, text[-3000:]


def history_samples(server: VictoriaMetrics) -> dict[str, list[int]]:
    """Return the raw sample times (UNIX s) of every history_5min series of the simulated inverter."""
    times: dict[str, list[int]] = defaultdict(list)
    for name, labels, ms, _ in server.export('{__name__=~"history_5min_.+"}'):
        assert dict(labels) == {"inverter": NAME}, labels
        times[name].append(ms // 1000)
    return times


def truth(sim: SimulatorThread, start: float, end: float) -> dict[str, set[int]]:
    """Return, per victoria-metrics series, the instants the simulator's logger holds in [start, end)."""
    logger = sim.simulator.records.logger
    return {f"history_5min_{row.field}": {i for i, _ in logger.points(row.object_name, int(start), int(end))}
            for row in ROWS}


def write_record(plant: Plant, complete_until: int) -> None:
    plant.state.mkdir(parents=True, exist_ok=True)
    plant.record_path.write_text(json.dumps({"format": 1, "complete_until": complete_until, "missing": {}}),
                                 encoding="utf-8")


def covers(server: VictoriaMetrics, sim: SimulatorThread, at_least: tuple[float, float],
           at_most: tuple[float, float]) -> bool:
    """Return whether every series holds every logger step of `at_least` and nothing outside `at_most`."""
    stored = history_samples(server)
    low, high = truth(sim, *at_least), truth(sim, *at_most)
    return all(low[name] <= set(stored.get(name, ())) <= high[name] for name in low)


@pytest.mark.timeout(90)
def test_first_start_fills_the_hours_before_while_live_values_arrive(tmp_path: Path, victoria: VictoriaMetrics,
                                                                     plants: list[Plant]) -> None:
    with SimulatorThread(SimulatorOptions(name=NAME, history_days=2, events=20)) as sim:
        plant = Plant(tmp_path, sim, victoria.url, "  first_start: 6h\n")
        plants.append(plant)
        before = time.time()
        plant.start()
        wait_for(lambda: plant.record().get("complete_until"), 20, message="the first record")
        after = time.time()
        # within 60 s of the start: every completed 5-minute step of the 6 hours before it, in every series
        wait_for(lambda: covers(victoria, sim, (after - 6 * 3600, before - 300), (before - 6 * 3600 - 1, after)),
                 60 - (time.time() - before), interval=1.0, message="the 6 hours before the start in InfluxDB")
        done = time.time()
        stored = history_samples(victoria)
        assert len(stored) == len(ROWS)
        for name, times in stored.items():
            assert len(times) == len(set(times)), f"{name}: a step written twice"
        # the events of those hours came along
        events = [e for e in sim.simulator.records.events.events() if before - 6 * 3600 + 300 <= e.start < before]
        stored_events = {ms // 1000 for name, _, ms, _ in victoria.export('{__name__=~"inverter_event_.+"}')}
        assert events and {e.start for e in events} <= stored_events
        # live values kept arriving: the fast tier's grid frequency has no hole of twice its interval
        def live() -> list[float]:
            return sorted(ms / 1000 for _, _, ms, _ in victoria.export('{__name__="grid_frequency"}'))

        wait_for(lambda: live() and live()[-1] > done + 3 * FAST, 20, interval=0.5, message="live values")
        times = live()
        assert times[0] < after + 2 * FAST, "the first live value came late"
        holes = [b - a for a, b in zip(times, times[1:]) if b - a > 2 * FAST]
        assert not holes, holes
        # the step in progress at the start is not logged yet: it comes a step later
        wait_for(lambda: plant.metrics().get("rctmon_history_backfill_points_total", 0) >= 71 * len(ROWS), 15,
                 message="the backfill's points counted")


def raw_and_distinct(server: VictoriaMetrics) -> dict[str, list[int]]:
    stored = history_samples(server)
    return {name: sorted(times) for name, times in stored.items()}


@pytest.mark.timeout(90)
def test_a_restart_fills_exactly_the_gap(tmp_path: Path, victoria: VictoriaMetrics, plants: list[Plant]) -> None:
    step = 10
    with SimulatorThread(SimulatorOptions(name=NAME, history_days=1, logger_step=step, events=0)) as sim:
        plant = Plant(tmp_path, sim, victoria.url, "  first_start: 0s\n")
        plants.append(plant)
        plant.start()  # a first install that fills nothing: the record starts with the first live readings
        wait_for(lambda: plant.record().get("complete_until"), 20, message="the first record")
        plant.stop()
        assert not history_samples(victoria)
        # stopped for a while: the record is set back by 10 minutes
        until = plant.record()["complete_until"]
        assert isinstance(until, int)
        write_record(plant, until - 600)
        before = time.time()
        plant.start()
        wait_for(lambda: plant.metrics().get("rctmon_device_up") == 1.0, 20, message="the daemon connected")
        after = time.time()
        wait_for(lambda: plant.complete(before), 40, interval=0.2, message="the record complete again")
        # complete means in the spool; the drain thread writes it out a moment later
        wait_for(lambda: covers(victoria, sim, (until - 600, before), (until - 600, after)), 10, interval=0.2,
                 message="the gap in InfluxDB")
        stored = raw_and_distinct(victoria)
        low, high = truth(sim, until - 600, before), truth(sim, until - 600, after)
        assert set(stored) == set(low)
        for name, times in stored.items():
            assert len(times) == len(set(times)), f"{name}: a step written twice"
            assert low[name] <= set(times) <= high[name], name
            assert all(b - a == step for a, b in zip(times, times[1:])), f"{name}: a step missing"
        wait_for(lambda: plant.metrics().get("rctmon_history_backfill_pending_seconds") == 0, 15,
                 message="nothing pending in the metrics")


@pytest.mark.timeout(90)
def test_kill_9_of_the_collector_and_of_the_influxdb_child_resumes_and_completes(
        tmp_path: Path, victoria: VictoriaMetrics, plants: list[Plant]) -> None:
    step = 10
    with SimulatorThread(SimulatorOptions(name=NAME, history_days=1, logger_step=step, events=0,
                                          latency_ms=2)) as sim:
        # a narrow window of requests makes the backfill last long enough to be interrupted twice
        plant = Plant(tmp_path, sim, victoria.url, "  first_start: 8h\n", device="  max_in_flight: 2\n")
        plants.append(plant)
        before = time.time()
        plant.start()

        def pending() -> int:
            return sum(end - start for spans in plant.record().get("missing", {}).values()  # type: ignore[union-attr]
                       for start, end in spans)

        def kill_mid_backfill(role: str, declared: int) -> int:
            """Kill -9 `role` once the backfill has filled part of what is pending; return what was pending then."""
            wait_for(lambda: 0 < pending() < declared, 30, interval=0.02, message="the backfill under way")
            left = pending()
            victim = plant.children()[role]
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda: pid_gone(victim) and plant.children().get(role, victim) != victim, 20,
                     message=f"{role} restarted")
            return left

        wait_for(lambda: pending() > 0, 20, message="the gap declared")
        left = kill_mid_backfill("rctmon: collector", pending())
        kill_mid_backfill("rctmon: influxdb", left)
        after = time.time()
        wait_for(lambda: plant.complete(before), 60, interval=0.2, message="the record complete")
        wait_for(lambda: covers(victoria, sim, (after - 8 * 3600, before), (before - 8 * 3600, after)), 10,
                 interval=0.2, message="the hours in InfluxDB")
        stored = raw_and_distinct(victoria)
        low, high = truth(sim, after - 8 * 3600, before), truth(sim, before - 8 * 3600, after)
        for name in low:
            times = set(stored.get(name, ()))
            assert low[name] <= times <= high[name], f"{name}: {len(low[name] - times)} steps missing"
        assert "restarting" in plant.log_text()


@pytest.mark.timeout(60)
def test_a_corrupt_record_is_one_log_line_and_a_first_install(tmp_path: Path, victoria: VictoriaMetrics,
                                                              plants: list[Plant]) -> None:
    with SimulatorThread(SimulatorOptions(name=NAME, history_days=1, events=0)) as sim:
        plant = Plant(tmp_path, sim, victoria.url, "  first_start: 1h\n")
        plants.append(plant)
        plant.state.mkdir(parents=True)
        plant.record_path.write_bytes(b'{"format": 1, "complete_until": "\xff\x00')
        before = time.time()
        plant.start()
        wait_for(lambda: covers(victoria, sim, (time.time() - 3600, before - 300), (before - 3600 - 60, time.time())),
                 30, interval=0.5, message="the hour before the start in InfluxDB")
        assert isinstance(plant.record().get("complete_until"), int)  # the influxdb child wrote a good one
        text = plant.log_text()
        warnings = [line for line in text.splitlines() if "ignoring the history record" in line]
        assert len(warnings) == 1 and " - WARNING - " in warnings[0] and "Traceback" not in text


@pytest.mark.timeout(60)
def test_backfill_off_reads_and_writes_no_record(tmp_path: Path, victoria: VictoriaMetrics,
                                                 plants: list[Plant]) -> None:
    with SimulatorThread(SimulatorOptions(name=NAME, history_days=1, events=5)) as sim:
        plant = Plant(tmp_path, sim, victoria.url, "  backfill: false\n  first_start: 6h\n")
        plants.append(plant)
        plant.start()
        wait_for(lambda: victoria.count('{__name__="grid_frequency"}') >= 3, 30, message="live values")
        assert not history_samples(victoria) and not victoria.count('{__name__=~"inverter_event_.+"}')
        assert not plant.record_path.exists()
        assert plant.metrics().get("rctmon_history_backfill_pending_seconds") == 0
        assert sim.simulator.records.logger.points(ROWS[0].object_name, 0, 2**31)  # there was something to fill


@pytest.mark.timeout(90)
def test_an_outage_longer_than_max_gap_is_filled_that_far_back_through_reconnects(
        tmp_path: Path, victoria: VictoriaMetrics, plants: list[Plant]) -> None:
    step = 10
    options = SimulatorOptions(name=NAME, history_days=1, logger_step=step, events=0, latency_ms=10,
                               disconnect_every=3, seed=3)
    with SimulatorThread(options) as sim:
        plant = Plant(tmp_path, sim, victoria.url, "  max_gap: 4h\n", device="  max_in_flight: 2\n")
        plants.append(plant)
        before = time.time()
        write_record(plant, int(before) - 6 * 3600)  # away for six hours: only the last four are asked for
        plant.start()
        # the inverter drops every connection after 3 s: the backfill goes on from connection to connection
        wait_for(lambda: covers(victoria, sim, (time.time() - 4 * 3600, before - step), (before - 4 * 3600 - 5,
                                                                                         time.time())),
                 60, interval=0.5, message="the last four hours in InfluxDB, nothing older")
        resumed = [line for line in plant.log_text().splitlines() if "the record lacks" in line]
        assert len(resumed) >= 2, resumed  # a connection ended while a backfill of more than a minute ran
        assert sim.stats.disconnects >= 1
        # once a connection lasts longer than a logger step, the newest steps of every hole follow
        sim.simulator.options.disconnect_every = 0
        wait_for(lambda: plant.complete(before), 30, interval=0.2, message="the record complete")
