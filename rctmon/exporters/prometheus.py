"""The prometheus child: a cache of the latest readings and health, exposed by a custom collector over HTTP.

The supervisor binds the endpoint's socket and hands it to this child (its registration declares `listen`). One
event loop, the child's (rctmon.child), applies the supervisor's messages (readings, inventory, device status,
health) to the state and serves the endpoint (rctmon.exporters.httpserver) as one of its tasks; the serving task
ending ends the child. The endpoint answers only once the supervisor's first Health has arrived, so a restarted
child never shows a restart count of 0. Before a heartbeat the child makes sure the endpoint works: a scrape it
answered lately shows it, otherwise it asks the endpoint itself over the real socket (TLS and basic auth included),
and sends no heartbeat when that fails, so an endpoint that stopped answering gets the child restarted.
prometheus_client's multiprocess mode is not used: it cannot carry custom collectors or info metrics, and this one
process owns the registry.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Union
from collections.abc import Awaitable, Iterable, Iterator, Mapping, Sequence

from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                    InfoMetricFamily, Metric)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from rctmon import catalog
from rctmon.catalog import Kind, Sample, Series, Tier
from rctmon.child import ChildContext, Job
from rctmon.config import Config, Intervals
from rctmon.exporters import http
from rctmon.exporters import prometheus_events
from rctmon.exporters.httpserver import EndpointStats
from rctmon.health_metrics import SUPERVISOR, HealthMetric
from rctmon.inventory import Inventory
from rctmon.messages import DeviceStatus, Health, InverterEvents, ReadingBatch, Stats, StatValue, Value
from rctmon.proc import resource_usage
from rctmon.registry import HEALTH_METRICS

log = logging.getLogger("rctmon.prometheus")

STALE_AFTER_INTERVALS = 3  # a value not refreshed for this many intervals of its tier is no longer exposed
#: Seconds a new incarnation waits for the supervisor's first Health before it serves anyway. The supervisor sends
#: it together with the child's start, so only a supervisor in trouble makes it wait this long.
HEALTH_WAIT = 5.0
PROBE_TIMEOUT = 2.0  # seconds the endpoint gets to answer a request of the child's own
#: Seconds without evidence that the endpoint works after which the child asks it itself before a heartbeat. A
#: scrape answered is evidence (so a scraped endpoint is rarely asked), a request of its own answered is too. Below
#: the supervisor's silence limit, so that an endpoint that stopped answering has its child restarted within
#: PROBE_INTERVAL + 20 s.
PROBE_INTERVAL = 15.0
START_PROBE_TIMEOUT = 5.0  # how long the first request, which Started waits for, is tried again


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
    events: prometheus_events.EventCounts | None = None


@dataclass
class State:
    """The latest of everything the supervisor sent; the message loop writes it, HTTP threads read snapshots."""

    values: dict[int, Cached] = field(default_factory=dict)
    health: Health | None = None
    inventory: Inventory | None = None
    device_up: bool = False
    events: prometheus_events.EventTally = field(default_factory=prometheus_events.EventTally)
    generation: int = 0  # bumped on every change, so the exposition cache knows when to render again
    #: Monotonic time of the last complete rendering, which only a request to /metrics asks for: evidence that the
    #: endpoint accepted, read and answered a scrape.
    rendered_at: float = 0.0
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
            self.device_up = bool(health.stats.get(SUPERVISOR, {}).get("device_up"))
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

    def add_events(self, message: InverterEvents) -> None:
        self.events.add(message)
        with self.lock:
            self.generation += 1

    def current_generation(self) -> int:
        return self.generation

    def snapshot(self) -> Snapshot:
        with self.lock:
            return Snapshot(dict(self.values), self.health, self.inventory, self.device_up, self.events.snapshot())


# --- health metrics -------------------------------------------------------------------------------------------------


def health_stats(snap: Snapshot, process: str, own_rss_bytes: int, own_cpu_seconds: float,
                 own_stats: Stats | None = None) -> dict[str, Stats]:
    """Return the figures the health metrics show: the supervisor's, updated with what this process knows better.

    This process answers the scrape, so it is up, and its own memory, CPU and figures (`own_stats`: the endpoint's
    counters) are fresher than the supervisor's copy; DeviceStatus and Inventory messages arrive here before the
    next Health does.
    """
    stats: dict[str, Stats] = dict(snap.health.stats) if snap.health is not None else {}
    if own_stats is not None and process in stats:  # in Health: the supervisor runs this process as `process`
        stats[process] = own_stats
    supervisor: dict[str, StatValue] = dict(stats.get(SUPERVISOR, {}))
    for key, value in (("up", 1), ("resident_memory_bytes", own_rss_bytes), ("cpu_seconds", own_cpu_seconds)):
        supervisor[key] = {**_mapping(supervisor.get(key)), process: value}
    supervisor["device_up"] = int(snap.device_up)
    supervisor["inventory_complete"] = int(snap.inventory is not None and snap.inventory.complete)
    stats[SUPERVISOR] = supervisor
    return stats


def _mapping(value: object) -> Mapping[str, float]:
    return value if isinstance(value, Mapping) else {}


def _number(value: object) -> float:
    return float(value) if isinstance(value, (int, float)) else 0.0  # bools are ints


Samples = list[tuple[tuple[str, ...], float]]


def samples(metric: HealthMetric, value: object) -> Samples:
    """Return the samples of a gauge or counter from its stat value; known label values are present at 0."""
    if not metric.labels:
        return [((), _number(value))]
    counts: dict[tuple[str, ...], float] = dict.fromkeys(metric.known, 0.0)
    if isinstance(value, Mapping):
        for key, count in value.items():
            labels = tuple(str(v) for v in key) if isinstance(key, tuple) else (str(key),)
            if len(labels) == len(metric.labels):
                counts[labels] = _number(count)
    return sorted(counts.items())


def _histogram(metric: HealthMetric, stats: Stats) -> Metric:
    raw = stats.get(f"{metric.key}_buckets")
    bounds = metric.buckets
    counts = [int(c) for c in raw][:len(bounds)] if isinstance(raw, (tuple, list)) else []
    counts += [counts[-1] if counts else 0] * (len(bounds) - len(counts))  # cumulative: pad with the last
    buckets = [(f"{bound:g}", float(count)) for bound, count in zip(bounds, counts)]
    # +Inf is the total count; never below the last bound's count, or Prometheus rejects the histogram
    buckets.append(("+Inf", max([_number(stats.get(f"{metric.key}_count"))] + [float(c) for c in counts])))
    family = HistogramMetricFamily(metric.name, metric.help, unit=unit_of(metric.name))
    family.add_metric([], buckets, _number(stats.get(f"{metric.key}_sum")))
    return family


NumericFamily = Union[GaugeMetricFamily, CounterMetricFamily]
_FAMILY_TYPES: dict[str, Callable[..., NumericFamily]] = {"gauge": GaugeMetricFamily, "counter": CounterMetricFamily}


def health_families(stats: Mapping[str, Stats], metrics: Sequence[HealthMetric] = HEALTH_METRICS) -> Iterator[Metric]:
    """Yield one family per health metric whose source process runs; zeros until that process has reported.

    A child's metrics are exposed only while the supervisor runs it (its key is in `stats` from the first Health),
    so that a disabled exporter never looks like a broken one.

    Example lines:
        rctmon_process_restarts_total{process="collector"} 0.0
        rctmon_decode_errors_total{kind="crc"} 3.0
    """
    for metric in metrics:
        source = stats.get(metric.source)
        if source is None:
            continue
        if metric.type == "histogram":
            yield _histogram(metric, source)
            continue
        family = _FAMILY_TYPES[metric.type](metric.name, metric.help, labels=metric.labels,
                                            unit=unit_of(metric.name))
        for labels, value in samples(metric, source.get(metric.key)):
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

    def __init__(self, intervals: Intervals) -> None:
        self._limits: dict[Tier, float] = {
            tier: STALE_AFTER_INTERVALS * float(getattr(intervals, tier.value)) for tier in Tier}
        self._now_ns = time.time_ns()
        self._now = time.monotonic()

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

    def __init__(self, state: State, config: Config, process: str = "prometheus",
                 own_stats: Callable[[], Stats] | None = None) -> None:
        self._state = state
        self._config = config
        self._process = process
        self._own_stats = own_stats
        self._helps = {family.name: family_help(family, config.device.intervals) for family in FAMILIES}
        self._memo: Memo = {}  # used by one rendering at a time (ExpositionCache renders under a lock)
        self._events = prometheus_events.EventFamilies(config.device.intervals.medium)

    def collect(self) -> Iterator[Metric]:
        snap = self._state.snapshot()
        own = self._own_stats() if self._own_stats is not None else None
        yield from health_families(health_stats(snap, self._process, *resource_usage(), own))
        inverter = inverter_name(snap.inventory)
        if self._config.prometheus.exposition and inverter:
            freshness = Freshness(self._config.device.intervals)
            yield from inverter_families(snap.values, inverter, self._helps, freshness, self._memo)
            if snap.events is not None:
                yield from prometheus_events.families(self._events, snap.events, snap.values, freshness, inverter)
        self._state.rendered_at = time.monotonic()


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


def build_registry(state: State, config: Config, process: str = "prometheus",
                   own_stats: Callable[[], Stats] | None = None) -> CollectorRegistry:
    """Return a registry of its own (not prometheus_client's global one) holding only rctmon's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RctmonCollector(state, config, process, own_stats))
    return registry


def endpoint_stats(stats: EndpointStats) -> Stats:
    """Return the endpoint's counters by the stat keys of the prometheus child's health metrics (registry.py)."""
    return {
        "http_accepted": stats.accepted,
        "http_answered": stats.answered,
        "http_refused": {str(status): count for status, count in stats.refused.items()},
        "http_shed": stats.shed,
        "http_timed_out": dict(stats.timed_out),
        "http_tls_failed": stats.tls_failed,
    }


# --- the process ----------------------------------------------------------------------------------------------------


class PrometheusExporter(Job):
    """The prometheus child's job: keep the state current, serve it, and check the endpoint before a heartbeat."""

    def __init__(self, context: ChildContext) -> None:
        super().__init__(context)
        self.state = State()
        self._health_arrived = asyncio.Event()
        self._handlers: Mapping[type, Callable[[object], None]] = {
            ReadingBatch: self.state.add_batch,  # type: ignore[dict-item]
            Health: self._on_health,  # type: ignore[dict-item]
            Inventory: self.state.set_inventory,  # type: ignore[dict-item]
            DeviceStatus: self.state.set_device_status,  # type: ignore[dict-item]
            InverterEvents: self.state.add_events,  # type: ignore[dict-item]
        }
        self.endpoint: http.Endpoint | None = None
        self.serving: asyncio.Future[None] | None = None
        self._answering = True
        self._works_at = 0.0  # monotonic time of the latest evidence that the endpoint answers

    def receive(self, messages: Sequence[object]) -> None:
        for message in messages:
            handler = self._handlers.get(type(message))
            if handler is not None:
                handler(message)

    def _on_health(self, health: Health) -> None:
        self.state.set_health(health)
        self._health_arrived.set()

    async def start(self) -> Sequence[Awaitable[object]]:
        """Serve once the supervisor's Health is here; return the serving task, whose end ends the child."""
        config, sock = self.context.config, self.context.listen_socket
        assert sock is not None, "the registration declares `listen`: the supervisor hands over the socket"
        try:
            await asyncio.wait_for(self._health_arrived.wait(), HEALTH_WAIT)
        except asyncio.TimeoutError:
            log.warning("no health from the supervisor within %g s; serving without it", HEALTH_WAIT)
        cache = http.ExpositionCache(build_registry(self.state, config, self.context.name, self.stats),
                                     self.state.current_generation, encoders=FamilyEncoder().choose)
        tls = http.tls_context(config.prometheus)
        self.endpoint = http.Endpoint(sock, http.MetricsApp(cache, http.basic_auth(config.prometheus)), tls)
        self.serving = asyncio.ensure_future(self.endpoint.serve())
        deadline = time.monotonic() + START_PROBE_TIMEOUT
        while not await self.endpoint.probe(PROBE_TIMEOUT):  # Started means: the endpoint answers
            if time.monotonic() >= deadline or self.serving.done():
                log.warning("the endpoint did not answer a request of its own; serving anyway")
                break
            await asyncio.sleep(0.05)
        log.info("serving metrics on %s://%s (exposition %s)", "https" if tls else "http", _address(sock),
                 "on" if config.prometheus.exposition else "off")
        return (self.serving,)

    def stats(self) -> Stats:
        return endpoint_stats(self.endpoint.stats if self.endpoint is not None else EndpointStats())

    async def check(self) -> bool:
        """Return whether the endpoint answers: it answered a scrape or a request of its own lately, or does now.

        The evidence saves the request: a scraped endpoint is rarely asked, an unscraped one every PROBE_INTERVAL.
        """
        now = time.monotonic()
        self._works_at = max(self._works_at, self.state.rendered_at)
        answering = now - self._works_at < PROBE_INTERVAL
        if not answering and self.endpoint is not None:
            answering = await self.endpoint.probe(PROBE_TIMEOUT)
            if answering:
                self._works_at = now
        if answering != self._answering:
            if answering:
                log.info("the endpoint answers again")
            else:
                log.error("the endpoint did not answer a request of its own within %g s; no heartbeat until it "
                          "does (the supervisor restarts this child)", PROBE_TIMEOUT)
        self._answering = answering
        return answering


def _address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}"
