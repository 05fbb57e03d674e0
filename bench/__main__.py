"""Run every benchmark and print one table: figure, target, measured, same-run baseline, pass/miss.

    python -m bench                  # everything (about 3 minutes on 2 cores)
    python -m bench startup scrape   # only these (the keys of BENCHMARKS below; --help lists them)
    python -m bench --markdown       # the table as Markdown too, for docs/performance.md

A benchmark that cannot run (a missing binary, a process that does not start) prints a row saying why and the
others go on. Every process a benchmark starts is stopped when it ends, whatever happened.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
import traceback
from typing import Callable

from bench.common import VICTORIA_METRICS, Row, exit_on_signals, load_average, print_table

INFLUX_POINTS = 1_000_000
INFLUX_RATE = 2000.0  # live readings per second while the backlog drains (the headroom target)


def _startup() -> list[Row]:
    from bench import startup

    return startup.run()


def _memory() -> list[Row]:
    from bench import memory

    return memory.run()


#: Figures one benchmark hands to another in the same run (headroom's CPU per reading is the CPU baseline).
_SHARED: dict[str, float] = {}


def _cpu() -> list[Row]:
    from bench import cpu

    return cpu.run(_SHARED.get("marginal_ms"))


def _headroom() -> list[Row]:
    from bench import headroom

    rows, marginal = headroom.run()
    if marginal is not None:
        _SHARED["marginal_ms"] = marginal
    return rows


def _scrape() -> list[Row]:
    from bench import scrape

    return scrape.run()


def _spool() -> list[Row]:
    from bench import spool_open

    return spool_open.run()


def _framer() -> list[Row]:
    from bench import framer

    return framer.run()


def _influx() -> list[Row]:
    """Run bench/influx_drain.py (the InfluxDB engineer's benchmark): drain only as baseline, then with live flow."""
    figure = "InfluxDB: 1M spooled points drain (readings flowing)"
    if not os.path.exists(VICTORIA_METRICS):
        return [Row(figure, ">= 50,000 points/s", "not run", "-", None, [f"{VICTORIA_METRICS} is not installed"])]
    try:
        from bench import influx_drain
    except ImportError as exc:
        return [Row(figure, ">= 50,000 points/s", "not run", "-", None,
                    [f"bench/influx_drain.py is not available: {exc}"])]
    baseline, _, base_samples = influx_drain.run_once(INFLUX_POINTS, 0.0, 5000)
    flowing, fill_seconds, samples = influx_drain.run_once(INFLUX_POINTS, INFLUX_RATE, 5000)
    notes = [f"from bench/influx_drain.py: {flowing.points:,} points in {flowing.seconds:.1f} s while "
             f"{flowing.live_readings:,} live readings arrived at {INFLUX_RATE:,.0f}/s (slowest ack "
             f"{flowing.max_ack_lag * 1000:.0f} ms); exporter child CPU {flowing.cpu_seconds:.1f} s; "
             f"victoria-metrics holds {samples:,} samples (baseline run: {base_samples:,})",
             f"spool filled at {INFLUX_POINTS / fill_seconds:,.0f} points/s before the child starts"]
    return [Row(figure, ">= 50,000 points/s", f"{flowing.rate:,.0f} points/s",
                f"{baseline.rate:,.0f} points/s (drain only, nothing flowing)", flowing.rate >= 50_000, notes)]


def _history() -> list[Row]:
    from bench import history

    return history.run()


def _backfill() -> list[Row]:
    from bench import backfill

    return backfill.run()


BENCHMARKS: dict[str, Callable[[], list[Row]]] = {
    "startup": _startup,
    "memory": _memory,
    "headroom": _headroom,  # before cpu: its CPU per reading at full speed is cpu's baseline
    "cpu": _cpu,
    "scrape": _scrape,
    "influx": _influx,
    "history": _history,
    "backfill": _backfill,
    "framer": _framer,
    "spool": _spool,
}


def machine() -> dict[str, str]:
    """Return what the numbers were measured on."""
    model = "?"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")
    except OSError:
        pass
    memory = "?"
    try:
        with open("/proc/meminfo") as meminfo:
            kb = int(next(line for line in meminfo if line.startswith("MemTotal")).split()[1])
            memory = f"{kb / 2 ** 20:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": f"{os.cpu_count()} (nproc {len(os.sched_getaffinity(0))})",
        "cpu model": model,
        "memory": memory,
        "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("only", nargs="*", choices=[[]] + list(BENCHMARKS), metavar="NAME",
                        help=f"run only these: {', '.join(BENCHMARKS)}")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown as well")
    args = parser.parse_args(argv)
    exit_on_signals()
    names = args.only or list(BENCHMARKS)
    for key, value in machine().items():
        print(f"{key}: {value}")
    print(f"load average before: {load_average()}", flush=True)
    rows: list[Row] = []
    began = time.monotonic()
    for name in names:
        started = time.monotonic()
        print(f"running {name} ...", flush=True)
        try:
            got = BENCHMARKS[name]()
        except Exception as exc:  # noqa: BLE001 - one broken benchmark must not hide the others' numbers
            traceback.print_exc()
            got = [Row(name, "-", "not measured", "-", None, [f"{type(exc).__name__}: {exc}"])]
        rows.extend(got)
        print(f"  {name} took {time.monotonic() - started:.0f} s (load average {load_average()})", flush=True)
    print(f"\nall benchmarks took {time.monotonic() - began:.0f} s\n")
    print_table(rows)
    if args.markdown:
        print()
        print_table(rows, markdown=True, notes=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
