"""The whole daemon against the simulator: `rctmon daemon` and `rctmon simulator` as real processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support import child_pids, free_port, pid_gone, rctmon_command, require_binary, stop_process, wait_for
from rctmon import catalog
from rctmon.simulator import SimulatorOptions

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
SIM = SimulatorOptions(name="Garage PS 6.0", generators=2, battery_modules=3, power_switch=True)


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


class Simulator:
    def __init__(self, port: int, *extra: str) -> None:
        self.port, self.extra = port, extra
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            rctmon_command("simulator", "--port", str(self.port), "--name", SIM.name, "--generators", "2",
                           "--battery-modules", "3", *self.extra),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: socket.create_connection(("127.0.0.1", self.port), timeout=1).close() or True, 10,
                 message="simulator listening")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


class Daemon:
    def __init__(self, tmp_path, device_port: int, env: dict[str, str] | None = None, **sections: str) -> None:
        self.metrics_port = free_port()
        self.config = tmp_path / "rctmon.yml"
        self.config.write_text(
            f"device:\n  host: 127.0.0.1\n  port: {device_port}\n  intervals:\n    fast: 1\n    medium: 2\n"
            f"    slow: 3\n    static: 30\n"
            f"prometheus:\n  exposition: true\n  bind_port: {self.metrics_port}\n" + "".join(sections.values()))
        self.log = open(tmp_path / "daemon.log", "wb")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(rctmon_command("-c", str(self.config), "daemon"),
                                     stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})

    def scrape(self) -> Samples:
        return scrape(self.metrics_port)

    def children(self) -> dict[str, int]:
        return child_pids(self.proc.pid)

    def stop(self) -> int | None:
        children = list(self.children().values())
        code = stop_process(self.proc)
        for pid in children:
            if not pid_gone(pid):
                os.kill(pid, signal.SIGKILL)
        self.log.close()
        return code


@pytest.fixture
def simulator() -> Iterator[Simulator]:
    sim = Simulator(free_port(), "--latency-ms", "20")
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture
def daemon(tmp_path, simulator: Simulator) -> Iterator[Daemon]:
    d = Daemon(tmp_path, simulator.port)
    try:
        wait_for(lambda: d.scrape(), 10, message="endpoint answering")
        yield d
    finally:
        d.stop()


def expected_families() -> dict[str, list[catalog.Series]]:
    families: dict[str, list[catalog.Series]] = {}
    for series in catalog.enabled_series(SIM.inventory()):
        families.setdefault(series.metric, []).append(series)
    return families


def missing_series(samples: Samples) -> list[str]:
    """Return the enabled catalog series not on the endpoint (with their labels)."""
    present = {(name, labels) for name, labels in samples}
    missing = []
    for metric, series_list in expected_families().items():
        for series in series_list:
            if series.row.kind is catalog.Kind.INFO:
                labelled = [labels for name, labels in present if name == metric]
                ok = any(dict(labels).get(series.row.field) is not None and
                         all(dict(labels).get(k) == v for k, v in series.labels) for labels in labelled)
            else:  # a module's cells: a sample per cell
                ok = all((metric, tuple(sorted((("inverter", SIM.name),) + labels))) in present
                         for labels in series.sample_labels)
            if not ok:
                missing.append(f"{metric}{dict(series.labels)}")
    return missing


@pytest.mark.timeout(30)
def test_every_enabled_family_appears_within_10s_with_its_labels(daemon: Daemon) -> None:
    wait_for(lambda: not missing_series(daemon.scrape()), 10 - (time.monotonic() - daemon.started_at),
             message="every enabled catalog series")
    samples = daemon.scrape()
    modules = {dict(labels)["module"] for n, labels in samples if n == "rctmon_battery_module_cycles_total"}
    assert modules == {"0", "1", "2"}
    assert {dict(labels)["phase"] for n, labels in samples if n == "rctmon_grid_voltage_volts"} == {"1", "2", "3"}
    assert {dict(labels)["generator"] for n, labels in samples if n == "rctmon_generator_power_watts"} == {"a", "b"}
    soc = value(samples, "rctmon_battery_state_of_charge_ratio", inverter=SIM.name)
    assert soc is not None and 0 <= soc <= 1
    assert value(samples, "rctmon_device_up") == 1
    assert value(samples, "rctmon_inventory_complete") == 1


@pytest.mark.timeout(30)
def test_promtool_finds_nothing_on_the_daemon_output(daemon: Daemon) -> None:
    promtool = require_binary("promtool")
    wait_for(lambda: not missing_series(daemon.scrape()), 15, message="every enabled catalog series")
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.metrics_port}/metrics", timeout=5) as response:
        text = response.read()
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=20)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), result


@pytest.mark.timeout(30)
def test_each_process_names_its_role(daemon: Daemon) -> None:
    titles = wait_for(lambda: set(daemon.children()) == {"rctmon: collector", "rctmon: prometheus"} and
                      daemon.children(), 10, message="children titled")
    assert titles
    with open(f"/proc/{daemon.proc.pid}/cmdline", "rb") as f:
        assert f.read().split(b"\0")[0] == b"rctmon: supervisor"


@pytest.mark.timeout(40)
@pytest.mark.parametrize("role", ["collector", "prometheus"])
def test_killed_child_is_back_within_5s_and_counted(daemon: Daemon, role: str) -> None:
    wait_for(lambda: not missing_series(daemon.scrape()), 15, message="every enabled catalog series")
    old = daemon.children()[f"rctmon: {role}"]
    os.kill(old, signal.SIGKILL)
    killed = time.monotonic()

    def restarted() -> bool:
        samples = daemon.scrape()
        return (daemon.children().get(f"rctmon: {role}") not in (None, old) and
                value(samples, "rctmon_process_restarts_total", process=role) == 1 and
                value(samples, "rctmon_process_up", process=role) == 1)

    wait_for(restarted, 5, message=f"{role} restarted")
    assert time.monotonic() - killed < 5
    assert daemon.proc.poll() is None
    if role == "prometheus":  # the new child got the latest values at once, slow and static ones included
        assert not missing_series(daemon.scrape())


@pytest.mark.timeout(40)
def test_a_restarted_endpoint_never_shows_a_restart_count_of_zero(daemon: Daemon) -> None:
    """The shipped alert fires on restarts; a new incarnation that answered with 0 for a moment would reset it."""
    wait_for(lambda: value(daemon.scrape(), "rctmon_process_up", process="prometheus") == 1, 10, message="up")
    for kills in (1, 2):
        old = daemon.children()["rctmon: prometheus"]
        os.kill(old, signal.SIGKILL)
        seen: list[float | None] = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and seen[-3:] != [kills] * 3:
            try:
                samples = daemon.scrape()  # waits in the supervisor's listen backlog while no child serves
            except OSError:
                continue  # the connection the killed child had accepted
            seen.append(value(samples, "rctmon_process_restarts_total", process="prometheus"))
        assert seen and all(count == kills for count in seen), seen
        assert value(samples, "rctmon_decode_errors_total", kind="crc") is not None


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_inverter_gone_for_30s_shows_down_then_recovers(daemon: Daemon, simulator: Simulator) -> None:
    wait_for(lambda: value(daemon.scrape(), "rctmon_device_up") == 1, 10, message="device up")
    simulator.stop()
    gone_at = time.monotonic()
    wait_for(lambda: value(daemon.scrape(), "rctmon_device_up") == 0, 10, message="device down")
    while time.monotonic() - gone_at < 30:  # it must stay down (and the daemon up) for the whole outage
        samples = daemon.scrape()
        assert value(samples, "rctmon_device_up") == 0
        assert daemon.proc.poll() is None
        time.sleep(1)  # pacing the observation, not synchronising
    simulator.start()
    back_at = time.time()
    wait_for(lambda: value(daemon.scrape(), "rctmon_device_up") == 1, 20, message="device up again")
    wait_for(lambda: (value(daemon.scrape(), "rctmon_last_reading_timestamp_seconds") or 0) > back_at, 10,
             message="fresh readings")
    wait_for(lambda: value(daemon.scrape(), "rctmon_generator_power_watts", inverter=SIM.name,
                           generator="a") is not None, 10, message="values exposed again")


@pytest.mark.timeout(30)
def test_sigterm_exits_zero_within_10s_leaving_no_children(daemon: Daemon) -> None:
    children = list(wait_for(lambda: len(daemon.children()) == 2 and daemon.children(), 10,
                             message="children").values())
    start = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(10) == 0
    assert time.monotonic() - start < 10
    for pid in children:
        wait_for(lambda pid=pid: pid_gone(pid), 2, message=f"child {pid} gone")


def test_landing_page_links_to_metrics(daemon: Daemon) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.metrics_port}/", timeout=5) as response:
        assert b'href="/metrics"' in response.read()


@pytest.mark.timeout(30)
def test_ready_only_once_the_endpoint_answers(tmp_path, simulator: Simulator) -> None:
    sock_path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(sock_path)
        notify.settimeout(10)
        d = Daemon(tmp_path, simulator.port, env={"NOTIFY_SOCKET": sock_path})
        try:
            while True:
                message = notify.recv(4096).decode()
                if "READY=1" in message:
                    break
            assert d.scrape()  # answers at once, no retry
            assert "STATUS=inverter" in message
        finally:
            d.stop()


def test_port_in_use_is_a_clear_error(tmp_path, simulator: Simulator) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        config = tmp_path / "c.yml"
        config.write_text(f"device:\n  port: {simulator.port}\nprometheus:\n  bind_port: {port}\n")
        result = subprocess.run(rctmon_command("-c", str(config), "daemon"), capture_output=True, text=True,
                                timeout=20)
    assert result.returncode != 0
    assert str(port) in result.stdout + result.stderr
