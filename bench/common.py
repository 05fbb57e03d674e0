"""What every benchmark needs: processes on loopback, scrapes, memory and CPU of a process tree, a result row.

Every process a benchmark starts runs in a session (process group) of its own and is stopped through `Processes`,
a context manager that SIGTERMs each group, waits, and SIGKILLs what is left, whatever happened in between.
Only 127.0.0.1 and ports the kernel just handed out are used.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar
from collections.abc import Iterable, Mapping, Sequence

import yaml
from prometheus_client.parser import text_string_to_metric_families

from rctmon.catalog import Kind, Series, enabled_series
from rctmon.simulator import SimulatorOptions
from tests import support  # the helpers the tests use; bench/ runs from the checkout (python -m bench)
from tests.support import VictoriaMetrics

T = TypeVar("T")
PYTHON = sys.executable
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = "127.0.0.1"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
VICTORIA_METRICS = "/usr/bin/victoria-metrics"


# --- the result of a benchmark ------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table: a figure, its target, what was measured, and the same-run baseline."""

    figure: str
    target: str
    measured: str
    baseline: str
    ok: bool | None  # None: not judged (no target, or the benchmark could not run)
    notes: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return {True: "pass", False: "MISS", None: "-"}[self.ok]


class BenchError(RuntimeError):
    """A benchmark could not measure what it is for (a process did not start, a deadline passed)."""


# --- ports, files, processes ------------------------------------------------------------------------------------------


def free_port() -> int:
    """Return a TCP port on loopback that nothing listens on right now."""
    return support.free_port(HOST)


def wait_for(predicate: Callable[[], T | None], timeout: float, what: str, interval: float = 0.02) -> T:
    """Poll `predicate` as the tests do (support.wait_for); a deadline that passes is a BenchError here."""
    try:
        return support.wait_for(predicate, timeout, interval, what)
    except support.TimedOut as exc:
        raise BenchError(str(exc)) from None


def accepts(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=0.5).close()
        return True
    except OSError:
        return False


class Processes:
    """Start processes in their own process groups and stop every one of them on exit, even on failure."""

    def __init__(self, label: str) -> None:
        self.workdir = tempfile.mkdtemp(prefix=f"rctmon-bench-{label}-")
        self._procs: list[subprocess.Popen[bytes]] = []
        self.named: dict[str, subprocess.Popen[bytes]] = {}  # by log name without .log: simulator, daemon, ...
        self._adopted: set[int] = set()  # pids of processes started elsewhere, in our own group

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def path(self, name: str) -> str:
        return os.path.join(self.workdir, name)

    def start(self, argv: Sequence[str], log_name: str, env: Mapping[str, str] | None = None
              ) -> subprocess.Popen[bytes]:
        with open(self.path(log_name), "ab") as log:
            proc = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=REPO, env={**os.environ, **(env or {})}, start_new_session=True)
        self._procs.append(proc)
        self.named[log_name.rsplit(".", 1)[0]] = proc
        return proc

    def adopt(self, proc: subprocess.Popen[bytes], name: str) -> None:
        """Stop a process started elsewhere with the others (it is not in a group of its own: only it is signalled)."""
        self._procs.append(proc)
        self._adopted.add(proc.pid)
        self.named[name] = proc

    def log(self, log_name: str, tail: int = 1500) -> str:
        try:
            with open(self.path(log_name), "rb") as log:
                return log.read()[-tail:].decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 8.0) -> None:
        """SIGTERM the process group, wait up to `grace` seconds, then SIGKILL the group."""
        if proc.poll() is None:
            self._signal(proc, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        self._signal(proc, signal.SIGKILL)  # stragglers in the group (children of a killed parent)
        if proc.poll() is None:
            proc.wait(5)

    def _signal(self, proc: subprocess.Popen[bytes], signum: int) -> None:
        if proc.pid in self._adopted:
            proc.send_signal(signum)  # a no-op once it has been waited for
        else:
            _signal_group(proc, signum)

    def stop_all(self) -> None:
        for proc in reversed(self._procs):
            try:
                self.stop(proc)
            except Exception as exc:  # noqa: BLE001 - keep stopping the others
                print(f"bench: could not stop pid {proc.pid}: {exc!r}", file=sys.stderr)
        self._procs.clear()


def _signal_group(proc: subprocess.Popen[bytes], signum: int) -> None:
    try:
        os.killpg(proc.pid, signum)  # start_new_session: the group id is the leader's pid
    except (ProcessLookupError, PermissionError):
        pass


def exit_on_signals() -> None:
    """Turn SIGTERM and SIGHUP into SystemExit, so that `Processes` stops what it started (children run in
    sessions of their own and would outlive a benchmark killed without cleanup)."""
    def leave(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, leave)


rctmon = support.rctmon_command


# --- the simulator, victoria-metrics, the daemon ----------------------------------------------------------------------


#: The simulated installation every benchmark reads: the largest an RCT Power inverter takes, so that every figure
#: holds for any installation: two generators, a battery of seven modules (168 cells), a Power Switch and an
#: external generator. RCTMON_BENCH_MODULES=3 measures a smaller battery.
SIMULATOR = SimulatorOptions(generators=2, battery_modules=int(os.environ.get("RCTMON_BENCH_MODULES", "7")),
                             power_switch=True, external_generator=True)


def start_simulator(procs: Processes, latency_ms: float = 60.0, drop_rate: float = 0.0, seed: int | None = None,
                    log_name: str = "simulator.log") -> int:
    """Start `rctmon simulator` with the benchmark inventory; return its port once it accepts connections."""
    port = free_port()
    argv = rctmon("simulator", "--host", HOST, "--port", str(port), "--name", SIMULATOR.name,
                  "--generators", str(SIMULATOR.generators), "--battery-modules", str(SIMULATOR.battery_modules),
                  "--latency-ms", f"{latency_ms:g}", "--drop-rate", f"{drop_rate:g}")
    if SIMULATOR.external_generator:
        argv.append("--external-generator")
    if seed is not None:
        argv += ["--seed", str(seed)]
    proc = procs.start(argv, log_name)
    try:
        wait_for(lambda: proc.poll() is None and accepts(port), 20, "the simulator")
    except BenchError:
        raise BenchError(f"the simulator did not start: {procs.log(log_name)}") from None
    return port


def start_victoria_metrics(procs: Processes) -> str:
    """Start victoria-metrics (support.VictoriaMetrics) with a data directory in the workdir; return its URL."""
    if not os.path.exists(VICTORIA_METRICS):
        raise BenchError(f"{VICTORIA_METRICS} is not installed (apt-get install victoria-metrics)")
    server = VictoriaMetrics(VICTORIA_METRICS, data_dir=procs.path("vm-data"), port=free_port())
    try:
        server.start()
    except AssertionError as exc:  # TimedOut, or it exited
        raise BenchError(f"victoria-metrics did not start: {exc}") from None
    finally:
        if server.proc is not None:
            procs.adopt(server.proc, "victoria-metrics")
    return server.url


def daemon_config(device_port: int, metrics_port: int, influx_url: str | None = None,
                  spool_path: str = "", device: dict[str, Any] | None = None,
                  exposition: bool = True) -> dict[str, Any]:
    """Return a daemon configuration (as YAML data) for the benchmark: loopback only, logs at WARNING."""
    config: dict[str, Any] = {
        "device": {"host": HOST, "port": device_port, **(device or {})},
        "prometheus": {"enable": True, "exposition": exposition, "bind_address": HOST, "bind_port": metrics_port},
        "influxdb": {"enable": False},
        "mqtt": {"enable": False},
        "logging": {
            "version": 1,
            "formatters": {"simple": {"format": "%(asctime)s - %(name)s - %(levelname)s - %(message)s"}},
            "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "simple", "level": "INFO",
                                     "stream": "ext://sys.stdout"}},
            "root": {"level": "INFO", "handlers": ["console"]},
        },
    }
    if influx_url:
        config["influxdb"] = {"enable": True, "url": influx_url, "token": "", "bucket": "bench",
                              "spool_path": spool_path}
    return config


@dataclass
class Daemon:
    """A running `rctmon daemon` and where to reach it."""

    proc: subprocess.Popen[bytes]
    metrics_port: int
    started_at: float  # time.monotonic() just before the process was created

    @property
    def pid(self) -> int:
        return self.proc.pid


def start_daemon(procs: Processes, config: Mapping[str, Any], env: Mapping[str, str] | None = None,
                 name: str = "daemon") -> Daemon:
    """Write the configuration and start `rctmon -c FILE daemon`; return at once (it is not waited for)."""
    path = procs.path(f"{name}.yml")
    with open(path, "w") as out:
        yaml.safe_dump(dict(config), out)
    started = time.monotonic()
    proc = procs.start(rctmon("-c", path, "daemon"), f"{name}.log", env)
    return Daemon(proc, int(config["prometheus"]["bind_port"]), started)


# --- scraping ------------------------------------------------------------------------------------------------------

Labels = frozenset[tuple[str, str]]
Samples = dict[tuple[str, Labels], float]


def fetch_metrics(port: int, timeout: float = 2.0) -> str:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", "/metrics")
        answer = conn.getresponse()
        body = answer.read()
        if answer.status != 200:
            raise BenchError(f"/metrics answered {answer.status}")
        return body.decode("utf-8")
    finally:
        conn.close()


def parse_samples(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = float(sample.value)
    return samples


def scrape(port: int, timeout: float = 2.0) -> Samples:
    return parse_samples(fetch_metrics(port, timeout))


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


class Completeness:
    """Which catalog series the simulator's inventory enables, and whether an exposition carries all of them."""

    def __init__(self, options: SimulatorOptions = SIMULATOR) -> None:
        self.series: tuple[Series, ...] = enabled_series(options.inventory())
        self.families = frozenset(s.metric for s in self.series)

    def missing(self, samples: Samples) -> list[Series]:
        """Return the enabled series with no sample (info series: no sample carrying their field as a label)."""
        by_name: dict[str, list[Labels]] = {}
        for name, labels in samples:
            by_name.setdefault(name, []).append(labels)
        missing = []
        for s in self.series:
            for want in map(frozenset, s.sample_labels):  # a module's cells: every cell
                if not any(want <= labels and (s.row.kind is not Kind.INFO or any(k == s.row.field for k, _ in labels))
                           for labels in by_name.get(s.metric, ())):
                    missing.append(s)
                    break
        return missing


# --- memory and CPU of a process tree --------------------------------------------------------------------------


def children_of(pid: int) -> list[int]:
    """Return the pids of `pid`'s descendants (children first, then theirs)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                ppid = int(stat.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in sorted(parents.get(todo.pop(0), [])):
            found.append(child)
            todo.append(child)
    return found


def process_name(pid: int) -> str:
    """Return the title the process gave itself (`rctmon: collector` -> `collector`), or its command name."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            args = cmdline.read().split(b"\0")
    except OSError:
        return "?"
    first = args[0].decode("utf-8", "replace")
    return first[len("rctmon: "):] if first.startswith("rctmon: ") else os.path.basename(first)


def smaps_rollup(pid: int) -> dict[str, int]:
    """Return the fields of /proc/PID/smaps_rollup in bytes (Rss, Pss, Pss_Anon, Anonymous, ...)."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return fields


def cpu_seconds(pid: int) -> float:
    """Return utime + stime of a process (all its threads) from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        fields = stat.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def tree_cpu(pids: Iterable[int]) -> dict[int, float]:
    return {pid: cpu_seconds(pid) for pid in pids}


def mib(n: float) -> str:
    return f"{n / 2 ** 20:.1f} MB"


def load_average() -> str:
    try:
        with open("/proc/loadavg") as loadavg:
            return " ".join(loadavg.read().split()[:3])
    except OSError:
        return "?"


def percentile(values: Sequence[float], p: float) -> float:
    """Return the p-th percentile (0-100) by the nearest-rank method."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), int(-(-p * len(ordered) // 100))))
    return ordered[rank - 1]


def print_table(rows: Sequence[Row], markdown: bool = False, notes: bool = True) -> None:
    header = ("figure", "target", "measured", "baseline (same run)", "")
    lines = [header] + [(r.figure, r.target, r.measured, r.baseline, r.verdict) for r in rows]
    if markdown:
        print("| " + " | ".join(header[:4]) + " | result |")
        print("|" + "---|" * 5)
        for line in lines[1:]:
            print("| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |")
    else:
        widths = [max(len(line[i]) for line in lines) for i in range(5)]
        for n, line in enumerate(lines):
            print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())
            if n == 0:
                print("  ".join("-" * width for width in widths))
    lines_of_notes = [(r.figure, note) for r in rows for note in r.notes] if notes else []
    if lines_of_notes:
        print()
        for figure, note in lines_of_notes:
            print(f"- {figure}: {note}")
    sys.stdout.flush()


def run_alone(rows: Callable[[], Sequence[Row]]) -> int:
    """Run one benchmark as `python -m bench.<name>`: stop its processes on a signal, print its table."""
    exit_on_signals()
    print_table(rows())
    return 0
