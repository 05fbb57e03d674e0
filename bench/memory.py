"""Memory: proportional set size (PSS) of the daemon's whole process tree, Prometheus and InfluxDB enabled.

The daemon reads the simulator (60 ms per answer) with exposition on and writes to victoria-metrics on loopback.
Once every value is on /metrics and a few heartbeats have passed, Pss is summed from /proc/PID/smaps_rollup over
the supervisor and all its children. PSS divides every shared page among the processes that map it, so the sum
counts each page once; RSS counts shared pages in every process, so the RSS sum overstates a forked tree.

The supervisor forks its children (rctmon/supervisor.py, `_FORK`): they share the supervisor's imported modules
copy-on-write. What spawn or forkserver would cost is estimated from the same snapshot: each child would hold its
own copy of every anonymous page it maps (the `Anonymous` field counts shared anonymous pages in full), while
file-backed pages (the interpreter, shared libraries) stay shared: spawn ~= sum(Anonymous + Pss_File + Pss_Shmem).

    python -m bench.memory
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from bench.common import (BenchError, Completeness, Daemon, Processes, Row, children_of, daemon_config, free_port,
                          mib, process_name, scrape, smaps_rollup, start_daemon, start_simulator,
                          start_victoria_metrics, value, wait_for)

SETTLE = 6.0  # seconds after the exposition is complete: heartbeats, the first InfluxDB writes
TARGET = 80 * 2 ** 20
OLDER_PROGRAM_RSS = 56 * 2 ** 20  # the older single-process program, as the issue quotes it


@dataclass
class TreeMemory:
    per_process: list[tuple[str, int, dict[str, int]]]  # (role, pid, smaps_rollup fields in bytes)

    def total(self, key: str) -> int:
        return sum(fields.get(key, 0) for _, _, fields in self.per_process)

    @property
    def spawn_estimate(self) -> int:
        return self.total("Anonymous") + self.total("Pss_File") + self.total("Pss_Shmem")

    def describe(self) -> str:
        return "; ".join(f"{role} {mib(fields['Pss'])} PSS / {mib(fields['Rss'])} RSS"
                         for role, _, fields in self.per_process)


def tree_memory(pid: int) -> TreeMemory:
    """Return smaps_rollup of `pid` and of all its descendants."""
    rows = []
    for p in [pid] + children_of(pid):
        try:
            rows.append((process_name(p), p, smaps_rollup(p)))
        except OSError:
            continue  # exited meanwhile
    return TreeMemory(rows)


def start_full_daemon(procs: Processes) -> tuple[Daemon, str]:
    """Start simulator, victoria-metrics and the daemon (prometheus with exposition, influxdb); wait until complete.

    Return the daemon and the victoria-metrics URL.
    """
    sim_port = start_simulator(procs, latency_ms=60.0)
    vm_url = start_victoria_metrics(procs)
    config = daemon_config(sim_port, free_port(), influx_url=vm_url, spool_path=procs.path("spool.sqlite"))
    daemon = start_daemon(procs, config)
    completeness = Completeness()

    def complete() -> bool:
        if daemon.proc.poll() is not None:
            raise BenchError(f"the daemon exited: {procs.log('daemon.log')}")
        return not completeness.missing(scrape(daemon.metrics_port))

    try:
        wait_for(complete, 20, "a complete exposition", interval=0.05)
    except BenchError as exc:
        raise BenchError(f"{exc}; daemon log: {procs.log('daemon.log')}") from None
    return daemon, vm_url


def run() -> list[Row]:
    with Processes("memory") as procs:
        daemon, _ = start_full_daemon(procs)
        time.sleep(SETTLE)
        samples = scrape(daemon.metrics_port)
        written = value(samples, "rctmon_influxdb_points_written_total") or 0.0
        memory = tree_memory(daemon.pid)
    roles = sorted(role for role, _, _ in memory.per_process)
    pss, rss = memory.total("Pss"), memory.total("Rss")
    notes = [f"per process: {memory.describe()}",
             f"start method fork; estimated with spawn/forkserver (each process its own anonymous pages): "
             f"{mib(memory.spawn_estimate)}",
             f"{len(roles)} processes ({', '.join(roles)}); {written:.0f} points written to victoria-metrics "
             f"during the {SETTLE:g} s after the exposition was complete"]
    return [Row("memory: PSS of the process tree (prometheus + influxdb)", "<= 80 MB", mib(pss),
                f"{mib(rss)} RSS sum of the same tree (older program: {mib(OLDER_PROGRAM_RSS)} RSS)",
                pss <= TARGET, notes)]


if __name__ == "__main__":
    from bench.common import run_alone

    sys.exit(run_alone(run))
