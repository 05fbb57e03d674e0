"""Headroom: readings per second through collector -> supervisor -> both exporters, polled as fast as possible.

The simulator answers at once (`--latency-ms 0`); the daemon polls the fast, medium and slow tiers every 10 ms
(the static tier keeps its default: it is also how often the inventory is checked), with the prometheus exporter
(exposition on) and the influxdb exporter writing to victoria-metrics on loopback. The collector's pipelining
window (`device.max_in_flight`, 16) is what limits the rate: each burst of requests waits for its answers.

What is counted, after a warm-up: `rctmon_readings_total` (readings the collector decoded and sent to the
supervisor) and `rctmon_influxdb_points_written_total` (points victoria-metrics accepted: each reading is one
point, so this is the end of the longest path). Both counters reach /metrics in heartbeats (every 2 s) relayed by
the supervisor's health message (every 1 s), so they move in steps. /metrics is scraped every 0.25 s and each rate
is taken between the first and the last step seen in the window, which removes the relay's delay from the figure.
The result is the lower of the two rates, checked against what would show that an exporter fell behind: readings
dropped from the supervisor's backlogs and a growing InfluxDB spool.

The baseline is the same run with the influxdb exporter disabled: what the second exporter and victoria-metrics
cost on this machine.

    python -m bench.headroom
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from bench.common import (BenchError, Processes, Row, Samples, children_of, daemon_config, free_port, process_name,
                          scrape, start_daemon, start_simulator, start_victoria_metrics, tree_cpu, value, wait_for)

FAST = {"fast": 0.01, "medium": 0.01, "slow": 0.01}
WARMUP = 3.0
WINDOW = 10.0
SCRAPE_EVERY = 0.25
TARGET = 2000.0


@dataclass
class Steps:
    """Where a counter on /metrics changed: (time, new value)."""

    points: list[tuple[float, float]] = field(default_factory=list)

    def add(self, when: float, got: float | None) -> None:
        if got is None:
            return
        if not self.points or got != self.points[-1][1]:
            self.points.append((when, got))

    def rate(self) -> float | None:
        if len(self.points) < 3:  # the first entry is the value at the start, not a step
            return None
        (t0, v0), (t1, v1) = self.points[1], self.points[-1]
        return (v1 - v0) / (t1 - t0) if t1 > t0 else None


@dataclass
class Throughput:
    readings: float | None  # per second, collector
    written: float | None  # per second, influxdb points accepted (None: influxdb disabled)
    dropped: float  # readings dropped from the supervisor's backlogs during the window
    spool_start: float
    spool_end: float
    cpu: dict[str, float]  # share of one core per process during the window

    @property
    def through(self) -> float | None:
        """Return the rate at the end of the longest path: the lower of the two, or None if one did not move."""
        if self.readings is None:
            return None
        return self.readings if self.written is None else min(self.readings, self.written)


def _dropped(samples: Samples) -> float:
    return sum(v for (name, _), v in samples.items() if name == "rctmon_readings_dropped_total")


def measure(label: str, influx: bool, latency_ms: float = 0.0) -> Throughput:
    """Run the daemon flat out against the simulator and return its throughput."""
    with Processes(label) as procs:
        sim_port = start_simulator(procs, latency_ms=latency_ms)
        vm_url = start_victoria_metrics(procs) if influx else None
        config = daemon_config(sim_port, free_port(), influx_url=vm_url, spool_path=procs.path("spool.sqlite"),
                               device={"intervals": dict(FAST)})
        daemon = start_daemon(procs, config)

        def flowing() -> bool:
            if daemon.proc.poll() is not None:
                raise BenchError(f"the daemon exited: {procs.log('daemon.log')}")
            return (value(scrape(daemon.metrics_port), "rctmon_readings_total") or 0) > 0

        wait_for(flowing, 20, "readings on /metrics", interval=0.1)
        time.sleep(WARMUP)
        pids = [daemon.pid] + children_of(daemon.pid) + [procs.named["simulator"].pid]
        names = {pid: process_name(pid) for pid in pids}
        names[procs.named["simulator"].pid] = "(simulator)"
        readings, written = Steps(), Steps()
        first = scrape(daemon.metrics_port)
        cpu0, t0 = tree_cpu(pids), time.monotonic()
        last = first
        while time.monotonic() - t0 < WINDOW:
            time.sleep(SCRAPE_EVERY)
            last = scrape(daemon.metrics_port)
            now = time.monotonic()
            readings.add(now, value(last, "rctmon_readings_total"))
            written.add(now, value(last, "rctmon_influxdb_points_written_total"))
        cpu1, elapsed = tree_cpu(pids), time.monotonic() - t0
    return Throughput(
        readings=readings.rate(), written=(written.rate() or 0.0) if influx else None,
        dropped=_dropped(last) - _dropped(first),
        spool_start=value(first, "rctmon_influxdb_spool_points") or 0.0,
        spool_end=value(last, "rctmon_influxdb_spool_points") or 0.0,
        cpu={names[pid]: (cpu1[pid] - cpu0[pid]) / elapsed for pid in pids})


def cpu_ms_per_reading(result: Throughput) -> float | None:
    """Return CPU milliseconds per reading over rctmon's processes (the simulator is not rctmon)."""
    if not result.readings:
        return None
    return sum(share for name, share in result.cpu.items() if not name.startswith("(")) / result.readings * 1000


def _describe(result: Throughput) -> str:
    rates = f"collector {result.readings or 0:,.0f}/s"
    if result.written is not None:
        rates += f", influxdb written {result.written:,.0f}/s"
    return (f"{rates}; dropped from backlogs {result.dropped:.0f}; spool {result.spool_start:.0f} -> "
            f"{result.spool_end:.0f} points; CPU (share of a core) "
            + ", ".join(f"{name} {share * 100:.0f}%" for name, share in result.cpu.items()))


def run() -> tuple[list[Row], float | None]:
    """Return the row and the CPU per reading at full speed (the CPU benchmark's baseline)."""
    both = measure("headroom", influx=True)
    alone = measure("headroom-prom", influx=False)
    through = both.through
    spool_grew = both.spool_end - both.spool_start > max(1000.0, 0.1 * (both.written or 0) * WINDOW)
    ok = through is not None and through >= TARGET and both.dropped == 0 and not spool_grew
    notes = [f"both exporters: {_describe(both)}", f"prometheus only: {_describe(alone)}"]
    if spool_grew:
        notes.append("the InfluxDB spool grew during the window: the writer falls behind")
    marginal = cpu_ms_per_reading(both)
    if marginal is not None:
        notes.append(f"CPU per reading at this rate: {marginal:.3f} ms (all rctmon processes)")
    measured = f"{through:,.0f} readings/s" if through is not None else "no rate (counters did not move)"
    baseline = f"{alone.readings:,.0f} readings/s (influxdb disabled)" if alone.readings else "-"
    return [Row("headroom: readings/s through both exporters (0 ms latency)", ">= 2,000/s", measured, baseline, ok,
                notes)], marginal


if __name__ == "__main__":
    from bench.common import run_alone

    sys.exit(run_alone(lambda: run()[0]))
