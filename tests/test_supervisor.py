"""The supervisor with stand-in children: restarts, backlog replay, signals, systemd notify.

The children here are small functions forked by the real supervisor, so these tests exercise its loop, channels,
restart policy and signal handling without an inverter; tests/test_daemon.py runs the real children.
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import os
import signal
import socket
import time
from typing import Any
from collections.abc import Awaitable, Iterator, Sequence

import pytest

from support import child_pids, pid_gone, wait_for
from rctmon import supervisor as sv
from rctmon import systemd
from rctmon.child import ChildContext, Job
from rctmon.inventory import Inventory
from rctmon.messages import Ack, DeviceStatus, Health, ReadingBatch
from rctmon.registry import ChildSpec
from rctmon.systemd import Notifier

WORKDIR_ENV = "RCTMON_TEST_WORKDIR"


def _workdir() -> str:
    return os.environ[WORKDIR_ENV]


class FakeCollector(Job):
    """Send a batch of 5 numbered readings every 20 ms; record the last number sent."""

    async def start(self) -> Sequence[Awaitable[object]]:
        self.context.send(Inventory(name="fake", generators=("a",), complete=True))
        self.context.send(DeviceStatus(up=True))
        return (self._produce(),)

    async def _produce(self) -> None:
        counter_file = os.path.join(_workdir(), "collector-last")
        last = int(open(counter_file).read()) if os.path.exists(counter_file) else 0
        while True:
            await asyncio.sleep(0.02)
            readings = tuple((n, float(n), time.time_ns()) for n in range(last + 1, last + 6))
            if self.context.send(ReadingBatch(readings)):
                last += 5
                with open(counter_file + ".tmp", "w") as f:
                    f.write(str(last))
                os.replace(counter_file + ".tmp", counter_file)


class FakeSpoolingExporter(Job):
    """Record every reading number it receives (its 'spool'), then acknowledge the batch."""

    def __init__(self, context: ChildContext) -> None:
        super().__init__(context)
        self.spool = open(os.path.join(_workdir(), "spool"), "a")

    def receive(self, messages: Sequence[object]) -> None:
        for message in messages:
            if isinstance(message, ReadingBatch):
                self.spool.write("".join(f"{oid}\n" for oid, _, _ in message.readings))
                self.spool.flush()
                if not os.path.exists(os.path.join(_workdir(), "no-acks")):
                    self.context.send(Ack(message.seq))


class FakeHealthRecorder(Job):
    """Stand in for the prometheus child: write the latest Health to a file."""

    def receive(self, messages: Sequence[object]) -> None:
        path = os.path.join(_workdir(), "health.json")
        for message in messages:
            if isinstance(message, Health):
                own = message.stats["supervisor"]
                data = {"processes": {name: {"up": up, "restarts": own["restarts"][name]}  # type: ignore[index]
                                      for name, up in own["up"].items()},  # type: ignore[union-attr]
                        "dropped": [[process, reason, count]
                                    for (process, reason), count in own["readings_dropped"].items()],  # type: ignore
                        "device_up": own["device_up"]}
                with open(path + ".tmp", "w") as f:
                    json.dump(data, f)
                os.replace(path + ".tmp", path)


def _spec(name: str, job: str, **needs: Any) -> ChildSpec:
    return ChildSpec(name, f"test_supervisor:{job}", enabled=lambda c: True,
                     settings=lambda c: (c.device.port if name == "collector" else c.device.host), **needs)


SPECS = (
    _spec("collector", "FakeCollector", drops=("channel_full",)),
    _spec("prometheus", "FakeHealthRecorder", readings=True, replay_latest=True, health=True),
    _spec("influxdb", "FakeSpoolingExporter", readings=True, acknowledges=True),
)


def _supervise(workdir: str, config_path: str) -> None:
    os.environ[WORKDIR_ENV] = workdir
    from rctmon import config as config_module

    limit = os.path.join(workdir, "backlog-max")
    if os.path.exists(limit):  # small enough for the overflow test to fill it in a second
        sv.BACKLOG_MAX_READINGS = int(open(limit).read())
    handler = logging.FileHandler(os.path.join(workdir, "supervisor.log"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
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

    def log(self) -> str:
        with open(os.path.join(self.workdir, "supervisor.log")) as f:
            return f.read()

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


def _reload(daemon: Running, text: str) -> None:
    with open(daemon.config_path, "w") as f:
        f.write(text)
    os.kill(daemon.pid, signal.SIGHUP)


@pytest.mark.timeout(30)
def test_sighup_replaces_only_the_children_whose_settings_changed_without_counting(daemon: Running) -> None:
    wait_for(lambda: _all_up(daemon), 10, message="all children up")
    before = daemon.children()
    _reload(daemon, "prometheus:\n  enable: false\ndevice:\n  port: 8900\n")  # the collector's settings only
    wait_for(lambda: daemon.children().get("rctmon: collector") not in (None, before["rctmon: collector"]), 10,
             message="a new collector")
    wait_for(lambda: _all_up(daemon), 10, message="all children up again")
    after = daemon.children()
    assert {k: v for k, v in after.items() if k != "rctmon: collector"} == \
        {k: v for k, v in before.items() if k != "rctmon: collector"}, "the exporters were left alone"
    _reload(daemon, "prometheus:\n  enable: false\ndevice:\n  port: 8900\n  host: 127.0.0.2\n")  # the others'
    wait_for(lambda: not set(daemon.children().values()) & {after["rctmon: prometheus"], after["rctmon: influxdb"]}
             and len(daemon.children()) == 3, 10, message="new exporters")
    assert daemon.children()["rctmon: collector"] == after["rctmon: collector"]
    wait_for(lambda: _all_up(daemon), 10, message="all children up again")
    assert all(p["restarts"] == 0 for p in daemon.health()["processes"].values())


@pytest.mark.timeout(30)
@pytest.mark.parametrize("content", [
    "", "  \n# only a comment\n", "prometheus:\n  enable: [\n",
    # valid, but this machine cannot run it (rctmon.preflight): the spool directory cannot be written
    "prometheus:\n  enable: false\ninfluxdb:\n  enable: true\n  spool_path: /proc/rctmon-nowhere/spool.sqlite\n",
])
def test_sighup_with_an_empty_or_broken_file_keeps_the_running_configuration(daemon: Running, content: str) -> None:
    wait_for(lambda: _all_up(daemon), 10, message="all children up")
    before = daemon.children()
    _reload(daemon, content)
    wait_for(lambda: "SIGHUP: keeping the running configuration" in daemon.log(), 10, message="the reload refused")
    mark = daemon.collector_last()
    wait_for(lambda: daemon.collector_last() > mark + 50, 10, message="readings still flowing")
    assert daemon.children() == before


@pytest.mark.timeout(30)
def test_a_full_backlog_drops_the_oldest_readings_and_counts_them(tmp_path) -> None:
    (tmp_path / "backlog-max").write_text("500")
    daemon = Running(tmp_path, {})
    try:
        wait_for(lambda: _all_up(daemon), 10, message="all children up")
        open(os.path.join(daemon.workdir, "no-acks"), "w").close()  # the spooling exporter stops acknowledging
        _wait_dropped(daemon)
    finally:
        daemon.stop()


def _wait_dropped(daemon: Running) -> None:

    def dropped() -> int:
        return sum(count for process, reason, count in daemon.health()["dropped"]
                   if (process, reason) == ("influxdb", "backlog_full"))

    wait_for(lambda: dropped() > 500, 10, message="readings dropped from the full backlog")
    reasons = {(process, reason) for process, reason, _ in daemon.health()["dropped"]}
    assert reasons == {("collector", "channel_full"), ("prometheus", "send_failed"), ("influxdb", "backlog_full")}


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


def test_notifier_without_socket_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    notifier = Notifier()
    assert notifier.watchdog_interval is None
    assert notifier.notify("READY=1") is False


def test_notifier_plain_socket_backend(tmp_path, notify_socket: socket.socket,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(systemd, "_systemd_python_sender", lambda: None)  # as where systemd-python is not installed
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    notifier = Notifier()
    assert notifier.backend == "socket" and notifier.watchdog_interval == 1.0
    notifier.ready("all good")
    assert notify_socket.recv(4096).decode() == "READY=1\nSTATUS=all good"


def test_notifier_uses_systemd_python_when_installed(tmp_path, notify_socket: socket.socket,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("systemd.daemon") if not os.environ.get("CI") else None
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))  # systemd-python reads it there too
    notifier = Notifier()
    assert notifier.backend == "systemd-python"
    notifier.status("via library")
    assert notify_socket.recv(4096).decode() == "STATUS=via library"
