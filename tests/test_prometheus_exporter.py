"""The prometheus child, run for real: forked with a channel pair and a bound socket, scraped over HTTP(S).

Nothing is mocked: messages go through `rctmon.channel.Channel`, scrapes through the socket from
`bind_endpoint`, and the output is checked by promtool and by a real Prometheus server.
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import http.client
import json
import multiprocessing
import os
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from collections.abc import Awaitable, Iterator, Sequence

import pytest
from prometheus_client.parser import text_string_to_metric_families
from rctclient.types import DataType

import support
from support import wait_messages
from rctmon import catalog
from rctmon.channel import Channel, ChannelClosed
from rctmon.config import Config
from rctmon.exporters import http as endpoint_http
from rctmon.exporters.httpserver import Response
from rctmon.exporters.listen import bind_endpoint
import rctmon.child
import rctmon.exporters.prometheus
from rctmon.child import ChildContext, run_child
from rctmon.collector.framer import DECODE_ERROR_KINDS
from rctmon.exporters.prometheus import PrometheusExporter
from rctmon.inventory import Inventory
from rctmon.messages import DeviceStatus, Health, Heartbeat, ReadingBatch, Started, Stop
from rctmon.proc import become_child
from rctmon.registry import CHILD_BY_NAME, CHILDREN, HEALTH_METRICS, INFLUXDB_WRITE_ERROR_KINDS, ChildSpec

pytestmark = pytest.mark.timeout(30)

_FORK = multiprocessing.get_context("fork")
INVENTORY = Inventory(name="Garage", serial="SN123", software_version="1.2", parameter_file="p.bin",
                      generators=("a", "b"), battery_modules=3, power_switch=True, external_generator=True,
                      complete=True)
#: Raw values (as the inverter sends them) for the series the tests look at by name.
RAW: dict[str, object] = {
    "dc_conv.dc_conv_struct[0].p_dc_lp": 1234.5,
    "dc_conv.dc_conv_struct[1].p_dc_lp": 321.0,
    "battery.soc": 0.5,
    "energy.e_grid_feed_total": -1000.0,  # the inverter counts feed-in negative; exposed positive, in joules
    "prim_sm.island_flag": True,
    "android_description": "Garage",
    "battery.module_sn[1]": "MOD-1",
    "g_sync.u_l_rms[2]": 231.5,
}
#: What a cell's record holds, as the inverter sends it (millivolts, degrees, milliohms), for cell 0.
CELL_RAW: dict[str, float] = {"voltage_mv": 3300, "temperature_c": 20, "resistance_mohm": 1.5}
#: The only promtool lint the catalog still draws; the catalog owner was asked to rename the metric.
KNOWN_CATALOG_LINTS: tuple = ()  # promtool findings on catalog names we accept; none at present


def raw_value(series: catalog.Series) -> object:
    """Return a plausible raw value for any series, by its data type."""
    if series.object_name in RAW:
        return RAW[series.object_name]
    if series.elements is not None:  # a module's cells, one record each (as the collector hands them on)
        return tuple(tuple(CELL_RAW[field] + c for field in series.elements.fields) for c in range(24))
    if series.data_type is DataType.STRING:
        return f"text {series.object_name}"
    if series.data_type is DataType.BOOL:
        return False
    if series.data_type is DataType.FLOAT:
        unit = series.row.unit
        return 0.4225 if unit is not None and unit.word == "ratio" else 42.25  # a ratio of 42 is no reading
    return 7


def full_batch(inventory: Inventory = INVENTORY, taken_ns: int | None = None, seq: int = 1) -> ReadingBatch:
    """Return one reading for every series the inventory enables, plus one id the catalog does not know."""
    now = time.time_ns() if taken_ns is None else taken_ns
    readings = tuple((s.object_id, raw_value(s), now) for s in catalog.enabled_series(inventory))
    return ReadingBatch(readings + ((0x0BADF00D, 1.0, now),), seq=seq)


def supervisor_health(config: Config, restarts: int = 0) -> Health:
    """Return the Health the supervisor sends a new prometheus child before anything has been counted."""
    processes = [spec.name for spec in CHILDREN if spec.enabled(config)]
    own = {"up": dict.fromkeys(processes, 0), "restarts": dict.fromkeys(processes, restarts),
           "resident_memory_bytes": dict.fromkeys(processes, 0), "cpu_seconds": dict.fromkeys(processes, 0.0)}
    return Health({**{name: {} for name in processes}, "supervisor": own})


def full_health(processes: Sequence[str] = ("collector", "prometheus", "influxdb", "mqtt")) -> Health:
    collector = {"connects": 2, "frames_sent": 100, "frames_received": 98, "bytes_sent": 1000, "bytes_received": 5000,
                 "request_timeouts": 2, "readings": 96, "decode_errors": {"crc": 3, "garbage": 1},
                 "response_buckets": (10, 20, 30, 40, 50, 60, 70, 80, 90), "response_count": 98,
                 "response_sum": 12.5, "inventory_complete": True, "last_reading_ns": time.time_ns()}
    influxdb = {"points_written": 50, "write_errors": {"timeout": 1}, "spool_points": 3, "points_dropped": 0,
                "last_write_timestamp": time.time()}
    mqtt = {"connected": 1, "messages_published": 10, "publish_errors": 0}
    everyone = (*processes, "supervisor")
    own = {"build_info": {"1.0": 1}, "up": dict.fromkeys(everyone, 1), "restarts": dict.fromkeys(everyone, 1),
           "resident_memory_bytes": dict.fromkeys(everyone, 1 << 20), "cpu_seconds": dict.fromkeys(everyone, 0.5),
           "readings_dropped": {("influxdb", "backlog_full"): 7},
           "messages_dropped": {("prometheus", "health"): 1}, "device_up": 1, "inventory_complete": 1,
           "readings": 96, "last_reading_seconds": time.time()}
    stats = {"collector": collector, "influxdb": influxdb, "mqtt": mqtt, "prometheus": {}}
    return Health({**{name: stats[name] for name in processes}, "supervisor": own}, inventory=INVENTORY)


def make_config(exposition: bool = True, influxdb: bool = True, mqtt: bool = True) -> Config:
    config = Config()
    config.prometheus.exposition = exposition
    config.influxdb.enable = influxdb
    config.mqtt.enable = mqtt
    return config


# --- running the child ----------------------------------------------------------------------------------------------


PROMETHEUS = CHILD_BY_NAME["prometheus"]


def _child_main(config: Config, channel: Channel, parent_end: Channel, sock: socket.socket,
                spec: ChildSpec = PROMETHEUS) -> None:
    parent_end.close()  # or the child itself would keep the channel open and never see the parent go
    become_child("prometheus")
    run_child(spec, config, channel, sock)


@dataclass
class Exporter:
    """A running prometheus child as the supervisor sees it: its process, channel end and socket."""

    process: multiprocessing.process.BaseProcess
    channel: Channel
    sock: socket.socket
    tls_ca: str | None = None
    auth: tuple[str, str] | None = None
    received: list[object] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def send(self, *messages: object) -> None:
        for message in messages:
            assert self.channel.send(message)
        support.wait_for(lambda: self.channel.flush() or self.channel.pending_bytes == 0, 5, message="channel flush")

    def drain(self) -> list[object]:
        try:
            self.received.extend(self.channel.receive())
        except ChannelClosed:
            pass
        return self.received

    def wait_started(self) -> None:
        support.wait_for(lambda: any(isinstance(m, Started) for m in self.drain()), 10, message="Started")

    def get(self, path: str = "/metrics", headers: dict[str, str] | None = None,
            auth: tuple[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """Return (status, headers, body) of one request (http.client: no proxy from the environment)."""
        headers = dict(headers or {})
        credentials = auth or self.auth
        if credentials:
            token = base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        return request(self.port, path, headers, self.tls_ca)

    def metrics(self, headers: dict[str, str] | None = None) -> str:
        status, _, body = self.get("/metrics", headers)
        assert status == 200, body
        return body.decode("utf-8")

    def stop(self) -> None:
        if self.process.is_alive() and not self.channel.closed:
            self.channel.send(Stop())
            self.channel.flush()
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self.channel.close()
        self.sock.close()


def request(port: int, path: str, headers: dict[str, str], tls_ca: str | None = None,
            timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    if tls_ca:
        context = ssl.create_default_context(cafile=tls_ca)
        conn: http.client.HTTPConnection = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout,
                                                                       context=context)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


@pytest.fixture
def start_exporter() -> Iterator:
    """Return a function that starts a prometheus child; every child it started is stopped afterwards."""
    started: list[Exporter] = []

    def start(config: Config, tls_ca: str | None = None, auth: tuple[str, str] | None = None,
              wait: bool = True, health: Health | None = None, spec: ChildSpec = PROMETHEUS) -> Exporter:
        """Start a child as the supervisor does: the socket handed over, and (unless `wait` is off) its Health."""
        sock = bind_endpoint("127.0.0.1", 0)  # port 0: the kernel picks a free one, no race with other tests
        ours, theirs = Channel.pair()
        process = _FORK.Process(target=_child_main, args=(config, theirs, ours, sock, spec), name="test-prometheus")
        process.start()
        theirs.close()
        exporter = Exporter(process, ours, sock, tls_ca, auth)
        started.append(exporter)
        if wait:
            exporter.send(health or supervisor_health(config))
            exporter.wait_started()
        return exporter

    yield start
    for exporter in started:
        exporter.stop()


def families(text: str) -> dict[str, object]:
    """Return the scraped metric families by their exposed name (counters with `_total`, as in the TYPE line)."""
    result = {}
    for family in text_string_to_metric_families(text):
        name = family.name + "_total" if family.type == "counter" else family.name
        result[name] = family
    return result


def sample(text: str, name: str, **labels: str) -> float | None:
    """Return the value of the sample with exactly this name and these labels, or None."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None


# --- health ---------------------------------------------------------------------------------------------------------


def test_every_health_metric_is_exposed_with_its_type_and_labels(start_exporter):
    exporter = start_exporter(make_config(exposition=False))
    exporter.send(full_health(), full_batch())
    text = support.wait_for(lambda: (t := exporter.metrics()) and 'kind="crc"} 3.0' in t and t, 10,
                            message="health in the exposition")
    found = families(text)
    for metric in HEALTH_METRICS:
        assert metric.name in found, metric.name
        family = found[metric.name]
        assert family.type == metric.type, metric.name
        label_names = {k for s in family.samples for k in s.labels if k != "le"}
        assert label_names == set(metric.labels), metric.name
    assert sample(text, "rctmon_decode_errors_total", kind="crc") == 3
    assert sample(text, "rctmon_response_seconds_bucket", le="+Inf") == 98
    assert sample(text, "rctmon_response_seconds_bucket", le="0.025") == 10
    assert sample(text, "rctmon_response_seconds_sum") == 12.5
    assert sample(text, "rctmon_influxdb_write_errors_total", kind="timeout") == 1
    assert sample(text, "rctmon_mqtt_connected") == 1
    assert sample(text, "rctmon_device_up") == 1
    processes = {s.labels["process"] for s in found["rctmon_process_up"].samples}
    assert {"collector", "prometheus", "influxdb", "mqtt"} <= processes
    own_rss = sample(text, "rctmon_process_resident_memory_bytes", process="prometheus")
    assert own_rss and own_rss != 1 << 20, "the child's own, fresh figure"
    # exposition is off: readings were sent, yet no inverter value appears
    assert not [name for name in found if name in catalog.metric_families()]


def test_metrics_of_disabled_exporters_are_not_exposed(start_exporter):
    exporter = start_exporter(make_config(exposition=False, influxdb=False, mqtt=False))
    found = families(exporter.metrics())  # nothing counted yet: zeros, but every family of a running process
    assert not [n for n in found if n.startswith(("rctmon_influxdb_", "rctmon_mqtt_"))]
    assert {m.name for m in HEALTH_METRICS if m.source not in ("influxdb", "mqtt")} <= set(found)
    assert sample(exporter.metrics(), "rctmon_process_up", process="prometheus") == 1
    assert {s.labels["process"] for s in found["rctmon_process_up"].samples} == {"collector", "prometheus"}


def test_every_labelled_series_whose_values_are_known_is_there_at_zero_from_the_first_scrape(start_exporter):
    exporter = start_exporter(make_config(exposition=False))
    text = exporter.metrics()
    for kind in DECODE_ERROR_KINDS:
        assert sample(text, "rctmon_decode_errors_total", kind=kind) == 0, kind
    for kind in INFLUXDB_WRITE_ERROR_KINDS:
        assert sample(text, "rctmon_influxdb_write_errors_total", kind=kind) == 0, kind
    for process in ("collector", "prometheus", "influxdb", "mqtt"):
        assert sample(text, "rctmon_process_restarts_total", process=process) == 0, process
        assert sample(text, "rctmon_process_up", process=process) is not None, process


def test_the_endpoint_answers_only_with_the_supervisors_health(start_exporter):
    """A restarted child must never show a restart count of 0 (the shipped alert would fire on one restart)."""
    config = make_config()
    exporter = start_exporter(config, wait=False)
    connected = threading.Event()
    answers: list[str] = []

    def scrape() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", exporter.port, timeout=10)
        conn.connect()  # the supervisor's socket listens already: the connection waits in its backlog
        connected.set()
        conn.request("GET", "/metrics")
        answers.append(conn.getresponse().read().decode())
        conn.close()

    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        assert connected.wait(5)
        assert not [m for m in exporter.drain() if isinstance(m, Started)]
        exporter.send(supervisor_health(config, restarts=3))
        scraper.join(10)
    finally:
        scraper.join(10)
    assert sample(answers[0], "rctmon_process_restarts_total", process="prometheus") == 3


class EndpointThatStops(PrometheusExporter):
    """A prometheus child whose serving task ends (as the threaded endpoint's did when Thread.start raised)."""

    async def start(self) -> Sequence[Awaitable[object]]:
        work = await super().start()
        assert self.serving is not None
        self.serving.cancel()
        return work


@dataclass(frozen=True)
class Break:
    """Tells BrokenEndpoint to answer /metrics with 500 from now on."""


class BrokenEndpoint(PrometheusExporter):
    """A prometheus child whose endpoint stops answering /metrics: its process and its loop live on."""

    def __init__(self, context: ChildContext) -> None:
        super().__init__(context)
        rctmon.child.HEARTBEAT_INTERVAL = 0.2  # this process only (forked): a quick test
        rctmon.exporters.prometheus.PROBE_INTERVAL = 0.0  # ask at every heartbeat

    def receive(self, messages: Sequence[object]) -> None:
        if any(isinstance(m, Break) for m in messages):
            endpoint_http._ROUTES["/metrics"] = lambda app, request: Response(500, b"broken\n")
        super().receive([m for m in messages if not isinstance(m, Break)])


def test_no_heartbeat_while_the_endpoint_does_not_answer_its_own_request(start_exporter):
    spec = dataclasses.replace(PROMETHEUS, job="test_prometheus_exporter:BrokenEndpoint")
    exporter = start_exporter(make_config(), spec=spec)
    support.wait_for(lambda: len([m for m in exporter.drain() if isinstance(m, Heartbeat)]) >= 3, 5,
                     message="heartbeats every 0.2 s")
    exporter.send(Break())
    broken = len(exporter.drain())
    deadline = time.monotonic() + 3.0  # fifteen heartbeat intervals
    while time.monotonic() < deadline:
        exporter.received.extend(wait_messages(exporter.channel, 0.1))
    after = [m for m in exporter.received[broken:] if isinstance(m, Heartbeat)]
    assert len(after) <= 1, "at most the one already on its way"  # the supervisor kills it after its silence limit
    assert exporter.process.is_alive()
    assert exporter.get("/")[0] == 200  # the loop itself lives on


def test_a_child_whose_endpoint_stopped_serving_exits_with_status_1(start_exporter):
    spec = dataclasses.replace(PROMETHEUS, job="test_prometheus_exporter:EndpointThatStops")
    exporter = start_exporter(make_config(), spec=spec)
    exporter.process.join(10)
    assert exporter.process.exitcode == 1


def test_device_status_and_inventory_messages_are_applied(start_exporter):
    exporter = start_exporter(make_config(exposition=True))
    exporter.send(INVENTORY, DeviceStatus(up=True))
    support.wait_for(lambda: sample(exporter.metrics(), "rctmon_device_up") == 1, 5, message="device up")
    assert sample(exporter.metrics(), "rctmon_inventory_complete") == 1
    exporter.send(DeviceStatus(up=False, reason="connection refused"))
    support.wait_for(lambda: sample(exporter.metrics(), "rctmon_device_up") == 0, 5, message="device down")


def test_started_and_heartbeats_are_sent(start_exporter):
    exporter = start_exporter(make_config())
    beats = support.wait_for(lambda: [m for m in exporter.drain() if isinstance(m, Heartbeat)], 5,
                             message="a heartbeat")
    assert beats[0].process == "prometheus"
    assert beats[0].pid == exporter.process.pid
    assert beats[0].rss_bytes > 0


# --- inverter values ------------------------------------------------------------------------------------------------


def test_inverter_values_have_catalog_names_labels_and_units(start_exporter):
    exporter = start_exporter(make_config(exposition=True))
    exporter.send(INVENTORY, full_batch())
    text = support.wait_for(lambda: (t := exporter.metrics()) and "rctmon_generator_power_watts" in t and t, 10,
                            message="inverter values")
    assert sample(text, "rctmon_generator_power_watts", inverter="Garage", generator="a") == 1234.5
    assert sample(text, "rctmon_generator_power_watts", inverter="Garage", generator="b") == 321.0
    assert sample(text, "rctmon_battery_state_of_charge_ratio", inverter="Garage") == 0.5
    assert sample(text, "rctmon_grid_feed_energy_joules_total", inverter="Garage") == 3.6e6
    assert sample(text, "rctmon_inverter_island", inverter="Garage") == 1
    assert sample(text, "rctmon_grid_voltage_volts", inverter="Garage", phase="3") == 231.5
    assert sample(text, "rctmon_inverter_temperature_celsius", inverter="Garage", sensor="core") == 42.25
    found = families(text)
    modules = {s.labels["module"] for s in found["rctmon_battery_module_cycles_total"].samples}
    assert modules == {"0", "1", "2"}
    assert found["rctmon_inverter_energy_joules_total"].type == "counter"
    info = found["rctmon_inverter_info"].samples
    assert len(info) == 1 and info[0].value == 1
    assert info[0].labels == {"inverter": "Garage", "name": "Garage", "serial": "text inverter_sn",
                              "software_version": "text svnversion", "parameter_file": "text parameter_file"}
    module_info = {s.labels["module"]: s.labels for s in found["rctmon_battery_module_info"].samples}
    assert module_info["1"] == {"inverter": "Garage", "module": "1", "serial": "MOD-1"}
    assert "(cached; read every 10 s)" in found["rctmon_generator_power_watts"].documentation
    # strings appear only as labels of _info metrics
    for name, family in found.items():
        if not name.endswith("_info"):
            assert all(isinstance(s.value, float) for s in family.samples), name


def test_stale_values_disappear_after_three_intervals(start_exporter):
    config = make_config(exposition=True)
    config.device.intervals.fast = 0.2  # stale after 0.6 s
    exporter = start_exporter(config)
    exporter.send(INVENTORY, full_batch())
    support.wait_for(lambda: "rctmon_generator_power_watts" in exporter.metrics(), 5, message="fresh values")
    text = support.wait_for(lambda: (t := exporter.metrics()) and "rctmon_generator_power_watts" not in t and t,
                            10, message="fast values to go stale")
    assert "rctmon_battery_state_of_charge_ratio" not in text  # fast tier too
    assert sample(text, "rctmon_grid_feed_energy_joules_total", inverter="Garage") == 3.6e6  # medium: 180 s
    assert "rctmon_inverter_info" in text  # static


def test_a_replayed_old_reading_is_not_exposed_and_never_overwrites_a_newer_one(start_exporter):
    exporter = start_exporter(make_config(exposition=True))
    power = catalog.SERIES_BY_NAME["dc_conv.dc_conv_struct[0].p_dc_lp"].object_id
    voltage = catalog.SERIES_BY_NAME["dc_conv.dc_conv_struct[0].u_sg_lp"].object_id
    now = time.time_ns()
    # a backlog replayed after a restart: the power reading is older than 3 x 10 s, the voltage is fresh
    exporter.send(INVENTORY, ReadingBatch(((power, 50.0, now - 31 * 10**9), (voltage, 400.0, now))))
    text = support.wait_for(lambda: (t := exporter.metrics()) and "rctmon_generator_voltage_volts" in t and t, 5,
                            message="the fresh reading")
    assert "rctmon_generator_power_watts" not in text
    exporter.send(ReadingBatch(((power, 60.0, now),)), ReadingBatch(((power, 70.0, now - 10**9),)))
    support.wait_for(lambda: sample(exporter.metrics(), "rctmon_generator_power_watts", inverter="Garage",
                                    generator="a") == 60.0, 5, message="the newest value")


# --- endpoint -------------------------------------------------------------------------------------------------------


def test_landing_page_links_metrics_and_unknown_paths_are_404(start_exporter):
    exporter = start_exporter(make_config())
    status, headers, body = exporter.get("/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b'href="/metrics"' in body
    assert exporter.get("/nothing")[0] == 404


def test_gzip_and_openmetrics_are_negotiated(start_exporter):
    exporter = start_exporter(make_config(exposition=True))
    exporter.send(INVENTORY, full_batch())
    support.wait_for(lambda: "rctmon_generator_power_watts" in exporter.metrics(), 5, message="values")
    status, headers, body = exporter.get("/metrics", {"Accept-Encoding": "gzip"})
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert b"rctmon_generator_power_watts" in gzip.decompress(body)
    status, headers, body = exporter.get("/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"})
    assert headers["content-type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    assert b"# TYPE rctmon_inverter info" in body
    assert b"# UNIT rctmon_generator_power_watts watts" in body
    status, headers, _ = exporter.get("/metrics", {"Accept-Encoding": "gzip;q=0, identity"})
    assert "content-encoding" not in headers


def test_twenty_concurrent_scrapers_all_get_answers(start_exporter):
    exporter = start_exporter(make_config(exposition=True))
    exporter.send(INVENTORY, full_batch(), full_health())
    support.wait_for(lambda: "rctmon_generator_power_watts" in exporter.metrics(), 5, message="values")
    results: list[int] = []
    barrier = threading.Barrier(20)

    def scrape() -> None:
        barrier.wait()
        for _ in range(5):
            status, _, body = exporter.get("/metrics", {"Accept-Encoding": "gzip"})
            results.append(status if b"" != body else 0)

    threads = [threading.Thread(target=scrape) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert results == [200] * 100


def test_stuck_clients_block_neither_scrapes_nor_messages(start_exporter):
    exporter = start_exporter(make_config(exposition=True))
    stuck = [socket.create_connection(("127.0.0.1", exporter.port)) for _ in range(5)]
    try:
        stuck[0].sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # a request that never ends
        exporter.send(INVENTORY, full_batch())
        text = support.wait_for(lambda: (t := exporter.metrics()) and "rctmon_generator_power_watts" in t and t, 5,
                                message="a scrape beside stuck clients")
        assert sample(text, "rctmon_generator_power_watts", inverter="Garage", generator="a") == 1234.5
    finally:
        for sock in stuck:
            sock.close()


def test_stop_makes_run_return(start_exporter):
    exporter = start_exporter(make_config())
    exporter.send(Stop())
    exporter.process.join(5)
    assert exporter.process.exitcode == 0


def test_a_closed_channel_makes_run_return(start_exporter):
    exporter = start_exporter(make_config())
    exporter.channel.close()
    exporter.process.join(5)
    assert exporter.process.exitcode == 0


def test_the_port_stays_bound_across_child_restarts(start_exporter):
    """The supervisor's socket outlives a child: a second child serves on the same port after the first stops."""
    first = start_exporter(make_config())
    first.send(Stop())
    first.process.join(5)
    sock = first.sock
    ours, theirs = Channel.pair()
    process = _FORK.Process(target=_child_main, args=(make_config(), theirs, ours, sock))
    process.start()
    theirs.close()
    second = Exporter(process, ours, socket.socket(fileno=os.dup(sock.fileno())))
    try:
        second.send(supervisor_health(make_config()))
        second.wait_started()
        assert second.get("/")[0] == 200
    finally:
        second.stop()


# --- promtool and a real Prometheus ---------------------------------------------------------------------------------


def test_promtool_check_metrics_finds_nothing(start_exporter):
    promtool = support.require_binary("promtool")
    exporter = start_exporter(make_config(exposition=True))
    exporter.send(full_health(), full_batch())
    text = support.wait_for(lambda: (t := exporter.metrics()) and "rctmon_battery_module_info" in t
                            and 'kind="crc"} 3.0' in t and t, 5, message="a full exposition")
    checked = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=20)
    complaints = [line for line in (checked.stdout + checked.stderr).decode().splitlines()
                  if line.strip() and line.strip() not in KNOWN_CATALOG_LINTS]
    assert complaints == []


@pytest.fixture
def prometheus_server(tmp_path) -> Iterator:
    """Return a function that starts Debian's Prometheus scraping a target every second; stopped afterwards."""
    binary = support.require_binary("prometheus")
    processes: list[subprocess.Popen] = []

    def start(target_port: int) -> int:
        port = support.free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            f"  - job_name: rctmon\n    static_configs: [{{targets: ['127.0.0.1:{target_port}']}}]\n")
        log = open(tmp_path / "prometheus.log", "wb")
        processes.append(subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT))
        log.close()
        return port

    yield start
    for process in processes:
        support.stop_process(process)


def query(port: int, promql: str) -> list[dict]:
    path = "/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    status, _, body = request(port, path, {})
    answer = json.loads(body)
    assert status == 200 and answer["status"] == "success", answer
    return answer["data"]["result"]


def test_a_real_prometheus_scrapes_health_and_inverter_values(start_exporter, prometheus_server):
    exporter = start_exporter(make_config(exposition=True))
    exporter.send(full_health(), full_batch())
    port = prometheus_server(exporter.port)
    support.wait_for(lambda: [r for r in query(port, 'up{job="rctmon"}') if r["value"][1] == "1"], 20,
                     interval=0.2, message="Prometheus to scrape the endpoint (up == 1)")
    result = support.wait_for(lambda: query(port, 'rctmon_generator_power_watts{generator="a"}'), 10,
                              interval=0.2, message="an inverter value in Prometheus")
    assert result[0]["metric"]["inverter"] == "Garage"
    assert float(result[0]["value"][1]) == 1234.5
    info = query(port, "rctmon_battery_module_info")
    assert {r["metric"]["module"] for r in info} == {"0", "1", "2"}


# --- TLS and basic auth ---------------------------------------------------------------------------------------------


@pytest.fixture
def certificate(tmp_path) -> tuple[str, str]:
    """Return (certificate, key) files of a self-signed certificate for 127.0.0.1, made with the openssl CLI."""
    openssl = support.require_binary("openssl")
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=20)
    return cert, key


def test_https_with_basic_auth(start_exporter, certificate):
    cert, key = certificate
    config = make_config(exposition=True)
    config.prometheus.tls_cert_file, config.prometheus.tls_key_file = cert, key
    config.prometheus.basic_auth_username, config.prometheus.basic_auth_password = "prom", "s3cret:with colon"
    exporter = start_exporter(config, tls_ca=cert, auth=("prom", "s3cret:with colon"))
    # a heartbeat goes out only when the child's own request (TLS, credentials) was answered
    support.wait_for(lambda: [m for m in exporter.drain() if isinstance(m, Heartbeat)], 10, message="a heartbeat")
    status, _, body = exporter.get("/metrics")
    assert status == 200 and b"rctmon_process_up" in body
    status, headers, body = exporter.get("/metrics", auth=("prom", "wrong"))
    assert status == 401 and headers["www-authenticate"].startswith("Basic")
    assert b"rctmon_" not in body
    assert exporter.get("/metrics", auth=("other", "s3cret:with colon"))[0] == 401
    assert request(exporter.port, "/metrics", {}, cert)[0] == 401  # no credentials at all
    status, _, body = request(exporter.port, "/metrics", {})  # plain HTTP to the HTTPS endpoint
    assert status == 400 and b"rctmon_" not in body


def test_basic_auth_without_tls(start_exporter):
    config = make_config()
    config.prometheus.basic_auth_username, config.prometheus.basic_auth_password = "prom", "pw"
    exporter = start_exporter(config, auth=("prom", "pw"))
    support.wait_for(lambda: [m for m in exporter.drain() if isinstance(m, Heartbeat)], 10, message="a heartbeat")
    assert exporter.get("/metrics")[0] == 200
    assert exporter.get("/", auth=("prom", "nope"))[0] == 401


# --- small parts ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("header, expected", [
    ("gzip", True), ("gzip, deflate", True), ("deflate, gzip;q=0.5", True), ("GZIP", True),
    ("gzip;q=0", False), ("identity", False), ("", False), ("x-gzip", True),
])
def test_accept_encoding(header, expected):
    assert endpoint_http.accepts_gzip(header) is expected


def test_basic_auth_rejects_malformed_headers():
    auth = endpoint_http.BasicAuth(b"u", b"p")
    good = "Basic " + base64.b64encode(b"u:p").decode()
    assert auth.allows(good)
    for header in (None, "", "Bearer x", "Basic !!!", "Basic " + base64.b64encode(b"up").decode(),
                   "Basic " + base64.b64encode(b"u:p2").decode()):
        assert not auth.allows(header), header


def test_bind_endpoint_names_the_taken_port_and_takes_ipv6():
    first = bind_endpoint("127.0.0.1", 0)
    try:
        port = first.getsockname()[1]
        with pytest.raises(OSError, match=f"127.0.0.1:{port}.*in use"):
            bind_endpoint("127.0.0.1", port)
    finally:
        first.close()
    if socket.has_ipv6:
        try:
            v6 = bind_endpoint("[::1]", 0)
        except OSError:
            pytest.skip("no IPv6 loopback here")
        assert v6.family == socket.AF_INET6
        v6.close()


def test_keep_alive_serves_several_requests_on_one_connection(start_exporter):
    exporter = start_exporter(make_config())
    conn = http.client.HTTPConnection("127.0.0.1", exporter.port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        first = conn.getresponse()
        assert first.status == 200 and b"rctmon_process_up" in first.read()
        sock = conn.sock
        for path, status in (("/", 200), ("/nothing", 404), ("/metrics", 200)):
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            assert response.status == status and conn.sock is sock, path
    finally:
        conn.close()
