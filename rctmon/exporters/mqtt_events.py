"""The inverter's events and faults on MQTT, and their Home Assistant entities.

    <prefix>/event    {"event_type": "NO_GRID", "type": "NO_GRID", "name": "Loss of the power grid", ...}
    <prefix>/faults   {"problem": "ON", "faults": ["grid_undervoltage_l1"], "descriptions": [...], "words": [...]}

- An event is published once, when the collector finds it new (rctmon/collector/events.py): QoS as configured and
  **never retained**. An event is a moment, not a state: a retained one would be handed to every new subscriber,
  and to Home Assistant at each of its restarts, as if it had just happened. The table's past, which the collector
  reads at every start, is not announced, so a restarted daemon announces nothing twice. In Home Assistant it is
  an `event` entity (`event_types`: every type rctclient documents, and `UNKNOWN` for a type it does not).
- The faults are a state: published when they change and once per medium interval otherwise, retained like the
  values (`mqtt.retain`). In Home Assistant a `binary_sensor` of device class `problem`, on while any fault bit is
  set, whose attributes name the faults (rctmon/faults.py). Published once all four fault words have been read,
  so that "no problem" is never said on a quarter of the evidence.

This module builds payloads and discovery configs and keeps what is waiting to go out; the mqtt process publishes.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from typing import Any
from collections.abc import Iterable, Mapping

from rctmon import __version__, catalog, faults
from rctmon.exporters import homeassistant as ha
from rctmon.history.events import EVENT_TYPES, EVENT_TYPES_BY_CODE, Event
from rctmon.history.timezone import utc_text
from rctmon.inventory import Inventory
from rctmon.messages import InverterEvents, Reading

LOG = logging.getLogger("rctmon.mqtt")

EVENT_TOPIC = "event"
FAULTS_TOPIC = "faults"
UNKNOWN_EVENT_TYPE = "UNKNOWN"
#: What Home Assistant's event entity accepts: the documented types, and one for all the others.
EVENT_TYPE_NAMES: tuple[str, ...] = tuple(t.name for t in EVENT_TYPES) + (UNKNOWN_EVENT_TYPE,)
#: Events waiting for the broker at most (a broker away for days on an inverter with a bad grid).
OUTBOX_LIMIT = 1000
#: Fields an event carries besides its type-specific values.
_FRAME_FIELDS = frozenset({"code", "end", "duration", "element2", "element3", "element4"})
_FAULT_WORDS: Mapping[int, int] = {catalog.SERIES_BY_NAME[name].object_id: word
                                   for word, name in enumerate(faults.WORD_OBJECTS)}
_FAULT_SERIES = catalog.SERIES_BY_NAME[faults.WORD_OBJECTS[0]]  # places the entities on the inverter's device


def event_payload(event: Event) -> str:
    """Return the JSON an event is published as (Home Assistant takes every key but `event_type` as attributes)."""
    known = EVENT_TYPES_BY_CODE.get(event.raw.code)
    payload: dict[str, Any] = {
        "event_type": known.name if known is not None else UNKNOWN_EVENT_TYPE,
        "type": event.type,
        "code": event.fields.get("code"),
        "name": known.description if known is not None else "not documented by rctclient",
        "start": utc_text(event.start),
        "start_timestamp": event.start,
        "end": utc_text(event.end) if event.end is not None else None,
        "end_timestamp": event.end,
        "duration": event.duration,
        "values": {k: v for k, v in sorted(event.fields.items()) if k not in _FRAME_FIELDS},
        "raw": [event.raw.element2, event.raw.element3, event.raw.element4],
    }
    return json.dumps(payload, ensure_ascii=False)


def faults_payload(words: Mapping[int, int]) -> str:
    """Return the JSON of the fault sensor: on while any bit is set; the faults by name, rctclient's words, raw."""
    active = faults.active(words)
    return json.dumps({"problem": "ON" if active else "OFF", "faults": [f.name for f in active],
                       "descriptions": [f.description for f in active],
                       "words": [words[i] for i in sorted(words)]}, ensure_ascii=False)


class EventsAndFaults:
    """Events waiting to be announced, and the fault words as last read, for one mqtt process."""

    def __init__(self, refresh: float) -> None:
        """`refresh`: seconds after which an unchanged fault state goes out again."""
        self._refresh = refresh
        self._outbox: deque[str] = deque()
        self.dropped = 0  # events the outbox had no room for (counted as publish errors)
        self._words: dict[int, tuple[int, int]] = {}  # word index -> (value, taken ns)
        self._faults_sent: str | None = None
        self._faults_sent_at = float("-inf")

    def add_events(self, message: InverterEvents) -> None:
        """Queue the new events of a numbered message (a replayed one, seq 0, was handled by an earlier process)."""
        if not (message.new and message.seq):
            return
        for event in sorted(message.events, key=lambda e: e.start):
            if len(self._outbox) >= OUTBOX_LIMIT:
                self._outbox.popleft()
                self.dropped += 1
            self._outbox.append(event_payload(event))

    def add_readings(self, readings: Iterable[Reading]) -> None:
        for object_id, raw, taken_ns in readings:
            word = _FAULT_WORDS.get(object_id)
            if word is None:
                continue
            value = faults.word_value(raw)
            held = self._words.get(word)
            if value is not None and (held is None or held[1] <= taken_ns):
                self._words[word] = (value, taken_ns)

    def events_due(self) -> list[str]:
        return list(self._outbox)

    def events_sent(self, count: int) -> None:
        for _ in range(min(count, len(self._outbox))):
            self._outbox.popleft()

    def faults_due(self, now: float) -> str | None:
        """Return the fault payload when it changed or is due again; None before all four words were read."""
        if len(self._words) < faults.WORDS:
            return None
        payload = faults_payload({word: value for word, (value, _) in self._words.items()})
        if payload != self._faults_sent or now - self._faults_sent_at >= self._refresh:
            return payload
        return None

    def faults_sent(self, payload: str, now: float) -> None:
        self._faults_sent, self._faults_sent_at = payload, now

    def all_due(self) -> None:
        """Publish the fault state again (after a reconnect; a broker without persistence lost it)."""
        self._faults_sent = None


def discovery_configs(inventory: Inventory, discovery_prefix: str, prefix: str, availability_topic: str,
                      medium_interval: float, details: Mapping[str, object]) -> dict[str, str]:
    """Return {config topic: JSON payload} of the event entity and the fault sensor, both on the inverter's device."""
    nid = ha.node_id(inventory)
    common: dict[str, Any] = {
        "availability_topic": availability_topic,
        "payload_available": ha.ONLINE,
        "payload_not_available": ha.OFFLINE,
        "device": ha.device(_FAULT_SERIES, inventory, details),
        "origin": {"name": "rctmon", "sw_version": __version__},
    }
    event = {**common, "name": "Event", "unique_id": f"{nid}_inverter_event", "state_topic": f"{prefix}/{EVENT_TOPIC}",
             "event_types": list(EVENT_TYPE_NAMES)}
    problem = {**common, "name": "Fault", "unique_id": f"{nid}_inverter_faults", "device_class": "problem",
               "state_topic": f"{prefix}/{FAULTS_TOPIC}", "value_template": "{{ value_json.problem }}",
               "payload_on": "ON", "payload_off": "OFF", "json_attributes_topic": f"{prefix}/{FAULTS_TOPIC}",
               "json_attributes_template": "{{ {'faults': value_json.faults, 'descriptions': "
                                           "value_json.descriptions, 'words': value_json.words} | tojson }}",
               "expire_after": int(ha.EXPIRE_AFTER_INTERVALS * medium_interval)}
    return {
        f"{discovery_prefix}/event/{nid}/inverter_event/config": json.dumps(event, sort_keys=True, ensure_ascii=False),
        f"{discovery_prefix}/binary_sensor/{nid}/inverter_faults/config":
            json.dumps(problem, sort_keys=True, ensure_ascii=False),
    }
