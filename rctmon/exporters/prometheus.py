"""The prometheus child: a cache of the latest readings and health, exposed by a custom collector over HTTP.

The supervisor binds the endpoint's socket and forks this child, which calls `run`. The main thread handles the
supervisor's messages (readings, inventory, device status, health); the HTTP thread (with TLS, a thread per
connection) renders the exposition from the same state under a lock. prometheus_client's multiprocess mode is not
used: it cannot carry custom collectors or info metrics, and this one process owns the registry.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Union
from collections.abc import Iterable, Iterator, Mapping, Sequence

from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                    InfoMetricFamily, Metric)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from rctmon import __version__, catalog
from rctmon.catalog import Kind, Sample, Series, Tier
from rctmon.channel import Channel, ChannelClosed
from rctmon.config import Config, Intervals
from rctmon.exporters import http
from rctmon.health_metrics import HEALTH_METRICS, HealthMetric
from rctmon.inventory import Inventory
from rctmon.messages import (RESPONSE_BUCKETS, CollectorStats, DeviceStatus, Health, Heartbeat, InfluxStats,
                             MqttStats, ProcessHealth, ReadingBatch, Started, Stop, Value)
from rctmon.proc import HEARTBEAT_INTERVAL, Every, resource_usage

log = logging.getLogger("rctmon.prometheus")

PROCESS = "prometheus"
STALE_AFTER_INTERVALS = 3  # a value not refreshed for this many intervals of its tier is no longer exposed


@functools.cache
def unit_of(name: str) -> str:
    """Return the base unit a metric name ends with ("" for none), for the `# UNIT` line of OpenMetrics."""
    unit = catalog.unit_of(name)
    return unit.word if unit else ""


# --- state shared by the message loop and the HTTP threads ----------------------------------------------------------


@dataclass(eq=False)
class Cached:
    """The latest reading of one object: what each of its series makes of it (catalog.Series.samples: base units,
    implausible values left out), with when it was taken and when it arrived here."""

    samples: dict[Series, list[Sample]]
    taken_ns: int  # epoch ns when the inverter's answer arrived at the collector
    arrived: float  # monotonic seconds: guards against the wall clock jumping back


@dataclass
class Snapshot:
    """A consistent copy of the state, taken under the lock, rendered without it."""

    values: dict[int, Cached]
    health: Health | None
    inventory: Inventory | None
    device_up: bool


@dataclass
class State:
    """The latest of everything the supervisor sent; the message loop writes it, HTTP threads read snapshots."""

    values: dict[int, Cached] = field(default_factory=dict)
    health: Health | None = None
    inventory: Inventory | None = None
    device_up: bool = False
    generation: int = 0  # bumped on every change, so the exposition cache knows when to render again
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_batch(self, batch: ReadingBatch) -> None:
        """Keep the newest reading per known object; ignore ids the catalog does not declare."""
        arrived = time.monotonic()
        with self.lock:
            for object_id, raw, taken_ns in batch.readings:
                series = catalog.OBJECTS.get(object_id)
                if series is None:
                    continue
                old = self.values.get(object_id)
                if old is not None and old.taken_ns > taken_ns:
                    continue  # a replayed older batch must not overwrite a newer value
                self.values[object_id] = Cached({s: s.samples(raw) for s in series}, taken_ns, arrived)
            self.generation += 1

    def set_health(self, health: Health) -> None:
        with self.lock:
            self.health = health
            self.device_up = health.device_up
            if health.inventory is not None:
                self.inventory = health.inventory
            self.generation += 1

    def set_inventory(self, inventory: Inventory) -> None:
        with self.lock:
            self.inventory = inventory
            self.generation += 1

    def set_device_status(self, status: DeviceStatus) -> None:
        with self.lock:
            self.device_up = status.up
            self.generation += 1

    def current_generation(self) -> int:
        return self.generation

    def snapshot(self) -> Snapshot:
        with self.lock:
            return Snapshot(dict(self.values), self.health, self.inventory, self.device_up)


# --- health metrics -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HealthView:
    """What the health metrics are computed from, with defaults for children that have not reported yet."""

    processes: Mapping[str, ProcessHealth]
    collector: CollectorStats
    influxdb: InfluxStats
    mqtt: MqttStats
    device_up: bool
    inventory: Inventory | None

    @classmethod
    def of(cls, snap: Snapshot, own_rss_bytes: int, own_cpu_seconds: float) -> HealthView:
        health = snap.health
        processes = dict(health.processes) if health else {}
        supervised = processes.get(PROCESS)
        # This process answers the scrape, so it is up; its resource figures are fresher than the supervisor's.
        processes[PROCESS] = ProcessHealth(up=True, restarts=supervised.restarts if supervised else 0,
                                           readings_dropped=supervised.readings_dropped if supervised else 0,
                                           rss_bytes=own_rss_bytes, cpu_seconds=own_cpu_seconds)
        return cls(processes=processes,
                   collector=health.collector if health and health.collector else CollectorStats(),
                   influxdb=health.influxdb if health and health.influxdb else InfluxStats(),
                   mqtt=health.mqtt if health and health.mqtt else MqttStats(),
                   device_up=snap.device_up, inventory=snap.inventory)


Samples = list[tuple[tuple[str, ...], float]]


def _one(get: Callable[[HealthView], float]) -> Callable[[HealthView], Samples]:
    return lambda v: [((), float(get(v)))]


def _by_kind(get: Callable[[HealthView], Mapping[str, int]]) -> Callable[[HealthView], Samples]:
    return lambda v: [((kind,), float(count)) for kind, count in sorted(get(v).items())]


def _per_process(get: Callable[[ProcessHealth], float]) -> Callable[[HealthView], Samples]:
    return lambda v: [((name,), float(get(p))) for name, p in sorted(v.processes.items())]


def _inventory_complete(v: HealthView) -> bool:
    return v.collector.inventory_complete or bool(v.inventory and v.inventory.complete)


#: How each health metric of rctmon.health_metrics gets its samples; checked against that table at import.
HEALTH_SAMPLES: dict[str, Callable[[HealthView], Samples]] = {
    "rctmon_build_info": lambda v: [((__version__,), 1.0)],
    "rctmon_device_up": _one(lambda v: v.device_up),
    "rctmon_device_connects_total": _one(lambda v: v.collector.connects),
    "rctmon_frames_sent_total": _one(lambda v: v.collector.frames_sent),
    "rctmon_frames_received_total": _one(lambda v: v.collector.frames_received),
    "rctmon_bytes_sent_total": _one(lambda v: v.collector.bytes_sent),
    "rctmon_bytes_received_total": _one(lambda v: v.collector.bytes_received),
    "rctmon_decode_errors_total": _by_kind(lambda v: v.collector.decode_errors),
    "rctmon_request_timeouts_total": _one(lambda v: v.collector.request_timeouts),
    "rctmon_inventory_complete": _one(_inventory_complete),
    "rctmon_readings_total": _one(lambda v: v.collector.readings),
    "rctmon_last_reading_timestamp_seconds": _one(lambda v: v.collector.last_reading_ns / 1e9),
    "rctmon_process_up": _per_process(lambda p: p.up),
    "rctmon_process_restarts_total": _per_process(lambda p: p.restarts),
    "rctmon_process_resident_memory_bytes": _per_process(lambda p: p.rss_bytes),
    "rctmon_process_cpu_seconds_total": _per_process(lambda p: p.cpu_seconds),
    "rctmon_readings_dropped_total": _per_process(lambda p: p.readings_dropped),
    "rctmon_influxdb_points_written_total": _one(lambda v: v.influxdb.points_written),
    "rctmon_influxdb_write_errors_total": _by_kind(lambda v: v.influxdb.write_errors),
    "rctmon_influxdb_spool_points": _one(lambda v: v.influxdb.spool_points),
    "rctmon_influxdb_points_dropped_total": _one(lambda v: v.influxdb.points_dropped),
    "rctmon_influxdb_last_write_timestamp_seconds": _one(lambda v: v.influxdb.last_write_timestamp),
    "rctmon_mqtt_connected": _one(lambda v: v.mqtt.connected),
    "rctmon_mqtt_messages_published_total": _one(lambda v: v.mqtt.messages_published),
    "rctmon_mqtt_publish_errors_total": _one(lambda v: v.mqtt.publish_errors),
}


def _response_histogram(metric: HealthMetric, v: HealthView) -> Metric:
    stats = v.collector
    counts = list(stats.response_buckets)[:len(RESPONSE_BUCKETS)]
    counts += [counts[-1] if counts else 0] * (len(RESPONSE_BUCKETS) - len(counts))  # cumulative: pad with the last
    buckets = [(f"{bound:g}", float(count)) for bound, count in zip(RESPONSE_BUCKETS, counts)]
    # +Inf is the total count; never below the last bound's count, or Prometheus rejects the histogram
    buckets.append(("+Inf", float(max([stats.response_count] + counts))))
    family = HistogramMetricFamily(metric.name, metric.help, unit=unit_of(metric.name))
    family.add_metric([], buckets, stats.response_sum)
    return family


HEALTH_HISTOGRAMS: dict[str, Callable[[HealthMetric, HealthView], Metric]] = {
    "rctmon_response_seconds": _response_histogram,
}

NumericFamily = Union[GaugeMetricFamily, CounterMetricFamily]
_FAMILY_TYPES: dict[str, Callable[..., NumericFamily]] = {"gauge": GaugeMetricFamily, "counter": CounterMetricFamily}
_OPTIONAL_SOURCES: dict[str, Callable[[Config], bool]] = {
    "influxdb": lambda c: c.influxdb.enable,
    "mqtt": lambda c: c.mqtt.enable,
}


def _check_health_table() -> None:
    """Fail at import, not at scrape time, when the health table and the code that fills it disagree."""
    declared = {m.name for m in HEALTH_METRICS}
    filled = set(HEALTH_SAMPLES) | set(HEALTH_HISTOGRAMS)
    if declared != filled:
        raise ValueError(f"health metrics without samples: {sorted(declared - filled)}; "
                         f"samples without a declared metric: {sorted(filled - declared)}")
    for metric in HEALTH_METRICS:
        if metric.type not in _FAMILY_TYPES and metric.name not in HEALTH_HISTOGRAMS:
            raise ValueError(f"{metric.name}: type {metric.type} has no family here")


_check_health_table()


def exposed_health_metrics(config: Config) -> tuple[HealthMetric, ...]:
    """Return the health metrics this configuration exposes: an optional exporter's only while it is enabled."""
    return tuple(m for m in HEALTH_METRICS if m.source not in _OPTIONAL_SOURCES or _OPTIONAL_SOURCES[m.source](config))


def health_families(view: HealthView, metrics: Sequence[HealthMetric]) -> Iterator[Metric]:
    """Yield one family per health metric, each present even before its source has reported (with zeros)."""
    for metric in metrics:
        histogram = HEALTH_HISTOGRAMS.get(metric.name)
        if histogram is not None:
            yield histogram(metric, view)
            continue
        family = _FAMILY_TYPES[metric.type](metric.name, metric.help, labels=metric.labels,
                                            unit=unit_of(metric.name))
        for labels, value in HEALTH_SAMPLES[metric.name](view):
            family.add_metric(labels, value)
        yield family


# --- inverter values ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """One catalog metric family as exposed: its series in catalog order and its label names."""

    name: str
    kind: Kind
    help: str
    tiers: tuple[Tier, ...]
    series: tuple[Series, ...]
    label_names: tuple[str, ...]  # `inverter` first, then the series' own labels (for INFO: axis labels only)


def _families() -> tuple[Family, ...]:
    families = []
    for name, rows in catalog.metric_families().items():
        series = tuple(s for s in catalog.SERIES if s.metric == name)
        tiers = tuple(sorted({r.tier for r in rows}, key=list(Tier).index))
        label_names = ("inverter",) + series[0].label_names
        families.append(Family(name, rows[0].kind, rows[0].help, tiers, series, label_names))
    return tuple(families)


FAMILIES: tuple[Family, ...] = _families()


def _seconds(value: float) -> str:
    return f"{value:g}"


def family_help(family: Family, intervals: Intervals) -> str:
    """Return the catalog's HELP text with the note that the values are cached, and how often they are read."""
    every = " or ".join(f"{_seconds(getattr(intervals, t.value))} s" for t in family.tiers)
    return f"{family.help} (cached; read every {every})"


def _info_text(value: Value) -> str:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    return str(value)


class Freshness:
    """Whether a cached value was refreshed within three intervals of its tier."""

    def __init__(self, intervals: Intervals, now_ns: int | None = None, now: float | None = None) -> None:
        self._limits: dict[Tier, float] = {
            tier: STALE_AFTER_INTERVALS * float(getattr(intervals, tier.value)) for tier in Tier}
        self._now_ns = time.time_ns() if now_ns is None else now_ns
        self._now = time.monotonic() if now is None else now

    def fresh(self, cached: Cached, tier: Tier) -> bool:
        limit = self._limits[tier]
        # Both clocks: the reading's own time (a replayed backlog is old), and when it arrived here (the wall
        # clock may have jumped back, which would keep a dead value alive).
        return self._now_ns - cached.taken_ns <= limit * 1e9 and self._now - cached.arrived <= limit


def inverter_name(inventory: Inventory | None) -> str:
    """Return the `inverter` label value: the inverter's name, or its serial when it has none."""
    if inventory is None:
        return ""
    return inventory.name or inventory.serial


#: A family as last built, by name: what it was built from (the inverter, the help text and each fresh Cached) and
#: the family. A module's 24 cells change every few minutes, but the exposition is rendered on every scrape.
Memo = dict[str, tuple[tuple[object, ...], Metric | None]]


def inverter_families(values: Mapping[int, Cached], inverter: str, helps: Mapping[str, str],
                      freshness: Freshness, memo: Memo | None = None) -> Iterator[Metric]:
    """Yield every catalog family that has a fresh value; info rows become one `_info` series per axis index.

    With `memo`, a family whose values are the same Cached objects as last time is not built again.

    Example lines:
        rctmon_generator_power_watts{inverter="Garage",generator="a"} 1234.5
        rctmon_battery_cell_voltage_volts{inverter="Garage",module="0",cell="5"} 3.318
        rctmon_battery_module_info{inverter="Garage",module="0",serial="..."} 1.0
    """
    for family in FAMILIES:
        fresh = [(s, values[s.object_id]) for s in family.series
                 if s.object_id in values and freshness.fresh(values[s.object_id], s.tier)]
        if not fresh:
            continue
        # Cached compares by identity: a new reading of an object is a new Cached.
        key = (inverter, helps[family.name], *(cached for _, cached in fresh))
        remembered = memo.get(family.name) if memo is not None else None
        if remembered is not None and remembered[0] == key:
            metric: Metric | None = remembered[1]
        else:
            metric = _family(family, helps[family.name], inverter, fresh)
            if memo is not None:
                memo[family.name] = (key, metric)
        if metric is not None:
            yield metric


def _family(family: Family, help_text: str, inverter: str, fresh: Sequence[tuple[Series, Cached]]) -> Metric | None:
    if family.kind is Kind.INFO:
        return _info_family(family, help_text, inverter, fresh)
    metric = _NUMERIC_FAMILIES[family.kind](family.name, help_text, labels=family.label_names,
                                            unit=unit_of(family.name))
    for series, cached in fresh:
        for labels, value in cached.samples[series]:
            if not isinstance(value, str):  # strings belong in _info metrics only
                metric.add_metric((inverter,) + tuple(v for _, v in labels), float(value))
    return metric if metric.samples else None


_NUMERIC_FAMILIES: dict[Kind, Callable[..., NumericFamily]] = {
    Kind.GAUGE: GaugeMetricFamily,
    Kind.COUNTER: CounterMetricFamily,
}


def _info_family(family: Family, help_text: str, inverter: str, fresh: Iterable[tuple[Series, Cached]]) -> Metric:
    grouped: dict[tuple[str, ...], dict[str, str]] = {}
    for series, cached in fresh:
        for labels, value in cached.samples[series]:
            grouped.setdefault((inverter,) + tuple(v for _, v in labels), {})[series.row.field] = _info_text(value)
    # InfoMetricFamily appends `_info` to the samples itself.
    metric = InfoMetricFamily(family.name[:-len("_info")], help_text, labels=family.label_names)
    for label_values, info in grouped.items():
        metric.add_metric(label_values, info)
    return metric


class RctmonCollector:
    """Expose rctmon's health always and the cached inverter values when `prometheus.exposition` is on.

    Example lines:
        rctmon_process_up{process="collector"} 1.0
        rctmon_generator_power_watts{generator="a",inverter="Garage"} 1234.5
    """

    def __init__(self, state: State, config: Config) -> None:
        self._state = state
        self._config = config
        self._health_metrics = exposed_health_metrics(config)
        self._helps = {family.name: family_help(family, config.device.intervals) for family in FAMILIES}
        self._memo: Memo = {}  # used by one rendering at a time (ExpositionCache renders under a lock)

    def collect(self) -> Iterator[Metric]:
        snap = self._state.snapshot()
        yield from health_families(HealthView.of(snap, *resource_usage()), self._health_metrics)
        inverter = inverter_name(snap.inventory)
        if self._config.prometheus.exposition and inverter:
            freshness = Freshness(self._config.device.intervals)
            yield from inverter_families(snap.values, inverter, self._helps, freshness, self._memo)


class _OneFamily:
    """A collector of one family, to encode it alone."""

    def __init__(self, metric: Metric) -> None:
        self._metric = metric

    def collect(self) -> Iterator[Metric]:
        yield self._metric


class FamilyEncoder:
    """Encode the exposition family by family, reusing the text of a family that was not built again.

    prometheus_client formats every sample on every rendering, and a rendering happens on nearly every scrape (the
    fast tier changes something every 10 s). A 7-module battery's cells are some 600 samples that change every few
    minutes: with `inverter_families` handing out the very same family object while its readings are the same, this
    encodes them once per reading rather than once per scrape. Use `choose` as ExpositionCache's `encoders`.
    """

    _EOF = b"# EOF\n"  # the end of an OpenMetrics exposition; once, after the last family

    def __init__(self) -> None:
        self._texts: dict[tuple[str, str], tuple[Metric, bytes]] = {}

    def choose(self, accept: str) -> tuple[Callable[[Collector], bytes], str]:
        encoder, content_type = choose_encoder(accept)
        return functools.partial(self._encode, encoder, content_type), content_type

    def _encode(self, encoder: Callable[[Collector], bytes], content_type: str, registry: Collector) -> bytes:
        parts = []
        seen = set()
        for metric in registry.collect():
            key = (content_type, metric.name)
            seen.add(key)
            known = self._texts.get(key)
            if known is None or known[0] is not metric:
                text = encoder(_OneFamily(metric))
                known = self._texts[key] = (metric, text.removesuffix(self._EOF))
            parts.append(known[1])
        for key in [k for k in self._texts if k[0] == content_type and k not in seen]:
            del self._texts[key]  # a family no longer exposed must not keep its readings alive
        openmetrics = content_type.startswith("application/openmetrics-text")
        return b"".join(parts) + (self._EOF if openmetrics else b"")


def build_registry(state: State, config: Config) -> CollectorRegistry:
    """Return a registry of its own (not prometheus_client's global one) holding only rctmon's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RctmonCollector(state, config))
    return registry


# --- the process ----------------------------------------------------------------------------------------------------


def _heartbeat(channel: Channel) -> None:
    rss, cpu = resource_usage()
    channel.send(Heartbeat(process=PROCESS, pid=os.getpid(), rss_bytes=rss, cpu_seconds=cpu))


def _handlers(state: State) -> dict[type, Callable[[object], None]]:
    return {
        ReadingBatch: state.add_batch,  # type: ignore[dict-item]
        Health: state.set_health,  # type: ignore[dict-item]
        Inventory: state.set_inventory,  # type: ignore[dict-item]
        DeviceStatus: state.set_device_status,  # type: ignore[dict-item]
    }


def serve_messages(channel: Channel, state: State) -> None:
    """Apply the supervisor's messages to the state and send heartbeats, until Stop or the channel closes."""
    handlers = _handlers(state)
    heartbeat = Every(HEARTBEAT_INTERVAL)
    while True:
        if heartbeat.due():
            _heartbeat(channel)
        try:
            messages = channel.wait(heartbeat.remaining())
        except ChannelClosed:
            log.info("the supervisor closed the channel; stopping")
            return
        for message in messages:
            if isinstance(message, Stop):
                return
            handler = handlers.get(type(message))
            if handler is None:
                log.debug("ignoring %s", type(message).__name__)
                continue
            handler(message)


def run(config: Config, channel: Channel, listen_socket: socket.socket) -> None:
    """Serve the endpoint on `listen_socket` and keep its cache current from `channel` until told to stop."""
    state = State()
    cache = http.ExpositionCache(build_registry(state, config), state.current_generation,
                                 encoders=FamilyEncoder().choose)
    tls = http.tls_context(config.prometheus)
    endpoint = http.Endpoint(listen_socket, http.MetricsApp(cache, http.basic_auth(config.prometheus)), tls)
    server = http.EndpointThread(endpoint)  # ends this process if the endpoint can no longer accept
    server.start()
    try:
        if not server.probe():
            log.warning("the endpoint did not answer a request of its own; serving anyway")
        log.info("serving metrics on %s://%s (exposition %s)", "https" if tls else "http",
                 _address(listen_socket), "on" if config.prometheus.exposition else "off")
        channel.send(Started(PROCESS))
        serve_messages(channel, state)
    finally:
        server.stop()
        listen_socket.close()


def _address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}"
