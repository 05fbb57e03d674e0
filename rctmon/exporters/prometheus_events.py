"""The inverter's events and fault words on /metrics: what the prometheus child adds to the catalog's families.

- `rctmon_inverter_events_total{inverter,type}`: new events per type, every type rctclient documents at 0 from the
  start, a type it does not know (`UNKNOWN_<hex>`, one byte of code: at most 256) once one is seen. *New* is what
  the collector hands on as new (rctmon/collector/events.py): an event that appeared in the inverter's table after
  the collector's first read of it, so `increase()` over a window is the events that happened in it. The first
  read after a start is the table's past and counts nothing, so a restart never counts old events again: the
  counter starts at 0 with the process, as Prometheus expects of a counter.
- `rctmon_inverter_last_event_timestamp_seconds{inverter,type}`: the start of the newest event of each type the
  table holds (the first read included), for the types that have one.
- `rctmon_inverter_fault_active{inverter,fault}`: 1 for each fault bit set, from the fault words the catalog reads
  (`fault[0..3].flt`), named by rctmon/faults.py (`bit_<n>` for a bit rctclient does not document); a fault that
  clears leaves the page (Prometheus marks the series stale). Present only while set, not 0 for the 127 documented
  faults that are not: those would be 127 series per inverter that are nearly always 0 and 14 % more bytes on every
  scrape (measured: 99.7 kB against 85.5 kB), for what `rctmon_inverter_fault_flags` (the raw words, 0 when all is
  well) already says. Fresh like the words themselves: a word not read for three medium intervals takes its faults
  off the page.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Protocol
from collections.abc import Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from rctmon import catalog, faults
from rctmon.catalog import Sample, Series, Tier
from rctmon.history.events import EVENT_TYPES
from rctmon.messages import InverterEvents

EVENTS_METRIC = "rctmon_inverter_events"  # counter: the exposition adds `_total`
LAST_EVENT_METRIC = "rctmon_inverter_last_event_timestamp_seconds"
FAULT_METRIC = "rctmon_inverter_fault_active"
#: The families this module exposes: (name as exposed, type, labels, help, the tier their values are read in).
FAMILIES: tuple[tuple[str, str, tuple[str, ...], str, str], ...] = (
    (EVENTS_METRIC + "_total", "counter", ("inverter", "type"),
     "Events that appeared in the inverter's event table since rctmon started, per type (the table's past, read "
     "at the start, counts nothing)", "medium"),
    (LAST_EVENT_METRIC, "gauge", ("inverter", "type"),
     "Start of the newest event of each type in the inverter's event table", "medium"),
    (FAULT_METRIC, "gauge", ("inverter", "fault"),
     "1 while the inverter reports the fault (a bit of fault[0..3].flt); absent while it does not",
     "medium"),
)
KNOWN_TYPES: tuple[str, ...] = tuple(t.name for t in EVENT_TYPES)
#: Keys of counted events remembered, so that an event handed on twice is counted once.
COUNTED_KEYS = 8192
#: The series of the fault words, in word order.
FAULT_WORDS: tuple[Series, ...] = tuple(catalog.SERIES_BY_NAME[name] for name in faults.WORD_OBJECTS)
_HELP = {name: help_ for name, _, _, help_, _ in FAMILIES}


@dataclass(frozen=True)
class EventCounts:
    """A copy of the tally, taken under its lock: what one rendering shows."""

    version: int
    counts: Mapping[str, int]
    latest: Mapping[str, int]


@dataclass
class EventTally:
    """New events counted per type and the newest start per type; written by the loop, read by renderings."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KNOWN_TYPES, 0))
    latest: dict[str, int] = field(default_factory=dict)
    version: int = 0
    _counted: OrderedDict[tuple[int, int, int, int, int], None] = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, message: InverterEvents) -> None:
        with self.lock:
            for event in message.events:
                if self.latest.get(event.type, -1) < event.start:
                    self.latest[event.type] = event.start
                key = event.raw.key
                if not message.new or key in self._counted:
                    continue
                self._counted[key] = None
                if len(self._counted) > COUNTED_KEYS:
                    self._counted.popitem(last=False)
                self.counts[event.type] = self.counts.get(event.type, 0) + 1
            self.version += 1

    def snapshot(self) -> EventCounts:
        with self.lock:
            return EventCounts(self.version, dict(self.counts), dict(self.latest))


class EventFamilies:
    """Build the event and fault families; hand out the same objects while nothing changed (FamilyEncoder)."""

    def __init__(self, medium_interval: float) -> None:
        self._every = f"{medium_interval:g} s"
        self._events_key: tuple[object, ...] = ()
        self._events: tuple[Metric, ...] = ()
        self._faults_key: tuple[object, ...] = ()
        self._faults: Metric | None = None

    def _help(self, name: str) -> str:
        return f"{_HELP[name]} (cached; read every {self._every})"

    def events(self, tally: EventCounts, inverter: str) -> tuple[Metric, ...]:
        """Return the counter (every known type at 0 at least) and the newest start per type.

        Example lines:
            rctmon_inverter_events_total{inverter="Garage",type="NO_GRID"} 2.0
            rctmon_inverter_last_event_timestamp_seconds{inverter="Garage",type="NO_GRID"} 1.7325e+09
        """
        key = (tally.version, inverter)
        if key == self._events_key:
            return self._events
        counter = CounterMetricFamily(EVENTS_METRIC, self._help(EVENTS_METRIC + "_total"), labels=("inverter", "type"))
        for name in sorted(tally.counts):
            counter.add_metric((inverter, name), float(tally.counts[name]))
        latest = GaugeMetricFamily(LAST_EVENT_METRIC, self._help(LAST_EVENT_METRIC), labels=("inverter", "type"),
                                   unit="seconds")
        for name in sorted(tally.latest):
            latest.add_metric((inverter, name), float(tally.latest[name]))
        self._events_key, self._events = key, (counter, latest) if latest.samples else (counter,)
        return self._events

    def faults(self, words: Mapping[int, tuple[object, object]], inverter: str) -> Metric | None:
        """Return the fault family from the fresh fault words (word index -> (Cached, value)), or None.

        Example lines:
            rctmon_inverter_fault_active{fault="grid_undervoltage_l1",inverter="Garage"} 1.0
        """
        key = (inverter, *((word, cached) for word, (cached, _) in sorted(words.items())))
        if key == self._faults_key:
            return self._faults
        family = GaugeMetricFamily(FAULT_METRIC, self._help(FAULT_METRIC), labels=("inverter", "fault"))
        for word in sorted(words):
            for entry, on in faults.states(word, words[word][1]):
                if on:
                    family.add_metric((inverter, entry.name), 1.0)
        self._faults_key, self._faults = key, family if family.samples else None
        return self._faults


class CachedReading(Protocol):
    """The prometheus child's cached reading of an object (prometheus.Cached)."""

    samples: dict[Series, list[Sample]]


class Fresh(Protocol):
    """The prometheus child's judge of a cached reading's age (prometheus.Freshness)."""

    def fresh(self, cached: Any, tier: Tier) -> bool: ...


def fresh_fault_words(values: Mapping[int, CachedReading], fresh: Fresh) -> dict[int, tuple[object, object]]:
    """Return word index -> (cached reading, the word's value) for every fault word with a fresh, plausible value."""
    words: dict[int, tuple[object, object]] = {}
    for word, series in enumerate(FAULT_WORDS):
        cached = values.get(series.object_id)
        if cached is None or not fresh.fresh(cached, series.tier):
            continue
        samples = cached.samples.get(series)
        if samples:
            words[word] = (cached, samples[0][1])
    return words


def families(events: EventFamilies, tally: EventCounts, values: Mapping[int, CachedReading], fresh: Fresh,
             inverter: str) -> Iterator[Metric]:
    """Yield the event families and, if a fresh fault word has a bit set, the fault family."""
    yield from events.events(tally, inverter)
    family = events.faults(fresh_fault_words(values, fresh), inverter)
    if family is not None:
        yield family
