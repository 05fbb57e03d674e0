"""The whole daemon with MQTT on: `rctmon daemon` against `rctmon simulator` and mosquitto, all on loopback.

The child-level tests (test_mqtt_exporter.py) cover the exporter's behaviour in detail; these show the issue's
promises end to end: Home Assistant sees the simulated inverter, a killed daemon leaves `offline` behind, and a
broker gone for 30 s neither slows the collector nor stops values flowing once it is back.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from collections.abc import Iterator

import pytest

from mosquitto import Mosquitto, Recorder, broker
from support import free_port, rctmon_command, stop_process, wait_for

from rctmon.exporters.mqtt import topic_level

__all__ = ["broker"]  # fixtures, imported so that pytest finds them here

NAME = "Garage PS 6.0"
PREFIX = f"rctmon/{topic_level(NAME)}"
MODULES = 2
#: How long the broker stays down in the outage test (the issue asks for 30 s); shorter while iterating locally.
OUTAGE_SECONDS = float(os.environ.get("RCTMON_TEST_MQTT_OUTAGE", "30"))
_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")


class Daemon:
    """A simulator, and rctmon's daemon reading it with prometheus and mqtt enabled."""

    def __init__(self, tmp_path: str, broker_port: int) -> None:
        self.sim_port, self.metrics_port = free_port(), free_port()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[str] = []
        self.config_path = os.path.join(tmp_path, "rctmon.yml")
        with open(self.config_path, "w", encoding="utf-8") as cfg:
            cfg.write(f"""\
device:
  host: 127.0.0.1
  port: {self.sim_port}
  intervals: {{fast: 1, medium: 2, slow: 3, static: 60}}
prometheus:
  bind_address: 127.0.0.1
  bind_port: {self.metrics_port}
mqtt:
  enable: true
  host: 127.0.0.1
  port: {broker_port}
  client_id: rctmon-daemon-test-{os.getpid()}
""")
        self.tmp_path = tmp_path
        self.simulator = self._start("simulator", "simulator", "--port", str(self.sim_port), "--name", NAME,
                                     "--battery-modules", str(MODULES))
        wait_for(lambda: _accepts(self.sim_port), 15, message="the simulator")
        self.daemon = self._start("daemon", "-c", self.config_path, "daemon")

    def _start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        path = os.path.join(self.tmp_path, f"{name}.log")
        self.logs.append(path)
        with open(path, "ab") as log:
            proc = subprocess.Popen(rctmon_command(*args), stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def metrics(self) -> dict[str, float]:
        """Return the daemon's samples as {'name{labels}': value}."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        samples: dict[str, float] = {}
        for line in text.splitlines():
            match = _SAMPLE.match(line)
            if match:
                key = match["name"] + (f"{{{match['labels']}}}" if match["labels"] else "")
                samples[key] = float(match["value"])
        return samples

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop_process(proc)

    def log_tail(self) -> str:
        out = []
        for path in self.logs:
            with open(path, encoding="utf-8", errors="replace") as f:
                out.append(f"--- {path}\n" + f.read()[-3000:])
        return "\n".join(out)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def daemon(tmp_path: Path, broker: Mosquitto) -> Iterator[Daemon]:
    running = Daemon(str(tmp_path), broker.port)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def recorders() -> Iterator[list[Recorder]]:
    opened: list[Recorder] = []
    try:
        yield opened
    finally:
        for recorder in opened:
            recorder.close()


def _subscribe(port: int, opened: list[Recorder]) -> Recorder:
    recorder = Recorder(port, ["#"])
    opened.append(recorder)
    return recorder


@pytest.mark.timeout(60)
def test_home_assistant_sees_the_simulated_inverter_and_a_killed_daemon_goes_offline(broker, daemon, recorders):
    recorder = _subscribe(broker.port, recorders)
    recorder.wait_last(f"{PREFIX}/availability", "online", timeout=30)
    recorder.wait_last(f"{PREFIX}/inverter/name", NAME)
    serial = wait_for(lambda: recorder.last(f"{PREFIX}/inverter/serial"), 10, message="the serial number")
    assert serial.startswith("SIM")
    recorder.wait_last(f"{PREFIX}/inverter/feed_in_limit", "4950")  # the simulator's constant, in W
    wait_for(lambda: recorder.last(f"{PREFIX}/battery_module/{MODULES - 1}/serial"), 10, message="module serials")
    float(wait_for(lambda: recorder.last(f"{PREFIX}/generator/a/power"), 10, message="generator power"))

    node = f"rctmon_{serial}"
    power = json.loads(wait_for(lambda: recorder.last(f"homeassistant/sensor/{node}/generator_a_power/config"), 10,
                                message="discovery"))
    assert power["state_topic"] == f"{PREFIX}/generator/a/power"
    assert power["device"]["serial_number"] == serial and power["device"]["name"] == NAME
    total = json.loads(recorder.last(f"homeassistant/sensor/{node}/grid_draw_energy_total/config") or "")
    assert (total["device_class"], total["state_class"], total["unit_of_measurement"]) == \
        ("energy", "total_increasing", "kWh")
    modules = {json.loads(recorder.last(t) or "")["device"]["name"]
               for t in recorder.topics(lambda t: f"/{node}/battery_module_" in t)}
    assert modules == {f"{NAME} battery module {i}" for i in range(MODULES)}

    daemon.daemon.kill()  # SIGKILL: the children die with it and the broker publishes the last will
    daemon.daemon.wait(10)
    recorder.wait_last(f"{PREFIX}/availability", "offline", timeout=10)


@pytest.mark.slow
@pytest.mark.timeout(OUTAGE_SECONDS + 90)
def test_broker_outage_neither_slows_the_collector_nor_stops_values_for_good(broker, daemon, recorders):
    recorder = _subscribe(broker.port, recorders)
    recorder.wait_last(f"{PREFIX}/availability", "online", timeout=30)
    wait_for(lambda: daemon.metrics().get("rctmon_mqtt_connected") == 1.0, 10, message="mqtt connected")

    def readings() -> float:
        return daemon.metrics()["rctmon_readings_total"]

    # Collector throughput while the broker is up, over a window as long as the heartbeats' granularity allows.
    start_t, start_r = time.monotonic(), readings()
    wait_for(lambda: time.monotonic() - start_t >= 8, 10, interval=0.5, message="a baseline window")
    rate_before = (readings() - start_r) / (time.monotonic() - start_t)
    assert rate_before > 0

    broker.stop()
    down_t, down_r = time.monotonic(), readings()
    wait_for(lambda: daemon.metrics().get("rctmon_mqtt_connected") == 0.0, 10, message="mqtt disconnected")
    stale, scrape_at = 0.0, time.monotonic()
    while time.monotonic() - down_t < OUTAGE_SECONDS:  # a scrape a second is enough to see the collector stall
        wait_for(lambda scrape_at=scrape_at: time.monotonic() >= scrape_at, 2, interval=0.1, message="the next scrape")
        scrape_at += 1.0
        stale = max(stale, time.time() - daemon.metrics()["rctmon_last_reading_timestamp_seconds"])
    rate_during = (readings() - down_r) / (time.monotonic() - down_t)
    m = daemon.metrics()
    assert m['rctmon_readings_dropped_total{process="mqtt",reason="backlog_full"}'] == 0.0
    assert m['rctmon_readings_dropped_total{process="mqtt",reason="send_failed"}'] == 0.0
    assert m['rctmon_process_restarts_total{process="mqtt"}'] == 0.0
    restarts = {k: v for k, v in m.items() if k.startswith("rctmon_process_restarts_total")}
    assert stale < 6.0, f"no reading for {stale:.1f}s while the broker was down; {restarts}\n{daemon.log_tail()}"
    assert rate_during >= 0.7 * rate_before, (rate_before, rate_during)

    broker.start()  # without persistence: rctmon must publish everything again
    after = _subscribe(broker.port, recorders)
    after.wait_last(f"{PREFIX}/availability", "online", timeout=20)
    first = wait_for(lambda: after.last(f"{PREFIX}/generator/a/power"), 10, message="values after the outage")
    wait_for(lambda: after.count(f"{PREFIX}/grid/frequency") >= 3, 15, message="values flowing again")
    assert first is not None
    wait_for(lambda: after.topics(lambda t: t.startswith("homeassistant/sensor/rctmon_")), 10,
             message="discovery published again")
    wait_for(lambda: daemon.metrics().get("rctmon_mqtt_connected") == 1.0, 10, message="mqtt connected again")
