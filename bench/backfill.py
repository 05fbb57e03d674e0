"""Backfill: the daemon fills 7 days (history.max_gap) from the inverter's logger at 60 ms latency while it polls.

Starts `rctmon simulator --latency-ms 60` (90 days of history) and a victoria-metrics, then `rctmon daemon` with
InfluxDB, `history.first_start: 7d` and the fast tier polled every second: a first install that fills a week. The
time is from just before the daemon's process is created until victoria-metrics holds every 5-minute step of the
week (the step in progress at the start excepted: the logger writes it when it ends). Live polling comes first, so
the figure that matters is the fast tier's freshness meanwhile: the longest hole between two stored values of a fast
series (`grid_frequency`) while the backfill runs, beside the same daemon without the backfill
(`history.backfill: false`) over the same time. The issue asks for at most twice the fast interval.

    python -m bench backfill
"""

from __future__ import annotations

import json
import sys
import time
import urllib.parse
import urllib.request

from bench.common import (BenchError, Processes, Row, daemon_config, free_port, start_daemon, start_simulator,
                          start_victoria_metrics, wait_for)

LATENCY_MS = 60.0
DAYS = 7
FAST = 1.0
MINUTE_SERIES = 22
FAST_SERIES = "grid_frequency"


def _get(url: str, path: str, params: dict[str, str]) -> bytes:
    with urllib.request.urlopen(f"{url}{path}?{urllib.parse.urlencode(params)}", timeout=60) as answer:
        body: bytes = answer.read()
        return body


def _history_points(url: str) -> int:
    urllib.request.urlopen(f"{url}/internal/force_flush", timeout=30).close()
    query = f'sum(count_over_time({{__name__=~"history_5min_.+"}}[{DAYS + 2}d]))'
    result = json.loads(_get(url, "/api/v1/query", {"query": query}))["data"]["result"]
    return int(float(result[0]["value"][1])) if result else 0


def _longest_hole(url: str, start: float, end: float) -> float:
    """Return the longest time between two stored values of the fast series within [start, end]."""
    urllib.request.urlopen(f"{url}/internal/force_flush", timeout=30).close()
    body = _get(url, "/api/v1/export", {"match[]": f'{{__name__="{FAST_SERIES}"}}', "start": "0"})
    times = sorted(ts / 1000 for line in body.splitlines() if line.strip()
                   for ts in json.loads(line)["timestamps"] if start <= ts / 1000 <= end)
    if len(times) < 2:
        raise BenchError(f"no {FAST_SERIES} values between the start and the end")
    return max(b - a for a, b in zip([start, *times], [*times, end]))


def run_once(label: str, backfill: bool, seconds: float | None = None) -> tuple[float, float, int]:
    """Run the daemon; return (seconds until the week is in InfluxDB, or `seconds`; longest fast hole; points)."""
    expected = MINUTE_SERIES * (DAYS * 288 - 1)
    with Processes(label) as procs:
        influx = start_victoria_metrics(procs)
        port = start_simulator(procs, LATENCY_MS)
        config = daemon_config(port, free_port(), influx, procs.path("state/influxdb-spool.sqlite"),
                               device={"intervals": {"fast": FAST, "medium": 10.0, "slow": 60.0}})
        config["history"] = {"backfill": backfill, "first_start": f"{DAYS}d"}
        daemon = start_daemon(procs, config)
        wall_start = time.time()
        if seconds is None:
            wait_for(lambda: _history_points(influx) >= expected, 600, "the week in victoria-metrics", interval=0.5)
            seconds = time.monotonic() - daemon.started_at
        else:
            wait_for(lambda: time.monotonic() - daemon.started_at >= seconds, seconds + 5, "the same time",
                     interval=0.2)
        points = _history_points(influx)
        # the first values come once the daemon has connected: measure from the first one on
        first = wall_start + 3.0
        hole = _longest_hole(influx, first, wall_start + seconds)
        if daemon.proc.poll() is not None:
            raise BenchError(f"the daemon exited: {procs.log('daemon.log')}")
        return seconds, hole, points


def run() -> list[Row]:
    figure = f"backfill: {DAYS} days of every 5-minute series at {LATENCY_MS:g} ms latency, polling meanwhile"
    seconds, hole, points = run_once("backfill", True)
    _, quiet_hole, _ = run_once("backfill-off", False, seconds)
    notes = [f"{points:,} history points ({MINUTE_SERIES} series x {DAYS} days x 288, the step in progress excepted) "
             f"in {seconds:.1f} s from the daemon's start; longest hole of {FAST_SERIES} (fast tier, every "
             f"{FAST:g} s) while it ran: {hole:.2f} s; without the backfill over the same {seconds:.0f} s: "
             f"{quiet_hole:.2f} s"]
    return [Row(f"{figure}: longest hole of a fast value", f"<= {2 * FAST:g} s (2 x fast)", f"{hole:.2f} s",
                f"{quiet_hole:.2f} s (history.backfill: false)", hole <= 2 * FAST, notes)]


if __name__ == "__main__":
    from bench.common import run_alone

    sys.exit(run_alone(run))
