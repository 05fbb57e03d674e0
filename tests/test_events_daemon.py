"""Inverter events and faults end to end: `rctmon daemon` against the simulator, victoria-metrics and mosquitto.

The simulator runs in this process (SimulatorThread) so that the test knows the truth: its event table
(`records.events`) raises a new event every EVENT_EVERY seconds, and its fault words can be switched while it runs.
The daemon reads the table every medium interval (1 s here); what its first read finds is the table's past (not
counted, not announced; in InfluxDB through the backfill, rctmon/collector/backfill.py), every event after that is
counted once, written once and announced once.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import time
from pathlib import Path
from collections.abc import Iterator

import pytest

from mosquitto import Mosquitto, Recorder, broker
from support import free_port, rctmon_command, scrape_samples, stop_process, wait_for
from vmserver import VictoriaMetrics, victoria

from rctmon.exporters.homeassistant import node_id
from rctmon.exporters.mqtt import topic_level
from rctmon.history.events import EVENT_TYPES, type_name
from rctmon.simulator import SimulatorOptions, SimulatorThread
from rctmon.simulator.events import SimEvent

__all__ = ["broker", "victoria"]  # fixtures, imported so that pytest finds them here

NAME = "Shed PS 6.0"
PREFIX = f"rctmon/{topic_level(NAME)}"
EVENT_EVERY = 3.0  # seconds between the simulator's new events
BASE_EVENTS = 6  # events in the table when the simulator starts


class Daemon:
    """The daemon (a subprocess) reading the in-process simulator, with all three outputs on."""

    def __init__(self, tmp_path: Path, sim_port: int, broker_port: int, influx_url: str) -> None:
        self.tmp_path = tmp_path
        self.metrics_port = free_port()
        config = tmp_path / "rctmon.yml"
        config.write_text(f"""\
device:
  host: 127.0.0.1
  port: {sim_port}
  intervals: {{fast: 1, medium: 1, slow: 3, static: 60}}
prometheus:
  bind_address: 127.0.0.1
  bind_port: {self.metrics_port}
  exposition: true
influxdb:
  enable: true
  url: {influx_url}
  token: "rctmon:secret"
  bucket: rct
  flush_interval: 0.5
  spool_path: {tmp_path / "spool" / "influxdb-spool.sqlite"}
mqtt:
  enable: true
  host: 127.0.0.1
  port: {broker_port}
  client_id: rctmon-events-test-{os.getpid()}
history:
  first_start: 2d  # the backfill fills the table's past (the day before the simulator started)
""", encoding="utf-8")
        config.chmod(0o600)
        self.config = config
        self.log_path = tmp_path / "daemon.log"
        self.proc = self.start()

    def start(self) -> subprocess.Popen[bytes]:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(rctmon_command("-c", str(self.config), "daemon"), stdout=log,
                                         stderr=subprocess.STDOUT)
        return self.proc

    def metrics(self) -> dict[str, float]:
        """Return the daemon's samples as {'name{labels}': value}."""
        return scrape_samples(self.metrics_port)

    def events_total(self) -> dict[str, float]:
        """Return rctmon_inverter_events_total by type."""
        head = f'rctmon_inverter_events_total{{inverter="{NAME}",type="'
        return {key[len(head):-2]: value for key, value in self.metrics().items() if key.startswith(head)}

    def stop(self) -> None:
        stop_process(self.proc)


@pytest.fixture
def simulator() -> Iterator[SimulatorThread]:
    options = SimulatorOptions(name=NAME, battery_modules=1, events=BASE_EVENTS, event_every=EVENT_EVERY, seed=7,
                               inverter_faults=("grid_undervoltage_l1", "battery_empty"))
    with SimulatorThread(options) as sim:
        yield sim


@pytest.fixture
def recorder(broker: Mosquitto) -> Iterator[Recorder]:
    subscriber = Recorder(broker.port, ["#"])
    try:
        yield subscriber
    finally:
        subscriber.close()


@pytest.fixture
def daemon(tmp_path: Path, simulator: SimulatorThread, broker: Mosquitto, victoria: VictoriaMetrics,
           recorder: Recorder) -> Iterator[Daemon]:
    running = Daemon(tmp_path, simulator.port, broker.port, victoria.url)
    try:
        yield running
    finally:
        running.stop()


def raised(sim: SimulatorThread) -> list[SimEvent]:
    """Return the events the simulator raised while it ran (not the table it started with), oldest first."""
    table = sim.simulator.records.events
    return [e for e in table.events() if e.start > table.started]


def counted_like_the_simulator(counts: dict[str, float], events: list[SimEvent]) -> bool:
    """Return whether the counts are those of a run of consecutive raised events reaching the newest but one."""
    total = int(sum(counts.values()))
    if total == 0 or len(events) - total < 0:
        return False
    got = {name: int(value) for name, value in counts.items() if value}
    for end in (len(events), len(events) - 1):  # the newest may not have been read yet
        run = events[end - total:end] if end - total >= 0 else []
        if got == dict(collections.Counter(type_name(ord(e.code)) for e in run)):
            return True
    return False


@pytest.mark.timeout(120)
def test_new_events_are_counted_once_and_reach_all_three_outputs(daemon, simulator, victoria, recorder):
    first = wait_for(lambda: (counts := daemon.events_total()) and counts, 30, message="the events counter")
    assert set(first) >= {t.name for t in EVENT_TYPES}  # every documented type from the start
    wait_for(lambda: daemon.metrics().get("rctmon_event_table_last_read_timestamp_seconds", 0) > 0, 20,
             message="a complete read of the event table")

    # The table's past, read first, is in InfluxDB but counts nothing; every event after it counts once.
    wait_for(lambda: victoria.count('{__name__="inverter_event_element2"}') >= BASE_EVENTS, 30,
             message="the table's past in InfluxDB")
    wait_for(lambda: sum(daemon.events_total().values()) >= 3, 30, message="three new events counted")
    wait_for(lambda: counted_like_the_simulator(daemon.events_total(), raised(simulator)), 10,
             message="the counts of the simulator's newest events")

    # The next event the simulator raises shows up everywhere within a minute.
    table = simulator.simulator.records.events
    after = len(table.events())
    event = wait_for(lambda: len(table.events()) > after and table.events()[after], 2 * EVENT_EVERY + 5,
                     message="the simulator's next event")
    kind = type_name(ord(event.code))
    wait_for(lambda: daemon.metrics().get(
        f'rctmon_inverter_last_event_timestamp_seconds{{inverter="{NAME}",type="{kind}"}}') == event.start, 60,
        message=f"the newest {kind} on /metrics")

    def stored() -> bool:
        return any(ts == event.start * 1000 and dict(labels) == {"inverter": NAME, "type": kind}
                   for _, labels, ts, _ in victoria.export('{__name__="inverter_event_element2"}'))
    wait_for(stored, 60, message=f"the {kind} at {event.start} in InfluxDB")

    def announced() -> dict[str, object] | None:
        payloads = [json.loads(p) for p in recorder.messages.get(f"{PREFIX}/event", [])]
        return next((p for p in payloads if p["start_timestamp"] == event.start), None)
    payload = wait_for(announced, 60, message=f"the {kind} on MQTT")
    assert payload["type"] == kind and payload["event_type"] == kind
    assert not recorder.retained[f"{PREFIX}/event"]  # a moment, not a state

    # A ranged event read while it lasted (its end field 0) gets its end on the same point once it is over.
    ended = [e for e in raised(simulator) if e.end is not None and e.end < event.start]
    assert ended  # the simulator's new events last 1 to 2 EVENT_EVERY

    def ends_stored() -> bool:
        durations = {(dict(labels)["type"], ts): value
                     for _, labels, ts, value in victoria.export('{__name__="inverter_event_duration"}')}
        return all(durations.get((type_name(ord(e.code)), e.start * 1000)) == e.end - e.start  # type: ignore[operator]
                   for e in ended)
    wait_for(ends_stored, 30, message="the ends of the events that are over in InfluxDB")

    # Nothing twice: one point per event in InfluxDB, one MQTT message per event, and only raised ones announced;
    # an event read again with its end is not counted again.
    wait_for(lambda: counted_like_the_simulator(daemon.events_total(), raised(simulator)), 10,
             message="the counts of the simulator's newest events, after ends were filled in")
    events = [e for e in table.events() if e.start <= event.start]
    stored = victoria.export('{__name__="inverter_event_element2"}')
    points = {(dict(labels)["type"], ts) for _, labels, ts, _ in stored}
    assert points == {(type_name(ord(e.code)), e.start * 1000) for e in events}
    starts = [json.loads(p)["start_timestamp"] for p in recorder.messages[f"{PREFIX}/event"]]
    assert len(starts) == len(set(starts)) and set(starts) <= {e.start for e in raised(simulator)}
    discovery = json.loads(recorder.last(f"homeassistant/event/{node_id(simulator.options.inventory())}"
                                         "/inverter_event/config") or "{}")
    assert discovery["state_topic"] == f"{PREFIX}/event" and kind in discovery["event_types"]


@pytest.mark.timeout(90)
def test_fault_bits_show_by_name_on_metrics_and_in_the_home_assistant_sensor(daemon, simulator, recorder):
    def fault(name: str) -> float | None:
        return daemon.metrics().get(f'rctmon_inverter_fault_active{{fault="{name}",inverter="{NAME}"}}')

    wait_for(lambda: fault("grid_undervoltage_l1") == 1.0, 30, message="grid_undervoltage_l1 active")
    assert fault("battery_empty") == 1.0 and fault("quartz") is None  # present only while set
    sensor = f"homeassistant/binary_sensor/{node_id(simulator.options.inventory())}/inverter_faults/config"
    config = wait_for(lambda: json.loads(recorder.last(sensor) or "null"), 20, message="the problem sensor")
    assert config["device_class"] == "problem" and config["state_topic"] == f"{PREFIX}/faults"
    assert config["json_attributes_topic"] == f"{PREFIX}/faults"
    state = wait_for(lambda: json.loads(recorder.last(f"{PREFIX}/faults") or "null"), 20, message="the fault state")
    assert state["problem"] == "ON" and state["faults"] == ["grid_undervoltage_l1", "battery_empty"]

    simulator.simulator.set_inverter_faults(())  # the faults clear
    def cleared() -> bool:
        samples = daemon.metrics()
        words = [v for k, v in samples.items() if k.startswith("rctmon_inverter_fault_flags{")]
        return len(words) == 4 and not any(words) and not any("rctmon_inverter_fault_active{" in k for k in samples)
    wait_for(cleared, 30, message="the faults cleared on /metrics: four zero words, no fault series")
    wait_for(lambda: json.loads(recorder.last(f"{PREFIX}/faults") or "{}").get("problem") == "OFF", 30,
             message="the problem sensor off")
    assert json.loads(recorder.last(f"{PREFIX}/faults") or "{}")["faults"] == []


@pytest.mark.timeout(120)
def test_a_restarted_daemon_fills_what_it_missed_and_repeats_nothing(daemon, simulator, victoria, recorder):
    table = simulator.simulator.records.events
    wait_for(lambda: sum(daemon.events_total().values()) >= 2, 40, message="two new events counted")
    daemon.stop()
    announced_before = recorder.count(f"{PREFIX}/event")
    stopped_at = len(table.events())
    wait_for(lambda: len(table.events()) >= stopped_at + 2, 4 * EVENT_EVERY, message="two events while it is down")
    restarted = time.time()
    daemon.start()

    # The first read after the start is the table's past: stored (the events missed while down included), not
    # counted again, not announced again. The counter starts from 0 and counts only what happens after the start.
    missed = [e for e in table.events()[stopped_at:] if e.start < restarted]

    def stored() -> set[tuple[str, int]]:
        return {(dict(labels)["type"], ts)
                for _, labels, ts, _ in victoria.export('{__name__="inverter_event_element2"}')}
    wait_for(lambda: {(type_name(ord(e.code)), e.start * 1000) for e in missed} <= stored(), 30,
             message="the events missed while down in InfluxDB")
    wait_for(lambda: sum(daemon.events_total().values()) >= 2, 40, message="new events after the restart")
    counted = sum(daemon.events_total().values())
    assert counted <= len([e for e in table.events() if e.start >= restarted])
    starts = [json.loads(p)["start_timestamp"] for p in recorder.messages[f"{PREFIX}/event"]]
    assert len(starts) == len(set(starts)) > announced_before  # new ones announced, none twice
    assert not {e.start for e in missed} & set(starts)  # what happened while down is history, not news
    points = stored()
    newest = max(ts for _, ts in points)
    assert points == {(type_name(ord(e.code)), e.start * 1000) for e in table.events() if e.start * 1000 <= newest}
