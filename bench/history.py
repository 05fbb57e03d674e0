"""History import: 90 days of every 5-minute series at 60 ms latency, pipelined, beside one query at a time.

Starts `rctmon simulator --history-days 90 --latency-ms 60` and a victoria-metrics, then times `rctmon history
--since 90d --what minutes` into it (InfluxDB line protocol through the import's spool, until InfluxDB has taken the
last point) from just before the process is created to its exit. The baseline is the same import with
`device.max_in_flight: 1` (one query at a time), over 3 days and scaled by 30: 90 days at one query at a time would
take about a quarter of an hour.

    python -m bench.history
"""

from __future__ import annotations

import json
import resource
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass

import yaml

from bench.common import (HOST, BenchError, Processes, Row, accepts, free_port, rctmon, start_victoria_metrics,
                          wait_for)

LATENCY_MS = 60.0
DAYS = 90
BASELINE_DAYS = 3
TARGET_SECONDS = 180.0
MINUTE_SERIES = 22


@dataclass
class ImportRun:
    seconds: float
    points: int
    queries: int
    cpu_seconds: float  # the history process, user + system
    summary: str


def _start_simulator(procs: Processes, days: float) -> int:
    port = free_port()
    proc = procs.start(rctmon("simulator", "--host", HOST, "--port", str(port), "--history-days", f"{days:g}",
                              "--latency-ms", f"{LATENCY_MS:g}", "--events", "20"), "simulator.log")
    try:
        wait_for(lambda: proc.poll() is None and accepts(port), 20, "the simulator")
    except BenchError:
        raise BenchError(f"the simulator did not start: {procs.log('simulator.log')}") from None
    return port


def _count(url: str, match: str) -> int:
    """Return the number of samples victoria-metrics holds for the series `match` selects."""
    urllib.request.urlopen(f"{url}/internal/force_flush", timeout=30).close()
    query = urllib.parse.urlencode({"query": f"sum(count_over_time({match}[{DAYS + 2}d]))"})
    with urllib.request.urlopen(f"{url}/api/v1/query?{query}", timeout=60) as answer:
        result = json.loads(answer.read())["data"]["result"]
    return int(float(result[0]["value"][1])) if result else 0


def import_run(label: str, days: float, max_in_flight: int) -> ImportRun:
    """Time one `rctmon history` of `days` of 5-minute series into victoria-metrics."""
    with Processes(label) as procs:
        influx = start_victoria_metrics(procs)
        port = _start_simulator(procs, DAYS)
        config = {
            "device": {"host": HOST, "port": port, "max_in_flight": max_in_flight},
            "prometheus": {"enable": False},
            "influxdb": {"enable": True, "url": influx, "token": "bench", "bucket": "rct",
                         "spool_path": procs.path("state/influxdb-spool.sqlite")},
        }
        path = procs.path("rctmon.yml")
        with open(path, "w", encoding="utf-8") as f:
            yaml.safe_dump(config, f)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        proc = procs.start(rctmon("-c", path, "history", "--since", f"{days:g}d", "--what", "minutes"), "history.log")
        status = proc.wait(3600)
        seconds = time.monotonic() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        log = procs.log("history.log", tail=20_000)
        if status != 0:
            raise BenchError(f"rctmon history exited with {status}: {log[-1500:]}")
        summary = next((line for line in log.splitlines() if line.startswith("Read ")), "")
        queries_line = next((line for line in log.splitlines() if " queries, " in line), "0 queries")
        queries = int(queries_line.split(" queries")[0].replace(",", "").split()[-1])
        points = _count(influx, '{__name__=~"history_5min_.+"}')
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return ImportRun(seconds, points, queries, cpu, f"{summary} {queries_line}")


def run() -> list[Row]:
    figure = f"history: {DAYS} days of every 5-minute series at {LATENCY_MS:g} ms latency"
    pipelined = import_run("history", DAYS, 16)
    expected = MINUTE_SERIES * DAYS * 288
    one_at_a_time = import_run("history-serial", BASELINE_DAYS, 1)
    scaled = one_at_a_time.seconds * DAYS / BASELINE_DAYS
    notes = [
        f"{pipelined.points:,} points ({expected:,} expected: {MINUTE_SERIES} series x {DAYS} days x 288) from "
        f"{pipelined.queries:,} queries in {pipelined.seconds:.1f} s, {pipelined.points / pipelined.seconds:,.0f} "
        f"points/s, {pipelined.queries / pipelined.seconds:,.0f} queries/s; the history process used "
        f"{pipelined.cpu_seconds:.1f} s of CPU",
        f"baseline: device.max_in_flight 1 over {BASELINE_DAYS} days: {one_at_a_time.queries:,} queries, "
        f"{one_at_a_time.points:,} points in {one_at_a_time.seconds:.1f} s, scaled x{DAYS // BASELINE_DAYS}",
    ]
    ok = pipelined.seconds <= TARGET_SECONDS and pipelined.points >= expected * 0.99
    return [Row(figure, f"<= {TARGET_SECONDS:.0f} s", f"{pipelined.seconds:.0f} s",
                f"{scaled:.0f} s (one query at a time, {BASELINE_DAYS} days x {DAYS // BASELINE_DAYS})", ok, notes)]


if __name__ == "__main__":
    from bench.common import run_alone

    sys.exit(run_alone(run))
