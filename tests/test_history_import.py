"""`rctmon history` end to end: against the simulator over TCP, into a real victoria-metrics (InfluxDB line protocol),
into OpenMetrics that the real promtool backfills, into CSV; through faults, an InfluxDB outage, Ctrl-C, and a
window with a DST change."""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import random
import signal
import subprocess
import time
from pathlib import Path
from collections.abc import Iterator

import pytest
from support import rctmon_command, require_binary, stop_process, wait_for
from vmserver import VictoriaMetrics, victoria

from rctmon.config import Config
from rctmon.history.command import history_command
from rctmon.history.series import LOGGER_SERIES, rows_for
from rctmon.simulator import SimulatorOptions, SimulatorThread
from rctmon.simulator.logger import Records

__all__ = ["victoria"]  # the fixture, imported so that pytest finds it here

NAME = "PS 6.0 history"
ZONE = "Europe/Berlin"  # the inverter's clock, in the simulator and in the config of the CLI tests


def utc(text: str) -> int:
    return int(datetime.datetime.fromisoformat(text).replace(tzinfo=datetime.timezone.utc).timestamp())


def iso(instant: int) -> str:
    return datetime.datetime.fromtimestamp(instant, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S+00:00")


def config_file(tmp_path: Path, port: int, influx_url: str = "http://127.0.0.1:9") -> Path:
    path = tmp_path / "rctmon.yml"
    path.write_text(f"""\
device:
  host: 127.0.0.1
  port: {port}
  timezone: {ZONE}
prometheus:
  enable: false
influxdb:
  enable: true
  url: {influx_url}
  token: "rctmon:secret"
  bucket: rct
  flush_interval: 0.2
  spool_path: {tmp_path / "state" / "influxdb-spool.sqlite"}
""", encoding="utf-8")
    path.chmod(0o600)
    return path


def run_history(config: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(rctmon_command("-c", str(config), "history", *args), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def simulator() -> Iterator[SimulatorThread]:
    # the options of `rctmon simulator --history-days 3 --events 20`
    with SimulatorThread(SimulatorOptions(name=NAME, history_days=3, events=20, timezone=ZONE)) as sim:
        yield sim


def window(days: float = 2) -> tuple[int, int]:
    """Return a fixed window ending at the last completed 5-minute step (the same for two runs)."""
    end = int(time.time()) // 300 * 300 - 300
    return end - int(days * 86_400), end


@pytest.mark.timeout(180)
def test_import_into_influxdb_is_complete_five_minutes_apart_and_idempotent(
        simulator: SimulatorThread, victoria: VictoriaMetrics, tmp_path: Path) -> None:
    config = config_file(tmp_path, simulator.port, victoria.url)
    start, end = window()
    result = run_history(config, "--since", iso(start), "--until", iso(end))
    assert result.returncode == 0, result.stderr + result.stdout
    assert "answers re-asked" in result.stdout and "inverter_event: 20 events" in result.stdout

    def timestamps() -> dict[str, set[int]]:
        found: dict[str, set[int]] = {}
        for name, labels, ts, _ in victoria.export('{__name__=~"history_5min_.+|inverter_event_.+"}'):
            assert dict(labels)["inverter"] == NAME
            found.setdefault(name, set()).add(ts)
        return found

    first = timestamps()
    for row in rows_for("minutes"):
        stamps = sorted(first[f"history_5min_{row.field}"])
        assert stamps[0] == start * 1000 and stamps[-1] == (end - 300) * 1000  # the two days, end excluded
        assert {b - a for a, b in zip(stamps, stamps[1:])} == {300_000}
    events = {ts for name, ts_set in first.items() if name == "inverter_event_element2" for ts in ts_set}
    assert len(events) == 20
    truth = {e.start * 1000 for e in simulator.simulator.records.events.events() if start <= e.start < end}
    assert events == truth
    again = run_history(config, "--since", iso(start), "--until", iso(end))
    assert again.returncode == 0, again.stderr
    assert timestamps() == first  # the same points, overwritten, none added


@pytest.mark.timeout(120)
def test_openmetrics_output_is_what_promtool_backfills(simulator: SimulatorThread, tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    out = tmp_path / "history.om"
    result = run_history(config_file(tmp_path, simulator.port), "--since", "1d", "--output", str(out),
                         "--format", "openmetrics")
    assert result.returncode == 0, result.stderr
    text = out.read_text(encoding="utf-8")
    assert text.endswith("# EOF\n")
    assert 'rctmon_history_5min_pv_a_power_watts{inverter="PS 6.0 history"}' in text
    assert "rctmon_history_inverter_event_duration_seconds{" in text
    blocks = tmp_path / "blocks"
    created = subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(out), str(blocks)],
                             capture_output=True, text=True, timeout=100)
    assert created.returncode == 0, created.stderr + created.stdout
    listed = subprocess.run([promtool, "tsdb", "list", str(blocks)], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) >= 2, listed.stdout + listed.stderr


@pytest.mark.timeout(180)
def test_through_corrupt_and_dropped_answers_the_points_equal_what_the_simulator_holds(tmp_path: Path) -> None:
    options = SimulatorOptions(name=NAME, history_days=3, events=20, corrupt_rate=0.05, drop_rate=0.1, seed=11)
    with SimulatorThread(options) as sim:
        config = Config()
        config.device.port = sim.port
        start, end = window()
        out = io.StringIO()
        args = argparse.Namespace(since=iso(start), until=iso(end), what="minutes,day,events",
                                  output=str(tmp_path / "out.lp"), format="line-protocol")
        assert history_command(config, args, out=out, err=io.StringIO()) == 0, out.getvalue()
        records = sim.simulator.records
        assert records.cut > 0 and sim.stats.corrupted > 0 and sim.stats.dropped > 0
    got: dict[tuple[str, str, int], float] = {}
    event_starts = []
    for line in (tmp_path / "out.lp").read_text(encoding="utf-8").splitlines():
        head, stamp = line.rsplit(" ", 1)
        if line.startswith("inverter_event"):
            event_starts.append(int(stamp) // 10**9)
            continue
        series, field = head.rsplit(" ", 1)
        name, value = field.split("=")
        key = (series.split(",")[0], name, int(stamp) // 10**9)
        assert key not in got, f"{key} written twice"
        got[key] = float(value)
    expected = {}
    for row in rows_for("minutes") + rows_for("day"):
        period_start = start if row.resolution.name == "minutes" else records.logger.day_start(start)
        for instant, raw in records.logger.points(row.object_name, period_start, end):
            expected[(row.resolution.measurement, row.field, instant)] = row.convert(raw)
    day_rows = {(m, f, i) for (m, f, i) in expected if m == "history_day"}
    today = max(i for _, _, i in day_rows)
    # today's energy is still being logged: compare the complete days exactly, today only by presence
    assert {k: v for k, v in got.items() if k[2] != today or k[0] != "history_day"} == {
        k: v for k, v in expected.items() if k[2] != today or k[0] != "history_day"}
    assert {k for k in got if k[0] == "history_day"} == day_rows
    assert sorted(event_starts) == sorted(e.start for e in records.events.events() if start <= e.start < end)
    assert "answers re-asked" in out.getvalue()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("now_text", ["2026-10-26T12:00:00", "2026-03-30T12:00:00"])
def test_a_window_with_a_dst_change_over_tcp_has_no_duplicated_and_no_missing_hour(now_text: str,
                                                                                  tmp_path: Path) -> None:
    now = utc(now_text)
    options = SimulatorOptions(name=NAME, history_days=4, events=5, timezone="Europe/Berlin", seed=2)
    with SimulatorThread(options) as sim:
        # the inverter's clock stands still at `now`, so that the window holds the change whatever today is
        records = Records(options, random.Random(5), started=now, clock=lambda: now)
        sim.simulator.records = records
        sim.simulator.write_answers.update(records.write_answers())
        config = Config()
        config.device.port = sim.port
        config.device.timezone = "Europe/Berlin"
        start, end = now - 3 * 86_400, now
        out = tmp_path / "out.csv"
        args = argparse.Namespace(since=iso(start), until=iso(end), what="minutes", output=str(out), format="csv")
        report = io.StringIO()
        assert history_command(config, args, out=report, err=io.StringIO()) == 0, report.getvalue()
    with open(out, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    instants = [int(r["epoch"]) for r in rows]
    assert instants == sorted(instants) and len(set(instants)) == len(instants)  # one row per timestamp
    assert {b - a for a, b in zip(instants, instants[1:])} == {300}
    assert instants[0] == start and instants[-1] == end - 300
    row = rows_for("minutes")[0]
    truth = dict(records.logger.points(row.object_name, start, end, now))
    assert {int(r["epoch"]): float(r[row.field]) for r in rows} == {i: row.convert(v) for i, v in truth.items()}


@pytest.mark.timeout(180)
def test_an_influxdb_outage_pauses_the_import_and_ctrl_c_keeps_the_points_for_the_next_run(
        simulator: SimulatorThread, tmp_path: Path) -> None:
    server = VictoriaMetrics()  # not started: InfluxDB is down
    try:
        config = config_file(tmp_path, simulator.port, server.url)
        start, end = window(0.5)
        log = tmp_path / "history.log"
        with open(log, "wb") as sink:
            proc = subprocess.Popen(rctmon_command("-c", str(config), "history", "--what", "minutes",
                                                   "--since", iso(start), "--until", iso(end)),
                                    stdout=sink, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: b"waiting for InfluxDB" in log.read_bytes(), 60, message="the import to wait")
            proc.send_signal(signal.SIGINT)
            assert proc.wait(20) == 130
        finally:
            stop_process(proc)
        text = log.read_text(encoding="utf-8")
        assert "go first with the next `rctmon history`" in text and "Traceback" not in text
        spool = tmp_path / "state" / "history-spool.sqlite"
        assert spool.exists()
        server.start()
        # the next run sends the kept points first, then its own (here: the events, a different window)
        result = run_history(config, "--what", "events", "--since", "2d")
        assert result.returncode == 0, result.stderr
        expected = len(rows_for("minutes")) * ((end - start) // 300)
        assert server.count('{__name__=~"history_5min_.+"}') == expected
        assert server.count('{__name__="inverter_event_element2"}') == 20
    finally:
        server.close()


@pytest.mark.timeout(180)
def test_an_outage_mid_import_loses_nothing(simulator: SimulatorThread, tmp_path: Path) -> None:
    server = VictoriaMetrics()
    try:
        config = config_file(tmp_path, simulator.port, server.url)
        start, end = window(1)
        log = tmp_path / "history.log"
        with open(log, "wb") as sink:
            proc = subprocess.Popen(rctmon_command("-c", str(config), "history", "--what", "minutes,day",
                                                   "--since", iso(start), "--until", iso(end)),
                                    stdout=sink, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: b"cannot write to InfluxDB" in log.read_bytes(), 60, message="a failed write")
            assert b"waiting for InfluxDB" in log.read_bytes() and proc.poll() is None
            server.start()  # InfluxDB comes back: the import finishes by itself
            assert proc.wait(60) == 0, log.read_text(encoding="utf-8")
        finally:
            stop_process(proc)
        minutes = len(rows_for("minutes")) * ((end - start) // 300)
        assert server.count('{__name__=~"history_5min_.+"}') == minutes
        assert server.count('{__name__=~"history_day_.+"}') >= len(rows_for("day"))
    finally:
        server.close()


def test_usage_errors_are_one_line_and_status_2(tmp_path: Path) -> None:
    config = config_file(tmp_path, 9)
    for args, message in ((["--since", "yesterday"], "neither a date"),
                          (["--what", "minutes,weeks"], "--what takes"),
                          (["--format", "csv"], "--format needs --output"),
                          (["--since", "1d", "--until", "2d"], "the window is empty")):
        result = run_history(config, *args, timeout=30)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, args


def test_an_unreachable_inverter_is_one_line_and_status_1(tmp_path: Path) -> None:
    from support import free_port

    result = run_history(config_file(tmp_path, free_port()), "--output", str(tmp_path / "x.lp"), timeout=90)
    assert result.returncode == 1 and "cannot read the inverter" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "x.lp").exists()


def test_the_schema_has_a_field_for_every_series() -> None:
    assert len({(r.resolution.measurement, r.field) for r in LOGGER_SERIES}) == len(LOGGER_SERIES) == 43


def test_the_progress_bar_on_a_terminal_and_plain_lines_otherwise(caplog: pytest.LogCaptureFixture) -> None:
    from rctmon.history.command import Progress
    from rctmon.history.engine import HistoryStats

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    class FakeReader:
        stats = HistoryStats(queries=120, points=4321)
        progress = 0.5

    terminal = Terminal()
    bar = Progress(FakeReader(), terminal)  # type: ignore[arg-type]
    bar.show()
    bar.done()
    text = terminal.getvalue()
    assert text.startswith("\r\033[K[############............]  50%  120 queries  4,321 points")
    assert text.endswith("left\r\033[K")
    plain = io.StringIO()
    with caplog.at_level("INFO", logger="rctmon.history"):
        Progress(FakeReader(), plain).show()  # type: ignore[arg-type]
    assert plain.getvalue() == "" and "120 queries" in caplog.text


@pytest.mark.timeout(120)
def test_history_runs_beside_the_daemon_on_the_same_inverter_and_influxdb(
        simulator: SimulatorThread, victoria: VictoriaMetrics, tmp_path: Path) -> None:
    config = config_file(tmp_path, simulator.port, victoria.url)
    log = tmp_path / "daemon.log"
    with open(log, "wb") as sink:
        daemon = subprocess.Popen(rctmon_command("-c", str(config), "daemon"), stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: victoria.count('{__name__=~"inverter_.+", __name__!~"inverter_event.*"}') > 0, 60,
                 message="live points from the daemon")
        start, end = window(1)
        result = run_history(config, "--what", "minutes,events", "--since", iso(start), "--until", iso(end))
        assert result.returncode == 0, result.stderr + result.stdout
        assert daemon.poll() is None  # the daemon never noticed
        # the daemon's own backfill (history.backfill, on by default) writes the hours before its start too
        in_window = {(name, labels, ms) for name, labels, ms, _ in victoria.export('{__name__=~"history_5min_.+"}')
                     if start * 1000 <= ms < end * 1000}
        assert len(in_window) == len(rows_for("minutes")) * ((end - start) // 300)
        before = victoria.count('{__name__=~"inverter_.+", __name__!~"inverter_event.*"}')
        wait_for(lambda: victoria.count('{__name__=~"inverter_.+", __name__!~"inverter_event.*"}') > before, 30,
                 message="live points still arriving")
    finally:
        stop_process(daemon)
    assert "Traceback" not in log.read_text(encoding="utf-8")


@pytest.mark.timeout(120)
def test_a_connection_dropped_again_and_again_costs_reconnects_never_points(tmp_path: Path) -> None:
    options = SimulatorOptions(name=NAME, history_days=3, events=20, latency_ms=60, disconnect_every=0.7, seed=4)
    with SimulatorThread(options) as sim:
        config = Config()
        config.device.port = sim.port
        start, end = window()
        report = io.StringIO()
        args = argparse.Namespace(since=iso(start), until=iso(end), what="minutes", output=str(tmp_path / "o.csv"),
                                  format="csv")
        assert history_command(config, args, out=report, err=io.StringIO()) == 0, report.getvalue()
        assert sim.stats.disconnects >= 2
        records = sim.simulator.records
    reconnects = int(report.getvalue().split(" reconnects")[0].rsplit(" ", 1)[-1])
    assert reconnects >= 2
    with open(tmp_path / "o.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows_for("minutes"):
        truth = {i: row.convert(v) for i, v in records.logger.points(row.object_name, start, end)}
        assert {int(r["epoch"]): float(r[row.field]) for r in rows} == truth
