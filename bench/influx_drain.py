"""Benchmark: how fast a spooled backlog of a million points drains into a real server.

    python -m bench.influx_drain [--points 1000000] [--rate 2000] [--batch-size 5000]

A spool is filled with real lines (the catalog's series, one inverter, distinct timestamps), victoria-metrics is
started on loopback, and the influxdb exporter child runs exactly as under the supervisor (forked, `run(config,
channel)`), with default settings except the spool path. Two runs, each on a fresh spool and server:

1. drain only: nothing else arrives;
2. drain while new readings keep flowing: a stand-in supervisor sends ReadingBatches at --rate readings per second
   (the daemon's headroom target; a real inverter gives under 20) and checks that their acks keep coming.

The backlog counts as drained when the oldest point left in the spool is newer than the backlog (read from the
spool file by a separate connection every 20 ms). Afterwards the server is asked how many samples it holds.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass

from rctmon.catalog import SERIES
from rctmon.channel import Channel, ChannelClosed
from rctmon.config import Config, InfluxDBConfig
from rctmon.exporters.lineprotocol import EXPORTED_IDS, LineEncoder
from rctmon.exporters.spool import Spool
from rctmon.inventory import Inventory
from rctmon.messages import Ack, Reading, ReadingBatch, Started, Stop
from bench.common import cpu_seconds
from tests.support import VictoriaMetrics, wait_messages

INVERTER = "bench"


def make_readings(count: int, start_ns: int, first: int = 0) -> list[Reading]:
    """Return `count` readings over the exported catalog series, 1 ms apart (victoria-metrics keeps ms)."""
    series = [s for s in SERIES if s.object_id in EXPORTED_IDS and s.data_type.name == "FLOAT"]
    return [(series[i % len(series)].object_id, float(i % 5000) * 0.5, start_ns + i * 1_000_000)
            for i in range(first, first + count)]


def fill(path: str, points: int) -> tuple[int, float]:
    """Fill a spool with `points` lines; return (last id, seconds it took)."""
    encoder = LineEncoder(INVERTER)
    start_ns = (time.time_ns() // 1_000_000 - points - 3_600_000) * 1_000_000  # in the past, before live readings
    spool = Spool(path, max(points * 2, 2_000_000))
    began = time.perf_counter()
    for first in range(0, points, 50_000):
        spool.append(encoder.encode_all(make_readings(min(50_000, points - first), start_ns, first)))
    elapsed = time.perf_counter() - began
    last = spool.peek(1)[0][0] + spool.count - 1
    spool.close()
    return last, elapsed


def _child(config: Config, channel: Channel, parent_fd: int) -> None:
    from rctmon.child import run_child
    from rctmon.proc import become_child
    from rctmon.registry import CHILD_BY_NAME

    os.close(parent_fd)
    become_child("influxdb")
    run_child(CHILD_BY_NAME["influxdb"], config, channel)


def _oldest(conn: sqlite3.Connection) -> int | None:
    row = conn.execute("SELECT min(id) FROM points").fetchone()
    return row[0] if row else None


@dataclass
class Result:
    points: int
    seconds: float
    live_readings: int = 0
    max_ack_lag: float = 0.0
    cpu_seconds: float = 0.0  # of the exporter child

    @property
    def rate(self) -> float:
        return self.points / self.seconds


def drain(server: VictoriaMetrics, path: str, points: int, last_id: int, rate: float, batch_size: int) -> Result:
    """Run the exporter child on a filled spool; return how long the backlog took to leave it."""
    config = Config(influxdb=InfluxDBConfig(enable=True, url=server.url, token="", bucket="bench",
                                            batch_size=batch_size, spool_path=path,
                                            spool_max_points=max(points * 2, 2_000_000)))
    ours, theirs = Channel.pair()
    process = multiprocessing.get_context("fork").Process(target=_child, args=(config, theirs, ours.fileno()))
    reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    seq, max_lag, live = 0, 0.0, 0
    sent_at: dict[int, float] = {}
    live_ns = time.time_ns() - 600_000_000_000
    began = time.monotonic()  # the clock includes the child's start: imports, opening the spool
    process.start()
    theirs.close()
    try:
        started = False
        while not started:
            started = any(isinstance(m, Started) for m in wait_messages(ours, 1.0))
        ours.send(Inventory(name=INVERTER, complete=True))
        next_batch, next_check = began, began
        while True:
            now = time.monotonic()
            if rate and now >= next_batch:  # 20 batches per second, like a busy collector
                batch = make_readings(int(rate / 20), live_ns, live)
                live += len(batch)
                seq += 1
                sent_at[seq] = now
                ours.send(ReadingBatch(tuple(batch), seq))
                next_batch += 0.05
            if now >= next_check:
                oldest = _oldest(reader)
                if oldest is None or oldest > last_id:
                    break
                next_check = now + 0.02
            try:
                messages = wait_messages(ours, max(0.0, min(next_batch if rate else next_check, next_check) - now))
            except ChannelClosed as exc:
                raise SystemExit("the exporter child died") from exc
            for message in messages:
                if isinstance(message, Ack):
                    for done in [s for s in sent_at if s <= message.seq]:
                        max_lag = max(max_lag, time.monotonic() - sent_at.pop(done))
        elapsed = time.monotonic() - began
        cpu = cpu_seconds(process.pid or 0)
        ours.send(Stop())
        process.join(10)
    finally:
        if process.is_alive():
            process.kill()
            process.join(5)
        reader.close()
        ours.close()
    return Result(points, elapsed, live, max_lag, cpu)


def stored_samples(server: VictoriaMetrics) -> int:
    server.flush()
    query = urllib.parse.urlencode({"query": 'sum(count_over_time({__name__=~".+"}[10y]))'})
    with urllib.request.urlopen(f"{server.url}/api/v1/query?{query}", timeout=60) as answer:
        result = json.loads(answer.read())["data"]["result"]
    return int(float(result[0]["value"][1])) if result else 0


def run_once(points: int, rate: float, batch_size: int) -> tuple[Result, float, int]:
    workdir = tempfile.mkdtemp(prefix="rctmon-bench-influx-")
    server = VictoriaMetrics(data_dir=os.path.join(workdir, "vm"))
    try:
        path = os.path.join(workdir, "spool.sqlite")
        last_id, fill_seconds = fill(path, points)
        server.start()
        result = drain(server, path, points, last_id, rate, batch_size)
        deadline = time.monotonic() + 30
        samples = stored_samples(server)
        while samples < points and time.monotonic() < deadline:  # the server makes writes visible within ~1 s
            time.sleep(0.5)
            samples = stored_samples(server)
        return result, fill_seconds, samples
    finally:
        server.close()
        shutil.rmtree(workdir, ignore_errors=True)


def machine() -> str:
    model = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
    except OSError:
        pass
    try:
        version = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "victoria-metrics"], capture_output=True,
                                 text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        version = ""
    return (f"{model or platform.processor()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"victoria-metrics {version or '?'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=1_000_000, help="backlog size (default 1,000,000)")
    parser.add_argument("--rate", type=float, default=2000.0, help="live readings per second in run 2")
    parser.add_argument("--batch-size", type=int, default=5000, help="influxdb.batch_size (default 5000)")
    args = parser.parse_args(argv)
    print(f"machine: {machine()}")
    rows = []
    for label, rate in (("drain only", 0.0), (f"drain + {args.rate:.0f} readings/s", args.rate)):
        result, fill_seconds, samples = run_once(args.points, rate, args.batch_size)
        rows.append((label, result, fill_seconds, samples))
        print(f"{label}: {result.points:,} points in {result.seconds:.1f} s = {result.rate:,.0f} points/s"
              f" (child CPU {result.cpu_seconds:.1f} s; spool filled at {args.points / fill_seconds:,.0f} points/s;"
              f" server holds {samples:,} samples"
              + (f"; {result.live_readings:,} live readings, slowest ack {result.max_ack_lag * 1000:.0f} ms"
                 if rate else "") + ")", flush=True)
    worst = min(r.rate for _, r, _, _ in rows)
    print(f"\nInfluxDB drain (target >= 50,000 points/s): {worst:,.0f} points/s "
          f"{'OK' if worst >= 50_000 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
