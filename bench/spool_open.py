"""Spool: what opening a full spool costs, now that sqlite's integrity check runs at every open (issue 11).

A spool is filled with 2,000,000 real lines (the default `influxdb.spool_max_points`), closed, and opened again
as the influxdb child opens it: `Spool(path, ...)`, which runs `PRAGMA quick_check` on a read-only connection
(bounded by `spool.CHECK_SECONDS`) before it counts the points. Each open is timed twice: with the file in the page
cache, and with its pages dropped from the cache first (`posix_fadvise(DONTNEED)`, no root needed), which is what a
start after a reboot sees. Baseline, the same run: what an open cost before the check, the counts alone
(`SELECT count(*)` of both tables on a fresh connection).

    python -m bench.spool_open [--points 2000000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from typing import Callable

from bench.common import Row
from bench.influx_drain import fill
from rctmon.exporters import spool as spool_module
from rctmon.exporters.spool import Spool

POINTS = 2_000_000
RUNS = 3


def _drop_cache(path: str) -> None:
    for name in (path, path + "-wal"):
        try:
            fd = os.open(name, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _open_spool(path: str) -> None:
    Spool(path, POINTS * 2).close()


def _counts_only(path: str) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute("SELECT (SELECT count(*) FROM points), (SELECT count(*) FROM held)").fetchone()
    finally:
        conn.close()


def _best(action: Callable[[str], None], path: str, cold: bool) -> float:
    times = []
    for _ in range(RUNS):
        if cold:
            _drop_cache(path)
        began = time.perf_counter()
        action(path)
        times.append(time.perf_counter() - began)
    return min(times)


def run(points: int = POINTS) -> list[Row]:
    workdir = tempfile.mkdtemp(prefix="rctmon-bench-spool-")
    try:
        path = os.path.join(workdir, "spool.sqlite")
        fill(path, points)
        megabytes = os.path.getsize(path) / 1e6
        rows = []
        for cold in (False, True):
            where = "from the disk" if cold else "from the page cache"
            opened = _best(_open_spool, path, cold)
            counted = _best(_counts_only, path, cold)
            rows.append(Row(f"spool: open with integrity check, {points:,} points ({megabytes:.0f} MB), {where}",
                            f"<= {spool_module.CHECK_SECONDS:g} s (the check's budget)", f"{opened:.2f} s",
                            f"{counted:.2f} s (the counts alone, as before the check)",
                            opened <= spool_module.CHECK_SECONDS + counted + 1.0,
                            [f"best of {RUNS}; the supervisor kills a child that says nothing for 20 s"]))
        return rows
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    from bench.common import print_table

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=POINTS)
    args = parser.parse_args(argv)
    print_table(run(args.points))
    return 0


if __name__ == "__main__":
    sys.exit(main())
