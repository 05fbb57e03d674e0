"""CPU: CPU time per reading, summed over rctmon's processes, in steady state at the default tiers.

The daemon reads the simulator (60 ms per answer) at the default `device.intervals` (fast 10 s, medium 60 s, slow
300 s) with exposition on and writes to victoria-metrics, as in bench/memory.py. The simulator and
victoria-metrics are not counted. The window is 120 s long and placed between polls: it starts 15 s after the
first poll (so the first poll of every tier, and the inventory, are behind it) and ends 135 s after it, so it
holds twelve fast polls and two medium polls, the proportions of the steady state (the slow tier, every 300 s,
is left out). Readings are the difference of `rctmon_readings_total` on /metrics at both ends; the counter travels
in heartbeats and health messages, and both ends lie 5 s after a fast poll, so the counter shows that poll and
not the next as long as that relay takes less than 5 s. The difference is checked against the polls the window
holds (the simulator drops nothing, so every poll yields its tier's series). CPU is utime + stime from
/proc/PID/stat of the supervisor and every child (threads included, also those that ended, such as the HTTP
connection threads); it comes in clock ticks of 10 ms, so each end of each process is off by up to 10 ms, about
+-0.03 ms per reading over this window. /metrics is scraped every 15 s meanwhile, as a Prometheus server would.

    python -m bench.cpu
"""

from __future__ import annotations

import sys
import time

from bench.common import (BenchError, Completeness, Processes, Row, children_of, process_name, scrape, tree_cpu,
                          value)
from rctmon.catalog import Tier
from bench.memory import start_full_daemon, tree_memory

WINDOW = 120.0
START_AFTER_FIRST_POLL = 15.0
FAST_POLLS, MEDIUM_POLLS = 12, 2  # polls inside the window (fast every 10 s, medium every 60 s)
SCRAPE_EVERY = 15.0
TARGET_MS = 0.5


def _sleep_until(when: float) -> None:
    time.sleep(max(0.0, when - time.monotonic()))


def _readings(port: int) -> float:
    got = value(scrape(port), "rctmon_readings_total")
    if got is None:
        raise BenchError("no rctmon_readings_total on /metrics")
    return got


def measure(marginal_ms: float | None = None) -> Row:
    """Run the steady-state window; `marginal_ms` (from bench/headroom.py) is shown as the baseline."""
    with Processes("cpu") as procs:
        daemon, _ = start_full_daemon(procs)
        # The exposition became complete just after the first poll of every tier; that poll took < 1 s.
        first_poll = time.monotonic() - 0.5
        start = first_poll + START_AFTER_FIRST_POLL
        _sleep_until(start)
        pids = [daemon.pid] + children_of(daemon.pid)
        names = {pid: process_name(pid) for pid in pids}
        readings0 = _readings(daemon.metrics_port)
        cpu0 = tree_cpu(pids)
        t0 = time.monotonic()
        next_scrape = t0 + SCRAPE_EVERY
        while next_scrape < t0 + WINDOW - 1:
            _sleep_until(next_scrape)
            scrape(daemon.metrics_port)
            next_scrape += SCRAPE_EVERY
        _sleep_until(t0 + WINDOW)
        readings1 = _readings(daemon.metrics_port)
        cpu1 = tree_cpu(pids)
        elapsed = time.monotonic() - t0
        if children_of(daemon.pid) != pids[1:]:
            raise BenchError("a child was restarted during the window; the CPU sum would be incomplete")
        memory = tree_memory(daemon.pid)
    readings = readings1 - readings0
    tiers = [s.tier for s in Completeness().series]
    expected = FAST_POLLS * tiers.count(Tier.FAST) + MEDIUM_POLLS * tiers.count(Tier.MEDIUM)
    used: dict[str, float] = {names[pid]: cpu1[pid] - cpu0[pid] for pid in pids}
    total = sum(used.values())
    if readings <= 0:
        raise BenchError("no readings during the window")
    per_reading_ms = total / readings * 1000
    notes = [f"{readings:.0f} readings in {elapsed:.1f} s ({readings / elapsed:.2f}/s); CPU {total * 1000:.0f} ms = "
             + ", ".join(f"{name} {ms * 1000:.0f}" for name, ms in used.items()) + " ms",
             "CPU per second of wall time: " + ", ".join(f"{name} {ms / elapsed * 1000:.1f}"
                                                        for name, ms in used.items()) + " ms/s",
             f"PSS of the tree after the window: {memory.total('Pss') / 2 ** 20:.1f} MB"]
    if readings != expected:
        notes.append(f"rctmon_readings_total moved by {readings:.0f}, but the window holds {FAST_POLLS} fast and "
                     f"{MEDIUM_POLLS} medium polls = {expected} readings: the counter reaches /metrics later than "
                     f"5 s after a poll, or polls failed; the figure uses the counter")
    baseline = (f"{marginal_ms:.3f} ms/reading at full speed (headroom run)" if marginal_ms is not None
                else "- (headroom not run)")
    return Row("CPU per reading, default tiers, steady state", f"<= {TARGET_MS} ms", f"{per_reading_ms:.2f} ms",
               baseline, per_reading_ms <= TARGET_MS, notes)


def run(marginal_ms: float | None = None) -> list[Row]:
    return [measure(marginal_ms)]


if __name__ == "__main__":
    from bench.common import run_alone

    sys.exit(run_alone(run))
