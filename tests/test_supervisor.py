"""The supervisor with stand-in children: restarts, backlog replay, signals, systemd notify.

The children here are small functions forked by the real supervisor, so these tests exercise its loop, channels,
restart policy and signal handling without an inverter; tests/test_daemon.py runs the real children.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import time
from typing import Callable
from collections.abc import Iterator

import pytest

from support import child_pids, pid_gone, wait_for
from rctmon import supervisor as sv
from rctmon.channel import Channel, ChannelClosed
from rctmon.config import Config
from rctmon.inventory import Inventory
from rctmon.messages import Ack, DeviceStatus, Health, Heartbeat, ReadingBatch, Started, Stop
from rctmon.systemd import Notifier

WORKDIR_ENV = "RCTMON_TEST_WORKDIR"


def _workdir() -> str:
    return os.environ[WORKDIR_ENV]


def fake_collector(config: Config, channel: Channel, extra: object) -> None:
    """Send a batch of 5 numbered readings every 20 ms; record the last number sent."""
    channel.send(Started("collector"))
    channel.send(Inventory(name="fake", generators=("a",), complete=True))
    channel.send(DeviceStatus(up=True))
    counter_file = os.path.join(_workdir(), "collector-last")
    last = int(open(counter_file).read()) if os.path.exists(counter_file) else 0
    beat = 0.0
    while True:
        try:
            for message in channel.wait(0.02):
                if isinstance(message, Stop):
                    return
        except ChannelClosed:
            return
        readings = tuple((n, float(n), time.time_ns()) for n in range(last + 1, last + 6))
        if channel.send(ReadingBatch(readings)):
            last += 5
            with open(counter_file + ".tmp", "w") as f:
                f.write(str(last))
            os.replace(counter_file + ".tmp", counter_file)
        if time.monotonic() - beat > 0.5:
            beat = time.monotonic()
            channel.send(Heartbeat("collector", os.getpid(), 1, 0.0))


def _serve(role: str, channel: Channel, handle: Callable[[object], None]) -> None:
    """Be a stand-in exporter: report Started, hand every message to `handle`, heartbeat, stop when told."""
    channel.send(Started(role))
    while True:
        try:
            messages = channel.wait(0.5)
        except ChannelClosed:
            return
        for message in messages:
            if isinstance(message, Stop):
                return
            handle(message)
        channel.send(Heartbeat(role, os.getpid(), 1, 0.0))


def fake_spooling_exporter(config: Config, channel: Channel, extra: object) -> None:
    """Record every reading number it receives (its 'spool'), then acknowledge the batch."""
    spool = open(os.path.join(_workdir(), "spool"), "a")

    def handle(message: object) -> None:
        if isinstance(message, ReadingBatch):
            spool.write("".join(f"{oid}\n" for oid, _, _ in message.readings))
            spool.flush()
            channel.send(Ack(message.seq))

    _serve("influxdb", channel, handle)


def fake_health_recorder(config: Config, channel: Channel, extra: object) -> None:
    """Stand in for the prometheus child: write the latest Health to a file."""
    path = os.path.join(_workdir(), "health.json")

    def handle(message: object) -> None:
        if isinstance(message, Health):
            data = {name: {"up": p.up, "restarts": p.restarts} for name, p in message.processes.items()}
            with open(path + ".tmp", "w") as f:
                json.dump({"processes": data, "device_up": message.device_up}, f)
            os.replace(path + ".tmp", path)

    _serve("prometheus", channel, handle)


SPECS = (
    sv.ChildSpec("collector", fake_collector, False, False, lambda c: True),
    sv.ChildSpec("prometheus", fake_health_recorder, True, False, lambda c: True),
    sv.ChildSpec("influxdb", fake_spooling_exporter, True, True, lambda c: True),
)


def _supervise(workdir: str, config_path: str) -> None:
    os.environ[WORKDIR_ENV] = workdir
    from rctmon import config as config_module

    config = config_module.load(config_path)
    code = sv.Supervisor(config, config_path, notifier=Notifier(), specs=SPECS).run()
    os._exit(code)


class Running:
    def __init__(self, tmp_path, notify_env: dict[str, str]) -> None:
        self.workdir = str(tmp_path)
        self.config_path = os.path.join(self.workdir, "config.yml")
        with open(self.config_path, "w") as f:
            f.write("prometheus:\n  enable: false\n")
        old = {k: os.environ.get(k) for k in notify_env}
        os.environ.update(notify_env)
        try:
            self.process = multiprocessing.get_context("fork").Process(
                target=_supervise, args=(self.workdir, self.config_path))
            self.process.start()
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    def children(self) -> dict[str, int]:
        return child_pids(self.pid)

    def health(self) -> dict:
        with open(os.path.join(self.workdir, "health.json")) as f:
            return json.load(f)

    def collector_last(self) -> int:
        with open(os.path.join(self.workdir, "collector-last")) as f:
            return int(f.read())

    def spooled(self) -> list[int]:
        with open(os.path.join(self.workdir, "spool")) as f:
            return [int(line) for line in f]

    def stop(self) -> None:
        if self.process.is_alive():
            os.kill(self.pid, signal.SIGCONT)
            os.kill(self.pid, signal.SIGTERM)
            self.process.join(10)
        if self.process.is_alive():
            for pid in self.children().values():
                os.kill(pid, signal.SIGKILL)
            self.process.kill()
            self.process.join(5)


@pytest.fixture
def notify_socket(tmp_path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(0.2)
    yield sock
    sock.close()


@pytest.fixture
def daemon(tmp_path) -> Iterator[Running]:
    running = Running(tmp_path, {})
    try:
        wait_for(lambda: len(running.children()) == 3, 10, message="three children")
        yield running
    finally:
        running.stop()


def _all_up(running: Running) -> bool:
    health = running.health()
    return all(p["up"] for p in health["processes"].values())


@pytest.mark.timeout(30)
def test_killed_collector_is_back_within_5s_and_counted(daemon: Running) -> None:
    wait_for(lambda: _all_up(daemon), 10, message="all children up")
    old = daemon.children()["rctmon: collector"]
    os.kill(old, signal.SIGKILL)
    killed_at = time.monotonic()
    new = wait_for(lambda: daemon.children().get("rctmon: collector") not in (None, old) and
                   daemon.children()["rctmon: collector"], 5, message="a new collector")
    assert new != old and time.monotonic() - killed_at < 5
    wait_for(lambda: daemon.health()["processes"]["collector"]["restarts"] == 1, 5, message="restart counted")
    assert daemon.process.is_alive()
    assert daemon.health()["processes"]["influxdb"]["restarts"] == 0


@pytest.mark.timeout(40)
def test_acknowledging_exporter_killed_loses_no_reading(daemon: Running) -> None:
    wait_for(lambda: daemon.collector_last() > 200, 10, message="readings flowing")
    for _ in range(2):
        victim = daemon.children()["rctmon: influxdb"]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda victim=victim: daemon.children().get("rctmon: influxdb") not in (None, victim), 5,
                 message="a new exporter")
        mark = daemon.collector_last()
        wait_for(lambda mark=mark: daemon.collector_last() > mark + 100, 10, message="more readings")
    os.kill(daemon.pid, signal.SIGTERM)
    daemon.process.join(10)
    assert daemon.process.exitcode == 0
    sent = daemon.collector_last()
    spooled = set(daemon.spooled())
    missing = set(range(1, sent + 1)) - spooled
    assert not missing, f"{len(missing)} of {sent} readings never reached the exporter"


@pytest.mark.timeout(30)
def test_sigterm_exits_zero_within_10s_without_orphans(daemon: Running) -> None:
    children = list(daemon.children().values())
    assert len(children) == 3
    start = time.monotonic()
    os.kill(daemon.pid, signal.SIGTERM)
    daemon.process.join(10)
    assert daemon.process.exitcode == 0
    assert time.monotonic() - start < 10
    for pid in children:
        wait_for(lambda pid=pid: pid_gone(pid), 2, message=f"child {pid} gone")


@pytest.mark.timeout(30)
def test_children_die_with_a_killed_supervisor(daemon: Running) -> None:
    children = list(daemon.children().values())
    os.kill(daemon.pid, signal.SIGKILL)
    daemon.process.join(5)
    for pid in children:
        wait_for(lambda pid=pid: pid_gone(pid), 5, message=f"child {pid} gone after the supervisor was killed")


@pytest.mark.timeout(30)
def test_sighup_with_invalid_config_keeps_running(daemon: Running) -> None:
    wait_for(lambda: _all_up(daemon), 10, message="all children up")
    before = daemon.children()
    with open(daemon.config_path, "w") as f:
        f.write("prometheus:\n  enable: false\ndevice:\n  hots: typo\n")
    os.kill(daemon.pid, signal.SIGHUP)
    mark = daemon.collector_last()
    wait_for(lambda: daemon.collector_last() > mark + 50, 10, message="readings still flowing")
    assert daemon.children() == before


@pytest.mark.timeout(30)
def test_sighup_with_valid_config_restarts_children_without_counting(daemon: Running) -> None:
    wait_for(lambda: _all_up(daemon), 10, message="all children up")
    before = daemon.children()
    with open(daemon.config_path, "w") as f:
        f.write("prometheus:\n  enable: false\ndevice:\n  port: 8900\n")
    os.kill(daemon.pid, signal.SIGHUP)
    wait_for(lambda: len(daemon.children()) == 3 and
             not set(daemon.children().values()) & set(before.values()), 10, message="new children")
    wait_for(lambda: _all_up(daemon), 10, message="all children up again")
    assert all(p["restarts"] == 0 for p in daemon.health()["processes"].values())


def _receive_until(sock: socket.socket, want: str, timeout: float) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = sock.recv(4096).decode()
        except socket.timeout:
            continue
        got.append(data)
        if want in data:
            return got
    raise AssertionError(f"no {want!r} within {timeout}s; got {got}")


@pytest.mark.timeout(40)
def test_systemd_notify_ready_status_watchdog_stopping(tmp_path, notify_socket: socket.socket) -> None:
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "400000"}
    running = Running(tmp_path, env)
    try:
        got = _receive_until(notify_socket, "READY=1", 10)
        assert any("STATUS=inverter" in g for g in got) or "STATUS=" in got[-1]
        # WATCHDOG=1 at half of WATCHDOG_USEC: about 5 per second; count over a 2 s window
        start, pings = time.monotonic(), 0
        while time.monotonic() - start < 2.0:
            try:
                pings += notify_socket.recv(4096).decode().count("WATCHDOG=1")
            except socket.timeout:
                pass
        assert 6 <= pings <= 14, pings
        # A wedged supervisor loop stops the pings (systemd would then restart the service).
        os.kill(running.pid, signal.SIGSTOP)
        while True:  # drain what was sent before the stop
            try:
                notify_socket.recv(4096)
            except socket.timeout:
                break
        start, wedged_pings = time.monotonic(), 0
        while time.monotonic() - start < 1.0:
            try:
                wedged_pings += notify_socket.recv(4096).decode().count("WATCHDOG=1")
            except socket.timeout:
                pass
        assert wedged_pings == 0
        os.kill(running.pid, signal.SIGCONT)
        _receive_until(notify_socket, "WATCHDOG=1", 2)
        os.kill(running.pid, signal.SIGTERM)
        _receive_until(notify_socket, "STOPPING=1", 5)
        running.process.join(10)
        assert running.process.exitcode == 0
    finally:
        running.stop()


def test_notifier_without_socket_does_nothing() -> None:
    notifier = Notifier(environ={})
    assert not notifier.enabled and notifier.watchdog_interval is None
    assert notifier.notify("READY=1") is False


def test_notifier_plain_socket_backend(tmp_path, notify_socket: socket.socket) -> None:
    notifier = Notifier(environ={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "2000000"},
                        use_library=False)
    assert notifier.backend == "socket" and notifier.watchdog_interval == 1.0
    notifier.ready("all good")
    assert notify_socket.recv(4096).decode() == "READY=1\nSTATUS=all good"


def test_notifier_uses_systemd_python_when_installed(tmp_path, notify_socket: socket.socket) -> None:
    pytest.importorskip("systemd.daemon") if not os.environ.get("CI") else None
    notifier = Notifier(environ={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
    assert notifier.backend == "systemd-python"
    # systemd-python reads NOTIFY_SOCKET from the real environment
    os.environ["NOTIFY_SOCKET"] = str(tmp_path / "notify.sock")
    try:
        notifier.status("via library")
        assert notify_socket.recv(4096).decode() == "STATUS=via library"
    finally:
        del os.environ["NOTIFY_SOCKET"]
