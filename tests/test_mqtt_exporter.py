"""The mqtt child against a real broker (mosquitto on loopback), plus its pure parts: payloads, topics, discovery.

The child runs its job (`rctmon.exporters.mqtt.MqttExporter`) in the shared child loop in a forked process, talking
to the test over a `Channel` pair exactly as it would to the supervisor; a paho subscriber in the test sees what the
broker sees.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import signal
import subprocess
import time
from typing import Callable
from collections.abc import Iterator

import pytest

from support import wait_messages
from mosquitto import Mosquitto, Recorder, broker
from support import require_binary, wait_for

from rctmon import catalog, proc
from rctmon.channel import Channel
from rctmon.config import Config
from rctmon.exporters import homeassistant as ha
from rctmon.exporters import mqtt
from rctmon.inventory import Inventory
from rctmon.child import run_child
from rctmon.messages import Ack, DeviceStatus, Heartbeat, Reading, ReadingBatch, Started, Stop, Value
from rctmon.registry import CHILD_BY_NAME

__all__ = ["broker"]  # fixtures, imported so that pytest finds them here

INVENTORY = Inventory(name="PS 6.0 BA3L", serial="SN123", software_version="6390", parameter_file="VDE",
                      generators=("a", "b"), battery_modules=2, power_switch=True, complete=True)
PREFIX = "rctmon/PS_6.0_BA3L"
NODE = "rctmon_SN123"
INTERVALS = {tier: float(getattr(Config().device.intervals, tier.value)) for tier in catalog.Tier}

#: (object name, raw value as the inverter sends it, topic below the prefix, expected payload)
SAMPLES: tuple[tuple[str, Value, str, str], ...] = (
    ("dc_conv.dc_conv_struct[0].p_dc_lp", 1234.5, "generator/a/power", "1234.5"),
    ("g_sync.u_l_rms[1]", 231.60000610351562, "grid_phase/2/voltage", "231.6"),  # a float32 as decoded
    ("energy.e_grid_feed_total", -2769942.25, "grid/feed_energy_total", "2769.942"),  # Wh, negative: kWh, positive
    ("battery.soc", 0.54, "battery/state_of_charge", "54"),
    ("battery.cycles", 321, "battery/cycles", "321"),
    ("db.temp1", 41.25, "inverter/heatsink_temperature", "41.25"),
    ("android_description", "PS 6.0 BA3L\x00\x00", "inverter/name", "PS 6.0 BA3L"),
    ("battery.module_sn[1]", "MOD-1", "battery_module/1/serial", "MOD-1"),
    ("rb485.version_main", 4711, "power_switch/software_version", "4711"),
)


def reading(name: str, raw: Value, taken_ns: int | None = None) -> Reading:
    return (catalog.SERIES_BY_NAME[name].object_id, raw, taken_ns or time.time_ns())


def make_config(port: int, **mqtt: object) -> Config:
    config = Config()
    config.mqtt.enable = True
    config.mqtt.host = "127.0.0.1"
    config.mqtt.port = port
    config.mqtt.client_id = f"rctmon-test-{os.getpid()}-{time.monotonic_ns()}"
    for key, value in mqtt.items():
        setattr(config.mqtt, key, value)
    return config


def _child_main(config: Config, channel: Channel) -> None:
    proc.become_child("mqtt")
    run_child(CHILD_BY_NAME["mqtt"], config, channel)


class Child:
    """The mqtt child in a forked process, and the supervisor's end of its channel."""

    def __init__(self, config: Config) -> None:
        self.channel, child_end = Channel.pair()
        self.process = multiprocessing.get_context("fork").Process(
            target=_child_main, args=(config, child_end), name="mqtt-child", daemon=True)
        self.process.start()
        child_end.close()
        self.received: list[object] = []

    def send(self, message: object) -> None:
        assert self.channel.send(message)

    def wait_message(self, predicate: Callable[[object], bool], timeout: float = 10.0, since: int = 0,
                     what: str = "a message") -> object:
        def poll() -> object | None:
            self.received.extend(wait_messages(self.channel, 0.05))
            return next((m for m in self.received[since:] if predicate(m)), None)
        return wait_for(poll, timeout, interval=0.0, message=what)

    def wait_ack(self, seq: int, timeout: float = 5.0) -> None:
        self.wait_message(lambda m: isinstance(m, Ack) and m.seq >= seq, timeout, what=f"Ack({seq})")

    def wait_heartbeat(self, connected: bool, since: int, timeout: float = 10.0) -> Heartbeat:
        hb = self.wait_message(lambda m: isinstance(m, Heartbeat) and bool(m.stats["connected"]) is connected,  # type: ignore
                               timeout, since, what=f"a heartbeat with connected={connected}")
        assert isinstance(hb, Heartbeat)
        return hb

    def stop(self, timeout: float = 2.0) -> float:
        """Send Stop; return how long the child took to exit."""
        start = time.monotonic()
        self.send(Stop())
        self.process.join(timeout + 1.0)
        return time.monotonic() - start

    def kill(self) -> None:
        if self.process.is_alive() and self.process.pid is not None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.join(5)
        self.channel.close()


@pytest.fixture
def children() -> Iterator[Callable[[Config], Child]]:
    started: list[Child] = []

    def start(config: Config) -> Child:
        child = Child(config)
        started.append(child)
        return child
    try:
        yield start
    finally:
        for child in started:
            child.kill()


@pytest.fixture
def recorders() -> Iterator[Callable[[int], Recorder]]:
    opened: list[Recorder] = []

    def open_recorder(port: int) -> Recorder:
        recorder = Recorder(port, ["#"])
        opened.append(recorder)
        return recorder
    try:
        yield open_recorder
    finally:
        for recorder in opened:
            recorder.close()


def send_samples(child: Child, seq: int) -> None:
    child.send(ReadingBatch(tuple(reading(name, raw) for name, raw, _, _ in SAMPLES), seq=seq))


# --- against the broker ----------------------------------------------------------------------------------------

@pytest.mark.timeout(30)
def test_discovery_availability_values_and_clean_stop(broker, children, recorders):
    recorder = recorders(broker.port)
    child = children(make_config(broker.port))
    child.wait_message(lambda m: m == Started("mqtt"), what="Started")
    child.send(INVENTORY)
    send_samples(child, seq=1)
    child.wait_ack(1)

    recorder.wait_last(f"{PREFIX}/availability", "online")
    for _, _, path, expected in SAMPLES:
        recorder.wait_last(f"{PREFIX}/{path}", expected)
    late = recorders(broker.port)  # a broker flags a message retained only to subscribers that come later
    late.wait_last(f"{PREFIX}/generator/a/power", "1234.5")
    assert late.retained[f"{PREFIX}/generator/a/power"] and late.retained[f"{PREFIX}/availability"]

    enabled = sum(len(s.sample_labels) for s in catalog.enabled_series(INVENTORY))  # a module's cells: one each
    wait_for(lambda: len(recorder.topics(lambda t: t.startswith("homeassistant/sensor/"))) == enabled, 10,
             message="one discovery config per value of every enabled series")
    configs = {t: json.loads(recorder.last(t) or "") for t in recorder.topics(lambda t: t.startswith("homeassistant/"))}
    # besides the sensors: the event entity and the fault sensor (tests/test_events_faults_mqtt.py looks at them)
    extra = {f"homeassistant/event/{NODE}/inverter_event/config",
             f"homeassistant/binary_sensor/{NODE}/inverter_faults/config"}
    assert extra <= set(configs)
    for topic, config in configs.items():
        assert topic.startswith(f"homeassistant/sensor/{NODE}/") or topic in extra, topic
        assert topic.endswith("/config"), topic
        assert config["state_topic"].startswith(PREFIX + "/")
        assert config["unique_id"].startswith(NODE + "_")
        assert config["device"]["identifiers"] and config["device"]["manufacturer"] == "RCT Power"
        assert config["availability_topic"] == f"{PREFIX}/availability"
        assert (config["payload_available"], config["payload_not_available"]) == ("online", "offline")
    by_state = {c["state_topic"]: c for c in configs.values()}
    feed = by_state[f"{PREFIX}/grid/feed_energy_total"]
    assert (feed["device_class"], feed["state_class"], feed["unit_of_measurement"]) == \
        ("energy", "total_increasing", "kWh")
    power = by_state[f"{PREFIX}/generator/a/power"]
    assert (power["device_class"], power["state_class"], power["unit_of_measurement"]) == ("power", "measurement", "W")
    assert power["device"] == {"identifiers": [NODE], "name": "PS 6.0 BA3L", "manufacturer": "RCT Power",
                               "model": "Inverter", "serial_number": "SN123", "sw_version": "6390"}
    name = by_state[f"{PREFIX}/inverter/name"]
    assert "device_class" not in name and "state_class" not in name and "unit_of_measurement" not in name
    module = by_state[f"{PREFIX}/battery_module/1/serial"]["device"]
    assert module["via_device"] == NODE and module["serial_number"] == "MOD-1"  # from the reading, not inventory
    switch = by_state[f"{PREFIX}/power_switch_phase/1/grid_voltage"]["device"]
    assert switch["via_device"] == NODE and switch["sw_version"] == "4711"

    since = len(child.received)
    hb = child.wait_heartbeat(True, since)
    assert hb.process == "mqtt" and hb.pid == child.process.pid and hb.rss_bytes > 0
    assert hb.stats["messages_published"] >= len(SAMPLES) + enabled  # type: ignore[operator]
    assert hb.stats["publish_errors"] == 0

    assert child.stop() < 2.0
    assert child.process.exitcode == 0
    recorder.wait_last(f"{PREFIX}/availability", "offline")


@pytest.mark.timeout(30)
def test_sigkill_makes_the_broker_publish_the_last_will(broker, children, recorders):
    recorder = recorders(broker.port)
    child = children(make_config(broker.port))
    child.send(INVENTORY)
    recorder.wait_last(f"{PREFIX}/availability", "online")
    os.kill(child.process.pid, signal.SIGKILL)
    recorder.wait_last(f"{PREFIX}/availability", "offline")
    late = recorders(broker.port)  # the will is retained: Home Assistant starting later sees it too
    late.wait_last(f"{PREFIX}/availability", "offline")


@pytest.mark.timeout(30)
def test_unreachable_inverter_makes_availability_offline(broker, children, recorders):
    recorder = recorders(broker.port)
    child = children(make_config(broker.port))
    child.send(INVENTORY)
    recorder.wait_last(f"{PREFIX}/availability", "online")
    child.send(DeviceStatus(up=False, reason="connection refused"))
    recorder.wait_last(f"{PREFIX}/availability", "offline")
    child.send(DeviceStatus(up=True))
    recorder.wait_last(f"{PREFIX}/availability", "online")


@pytest.mark.timeout(40)
def test_broker_down_at_start_and_restarted_acks_never_stop(tmp_path, children, recorders):
    broker = Mosquitto(str(tmp_path))  # not running yet: the child must start anyway
    child = children(make_config(broker.port))
    try:
        child.wait_message(lambda m: m == Started("mqtt"), what="Started without a broker")
        child.send(INVENTORY)
        send_samples(child, seq=1)
        child.wait_ack(1, timeout=1.0)
        child.wait_heartbeat(False, since=0)

        broker.start()
        recorder = recorders(broker.port)
        recorder.wait_last(f"{PREFIX}/availability", "online")
        recorder.wait_last(f"{PREFIX}/generator/a/power", "1234.5")

        broker.stop()
        since = len(child.received)
        seq, slowest = 1, 0.0
        power = "dc_conv.dc_conv_struct[0].p_dc_lp"
        while not any(isinstance(m, Heartbeat) and not m.stats["connected"]
                      for m in child.received[since:]) or seq < 5:
            seq += 1
            start = time.monotonic()
            child.send(ReadingBatch((reading(power, 1000.0 + seq),), seq=seq))
            child.wait_ack(seq, timeout=1.0)
            slowest = max(slowest, time.monotonic() - start)
            child.received.extend(wait_messages(child.channel, 0.2))
        assert slowest < 0.5, f"an ack took {slowest:.3f}s while the broker was down"

        broker.start()  # without persistence: every retained message is gone and must be published again
        recorder = recorders(broker.port)
        recorder.wait_last(f"{PREFIX}/availability", "online", timeout=15)
        recorder.wait_last(f"{PREFIX}/generator/a/power", f"{1000.0 + seq:g}")  # the value sent during the outage
        recorder.wait_last(f"{PREFIX}/inverter/name", "PS 6.0 BA3L")
        wait_for(lambda: recorder.last(f"homeassistant/sensor/{NODE}/generator_a_power/config"), 5,
                 message="discovery published again")
        seq += 1
        child.send(ReadingBatch((reading(power, 42.0),), seq=seq))
        child.wait_ack(seq)
        recorder.wait_last(f"{PREFIX}/generator/a/power", "42")
        hb = child.wait_heartbeat(True, since=len(child.received))
        assert hb.stats["connected"]
    finally:
        broker.stop()


@pytest.mark.timeout(20)
def test_stop_is_prompt_while_the_broker_is_unreachable(tmp_path, children):
    child = children(make_config(Mosquitto(str(tmp_path)).port))
    child.send(INVENTORY)
    child.wait_message(lambda m: m == Started("mqtt"), what="Started")
    assert child.stop() < 2.0
    assert child.process.exitcode == 0


@pytest.mark.timeout(30)
def test_configured_prefix_unretained_values_and_home_assistant_restart(broker, children, recorders):
    recorder = recorders(broker.port)
    child = children(make_config(broker.port, topic_prefix="home/solar/", retain=False, qos=1))
    # No inventory yet: values flow under the configured prefix; discovery waits for the inverter's identity.
    child.send(ReadingBatch((reading("battery.soc", 0.5),), seq=7))
    child.wait_ack(7)
    recorder.wait_last("home/solar/battery/state_of_charge", "50")
    recorder.wait_last("home/solar/availability", "online")
    assert recorders(broker.port).last("home/solar/battery/state_of_charge") is None  # not retained
    assert not recorder.topics(lambda t: t.startswith("homeassistant/sensor/"))
    child.send(INVENTORY)
    wait_for(lambda: recorder.last(f"homeassistant/sensor/{NODE}/battery_state_of_charge/config"), 10,
             message="discovery after the inventory")
    before = recorder.count("home/solar/battery/state_of_charge")
    recorder.client.publish("homeassistant/status", "online")  # Home Assistant's birth message
    wait_for(lambda: recorder.count("home/solar/battery/state_of_charge") > before, 10,
             message="values published again for a restarted Home Assistant")


@pytest.mark.timeout(30)
def test_tls_with_a_private_ca(tmp_path, children, recorders):
    openssl = require_binary("openssl")
    d = str(tmp_path)

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=d, check=True, capture_output=True, timeout=20)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=rctmon test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1")
    with open(os.path.join(d, "san.ext"), "w", encoding="utf-8") as ext:
        ext.write("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "2", "-extfile", "san.ext")
    broker = Mosquitto(d)
    tls_port = broker.port
    plain = Mosquitto(d)  # only for its free port: the test's subscriber uses a plain listener on the same broker
    broker.extra_config(f"listener {plain.port} 127.0.0.1\n", tls=(f"{d}/ca.crt", f"{d}/server.crt", f"{d}/server.key"))
    broker.start()
    try:
        recorder = recorders(plain.port)
        config = make_config(tls_port)
        config.mqtt.tls.enable = True
        config.mqtt.tls.ca_file = f"{d}/ca.crt"
        child = children(config)
        child.send(INVENTORY)
        send_samples(child, seq=1)
        recorder.wait_last(f"{PREFIX}/availability", "online")
        recorder.wait_last(f"{PREFIX}/generator/a/power", "1234.5")
    finally:
        broker.stop()


# --- pure parts ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, text", [
    (231.60000610351562, "231.6"), (0.0, "0"), (-0.0, "0"), (-12.5, "-12.5"), (1e-9, "0.000000001"),
    (12345678.9, "12345679"), (2769.9422499999996, "2769.942"), (7, "7"), (True, "1"), ("x\x00", "x"),
    (math.nan, None), (math.inf, None),
])
def test_payloads_are_plain_numbers_without_float32_noise(value, text):
    assert mqtt.format_value(value) == text


def test_absurd_readings_are_not_published():
    series = catalog.SERIES_BY_NAME["g_sync.p_ac_sum_lp"]
    assert mqtt.payloads(series, 1e30) == []
    assert mqtt.payloads(series, 1500.0) == [((), "1500")]


def test_a_value_goes_out_when_it_changes_or_its_interval_has_passed():
    values = mqtt.LatestValues(INTERVALS)
    power = catalog.SERIES_BY_NAME["g_sync.p_ac_sum_lp"]  # fast tier: 10 s
    assert values.update(power, "100", 1, now=0.0)
    (entry,) = values.due()
    values.sent(entry, now=0.0)
    values.update(power, "100", 2, now=1.0)
    assert values.due() == []  # unchanged and fresh
    values.update(power, "101", 3, now=2.0)
    assert [e.text for e in values.due()] == ["101"]
    values.sent(values.due()[0], now=2.0)
    values.update(power, "101", 4, now=2.0 + INTERVALS[catalog.Tier.FAST])
    assert [e.text for e in values.due()] == ["101"]  # unchanged, but its interval has passed
    assert not values.update(power, "99", 0, now=20.0)  # older than what is held
    values.sent(values.due()[0], now=20.0)
    values.all_due()
    assert [e.text for e in values.due()] == ["101"]
    assert len(values) == 1


def test_every_series_has_its_own_topic_and_discovery_ids():
    paths = [mqtt.value_path(s, labels) for s in catalog.SERIES for labels in s.sample_labels]
    assert len(paths) == len(set(paths))
    assert all(p == p.lower() and " " not in p and "+" not in p and "#" not in p for p in paths)
    ids = [ha.object_id(s, labels) for s in catalog.SERIES for labels in s.sample_labels]
    assert len(ids) == len(set(ids))
    assert mqtt.value_path(catalog.SERIES_BY_NAME["dc_conv.dc_conv_struct[1].p_dc_lp"]) == "generator/b/power"


def test_discovery_configs_follow_home_assistant_rules():
    configs = ha.discovery_configs(INVENTORY, "homeassistant",
                                   lambda s, labels: f"{PREFIX}/{mqtt.value_path(s, labels)}",
                                   f"{PREFIX}/availability", INTERVALS, {})
    payloads = {t: json.loads(p) for t, p in configs.items()}
    assert len({p["unique_id"] for p in payloads.values()}) == len(payloads)
    assert len({p["state_topic"] for p in payloads.values()}) == len(payloads)
    energy_units = {"Wh", "kWh", "MWh"}  # what every Home Assistant release accepts for device_class energy
    for series, labels in [(s, labels) for s in catalog.enabled_series(INVENTORY) for labels in s.sample_labels]:
        p = payloads[f"homeassistant/sensor/{NODE}/{ha.object_id(series, labels)}/config"]
        assert p["name"] and p["name"][0].isupper()
        assert p.get("enabled_by_default", True) is not series.row.per_element  # cells: announced, not enabled
        if series.row.kind is catalog.Kind.COUNTER or p.get("device_class") == "energy":
            assert p["state_class"] == "total_increasing", p
        if p.get("device_class") == "energy":
            assert p["unit_of_measurement"] in energy_units
        if series.row.kind is catalog.Kind.INFO:
            assert not {"device_class", "state_class", "unit_of_measurement"} & set(p)
            assert p["entity_category"] == "diagnostic"
        if series.tier is catalog.Tier.STATIC:
            assert "expire_after" not in p
        else:
            assert p["expire_after"] == ha.EXPIRE_AFTER_INTERVALS * INTERVALS[series.tier]
    soc = payloads[f"homeassistant/sensor/{NODE}/battery_state_of_charge/config"]
    assert (soc["device_class"], soc["unit_of_measurement"]) == ("battery", "%")
    module = payloads[f"homeassistant/sensor/{NODE}/battery_module_0_cycles/config"]
    assert module["device"]["identifiers"] == [f"{NODE}_battery_module_0"] and module["name"] == "Cycles"
    assert module["device"]["via_device"] == NODE


def test_an_inverter_without_serial_gets_ids_from_its_name():
    assert ha.node_id(Inventory(name="My RCT / roof")) == "rctmon_My_RCT_roof"
    assert mqtt.default_prefix(Inventory(name="My RCT / roof #1")) == "rctmon/My_RCT_roof_1"
    assert mqtt.default_prefix(Inventory(serial="0123")) == "rctmon/0123"
    assert mqtt.default_prefix(Inventory()) is None  # nothing to publish under until the inventory says
