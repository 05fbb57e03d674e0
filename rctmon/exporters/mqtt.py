"""The mqtt child process: every catalog value on its own MQTT topic, plus Home Assistant discovery.

Topics (docs/mqtt.md has the whole scheme):

    rctmon/<inverter name>/availability            online / offline (retained; offline is also the last will)
    rctmon/<inverter name>/generator/a/power       1234.5   (W)
    rctmon/<inverter name>/grid/feed_energy_total  2769.942 (kWh)
    rctmon/<inverter name>/event                   {"event_type": "NO_GRID", ...}  (not retained; mqtt_events)
    rctmon/<inverter name>/faults                  {"problem": "OFF", "faults": [], ...}

The process keeps the latest value of every series in a cache bounded by the catalog and publishes from there: a
value goes out when it changed or when its tier interval has passed, and everything goes out again after a
reconnect. paho's network loop runs in a thread of its own; its callbacks only post events to the child's loop
(rctmon.child), which also reads the supervisor's channel. Nothing here waits for the broker: a batch is
acknowledged once it is in the cache, so a broker outage never holds up the supervisor or the collector.
"""

from __future__ import annotations

import logging
import math
import re
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Callable
from collections.abc import Awaitable, Mapping, Sequence

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from rctmon.catalog import OBJECTS, Labels, Series, Tier
from rctmon.child import ChildContext, Job
from rctmon.config import MqttConfig
from rctmon.exporters import homeassistant as ha
from rctmon.exporters import mqtt_events
from rctmon.inventory import Inventory
from rctmon.messages import Ack, DeviceStatus, InverterEvents, ReadingBatch, Stats

LOG = logging.getLogger("rctmon.mqtt")

#: Seconds between keep-alive pings. It also bounds how long publishes can pile up inside paho on a broker that
#: stopped reading without closing the connection: paho drops the connection after one unanswered ping.
KEEPALIVE = 30
RECONNECT_MIN_DELAY, RECONNECT_MAX_DELAY = 1, 10  # seconds; doubled after each failed attempt
MAX_QUEUED_MESSAGES = 1000  # QoS 1 and 2 messages paho may hold while the broker has not acknowledged them
STOP_GRACE = 1.0  # seconds for `offline` and the DISCONNECT to reach the broker when stopping
#: A float32 carries about 7 significant digits; more would publish decoding noise (231.60000610351562).
SIGNIFICANT_DIGITS = 7
#: An unchanged value goes out again once this fraction of its tier interval has passed since it last went out.
#: Readings arrive about once per interval, so each of them is published; a little early is fine, a whole interval
#: late (jitter making it miss the mark) is not.
REFRESH_FRACTION = 0.5
AVAILABILITY = "availability"
_UNSAFE_TOPIC = re.compile(r"[^A-Za-z0-9._-]+")


def topic_level(text: str) -> str:
    """Return `text` usable as one topic level: no `/`, no wildcards, no spaces (they trip up shell tools)."""
    return _UNSAFE_TOPIC.sub("_", text).strip("_") or "_"


def default_prefix(inventory: Inventory) -> str | None:
    """Return `rctmon/<inverter name>` (its serial number if it has no name); None while neither is known."""
    ident = inventory.name or inventory.serial
    return "rctmon/" + topic_level(ident) if ident else None


def value_path(series: Series, labels: Labels | None = None) -> str:
    """Return the topic of one of the series' values below the prefix: `<measurement>[/<axis value>][/<cell>]/<field>`,
    e.g. `generator/a/power`, `battery_cell/0/5/voltage`."""
    element = ha.element_value(series, series.labels if labels is None else labels)
    parts = (series.row.measurement, ha.axis_value(series), element, series.row.field)
    return "/".join(p for p in parts if p)


def format_value(value: object) -> str | None:
    """Return the MQTT payload for a value in its display unit: a plain number or the string; None to skip it."""
    if isinstance(value, str):
        return value.rstrip("\x00")
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if not isinstance(value, float) or not math.isfinite(value):
        return None
    if value == 0:
        return "0"
    decimals = max(0, SIGNIFICANT_DIGITS - 1 - math.floor(math.log10(abs(value))))
    text = f"{value:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def payloads(series: Series, raw: object) -> list[tuple[Labels, str]]:
    """Return (labels, payload) of every value a reading yields for `series` (catalog.Series.display_samples:
    display units, implausible values left out)."""
    out = []
    for labels, value in series.display_samples(raw):
        text = format_value(value)
        if text is not None:
            out.append((labels, text))
    return out


Key = tuple[Series, Labels]


@dataclass
class Latest:
    """The latest value of one series (one of its cells) and what was last published of it."""

    series: Series
    text: str
    taken_ns: int
    labels: Labels = ()
    sent_text: str | None = None
    sent_at: float = -math.inf

    @property
    def key(self) -> Key:
        return self.series, self.labels


class LatestValues:
    """The latest value of every series and which of them are due; bounded by the catalog's size."""

    def __init__(self, intervals: Mapping[Tier, float]) -> None:
        self._refresh = {tier: REFRESH_FRACTION * seconds for tier, seconds in intervals.items()}
        self._latest: dict[Key, Latest] = {}
        self._due: dict[Key, None] = {}  # insertion-ordered set

    def __len__(self) -> int:
        return len(self._latest)

    def update(self, series: Series, text: str, taken_ns: int, now: float, labels: Labels | None = None) -> bool:
        """Record a reading; return False when it is older than the value already held."""
        key = (series, series.labels if labels is None else labels)
        entry = self._latest.get(key)
        if entry is None:
            entry = self._latest[key] = Latest(series, text, taken_ns, key[1])
        elif taken_ns < entry.taken_ns:
            return False
        entry.text, entry.taken_ns = text, taken_ns
        if entry.text != entry.sent_text or now - entry.sent_at >= self._refresh.get(series.tier, 0.0):
            self._due[key] = None
        return True

    def due(self) -> list[Latest]:
        return [self._latest[key] for key in self._due]

    def sent(self, entry: Latest, now: float) -> None:
        entry.sent_text, entry.sent_at = entry.text, now
        self._due.pop(entry.key, None)

    def all_due(self) -> None:
        """Mark every value for publishing again (after a reconnect, or when Home Assistant restarted)."""
        self._due = dict.fromkeys(self._latest)


class BrokerLink:
    """One paho client and its network thread. Callbacks run in that thread and only post events to the loop."""

    def __init__(self, cfg: MqttConfig, availability_topic: str,
                 post: Callable[[BrokerLink, str, str], None]) -> None:
        """`post(link, kind, detail)` hands an event to the child's loop; it is called in the network thread."""
        self.cfg = cfg
        self.availability_topic = availability_topic
        self.published = 0  # written by the network thread only
        self._post = post
        self._thread: threading.Thread | None = None
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=cfg.client_id, clean_session=True)
        client.enable_logger(logging.getLogger("rctmon.mqtt.paho"))
        client.reconnect_delay_set(RECONNECT_MIN_DELAY, RECONNECT_MAX_DELAY)
        client.max_queued_messages_set(MAX_QUEUED_MESSAGES)
        client.will_set(availability_topic, ha.OFFLINE, qos=cfg.qos, retain=True)
        if cfg.username:
            client.username_pw_set(cfg.username, cfg.password or None)
        if cfg.tls.enable:
            tls = cfg.tls
            client.tls_set(ca_certs=tls.ca_file or None, certfile=tls.cert_file or None,
                           keyfile=tls.key_file or None,
                           cert_reqs=ssl.CERT_NONE if tls.insecure else ssl.CERT_REQUIRED)
            client.tls_insecure_set(tls.insecure)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        self.client = client

    def start(self) -> None:
        """Start connecting in the network thread; name resolution and the TCP connect happen there too."""
        self.client.connect_async(self.cfg.host, self.cfg.port, KEEPALIVE)
        self.client.loop_start()
        # paho keeps its thread to itself; it is the one loop_stop joins. Its end is checked before each heartbeat.
        self._thread = getattr(self.client, "_thread", None)

    @property
    def running(self) -> bool:
        """Whether paho's network thread still runs (without it nothing is published, and nothing reconnects)."""
        return self._thread is None or self._thread.is_alive()

    def publish(self, topic: str, payload: str, retain: bool) -> bool:
        """Hand a message to paho without waiting; return whether paho took it."""
        try:
            info = self.client.publish(topic, payload, qos=self.cfg.qos, retain=retain)
        except ValueError as exc:  # a topic with wildcards: the configured prefix is unusable
            LOG.error("cannot publish to %r: %s", topic, exc)
            return False
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(topic)

    def close(self, say_offline: bool) -> None:
        """Say `offline` (a clean disconnect does not trigger the last will), disconnect, stop the thread.

        Bounded by STOP_GRACE: a broker that does not answer must not hold up the process's exit.
        """
        deadline = time.monotonic() + STOP_GRACE
        if say_offline and self.client.is_connected():
            info = self.client.publish(self.availability_topic, ha.OFFLINE, qos=self.cfg.qos, retain=True)
            try:
                info.wait_for_publish(timeout=STOP_GRACE / 2)
            except (RuntimeError, ValueError):
                pass
        self.client.disconnect()
        # loop_stop joins the network thread without a timeout; join it from a helper thread that we can abandon.
        stopper = threading.Thread(target=self.client.loop_stop, name="mqtt-stop", daemon=True)
        stopper.start()
        stopper.join(max(0.0, deadline - time.monotonic()))

    # --- network thread -----------------------------------------------------------------------------------------
    def _on_connect(self, client: paho.Client, userdata: object, flags: object, reason: object,
                    properties: object) -> None:
        failed = bool(getattr(reason, "is_failure", False))
        self._post(self, "refused" if failed else "connected", str(reason))

    def _on_connect_fail(self, client: paho.Client, userdata: object) -> None:
        self._post(self, "unreachable", "")

    def _on_disconnect(self, client: paho.Client, userdata: object, flags: object, reason: object,
                       properties: object) -> None:
        self._post(self, "disconnected", str(reason))

    def _on_publish(self, client: paho.Client, userdata: object, mid: int, reason: object,
                    properties: object) -> None:
        self.published += 1

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        if message.payload == ha.ONLINE.encode():
            self._post(self, "ha_online", "")


class MqttExporter(Job):
    """The mqtt child's job: the latest values, the broker link and what has been published."""

    def __init__(self, context: ChildContext) -> None:
        super().__init__(context)
        config = context.config
        self.cfg = config.mqtt
        self.intervals = {tier: float(getattr(config.device.intervals, tier.value)) for tier in Tier}
        self.values = LatestValues(self.intervals)
        self.events = mqtt_events.EventsAndFaults(REFRESH_FRACTION * self.intervals[Tier.MEDIUM])
        self.inventory: Inventory | None = None
        self.device_up: bool | None = None  # None: not told yet; presumed reachable
        self.prefix: str | None = self.cfg.topic_prefix.strip("/") or None
        self.link: BrokerLink | None = None
        self.connected = False
        self.publish_errors = 0
        self._published_by_closed_links = 0
        self._topics: dict[Key, str] = {}
        self._availability_sent: str | None = None
        self._details: dict[str, str] = {}  # object name -> value, for device blocks (serials, versions)
        self._discovery_wanted: dict[str, str] = {}
        self._discovery_sent: dict[str, str] = {}  # what the broker holds, as far as we know
        self._trouble_logged = False  # one warning per outage, not one per reconnect attempt
        self._handlers: Mapping[type, Callable[[object], None]] = {
            ReadingBatch: self._on_batch,  # type: ignore[dict-item]
            Inventory: self._on_inventory,  # type: ignore[dict-item]
            DeviceStatus: self._on_device_status,  # type: ignore[dict-item]
            InverterEvents: self.events.add_events,  # type: ignore[dict-item]
        }
        self._event_handlers: Mapping[str, Callable[[str], None]] = {
            "connected": self._on_connected,
            "disconnected": self._on_disconnected,
            "refused": self._on_refused,
            "unreachable": self._on_unreachable,
            "ha_online": self._on_ha_online,
        }

    # --- the child's loop -----------------------------------------------------------------------------------------
    async def start(self) -> Sequence[Awaitable[object]]:
        if self.prefix:
            self._open_link()
        return ()

    def receive(self, messages: Sequence[object]) -> None:
        acked = 0
        for message in messages:
            handler = self._handlers.get(type(message))
            if handler is not None:
                handler(message)
            if isinstance(message, (ReadingBatch, InverterEvents)):
                acked = max(acked, message.seq)
        if acked:
            self.context.send(Ack(acked))  # in the cache is handled: MQTT only ever carries the latest value
        self._publish_due()

    def _event(self, link: BrokerLink, kind: str, detail: str) -> None:
        if link is self.link:  # a link closed meanwhile (a new prefix) has nothing more to say
            self._event_handlers[kind](detail)
            self._publish_due()

    def _post(self, link: BrokerLink, kind: str, detail: str) -> None:
        """Hand an event of the link's network thread to the loop (called in that thread)."""
        try:
            self.context.loop.call_soon_threadsafe(self._event, link, kind, detail)
        except RuntimeError:  # the loop has closed: the process is ending
            pass

    def stats(self) -> Stats:
        published = self._published_by_closed_links + (self.link.published if self.link else 0)
        return {"connected": int(self.connected), "messages_published": published,
                "publish_errors": self.publish_errors + self.events.dropped}

    async def check(self) -> bool:
        if self.link is not None and not self.link.running:
            self.context.fail("paho's network thread has ended")
        return True

    def close(self) -> None:
        self._close_link()

    # --- messages from the supervisor ---------------------------------------------------------------------------
    def _on_batch(self, batch: ReadingBatch) -> None:
        now = time.monotonic()
        details_changed = False
        for object_id, raw, taken_ns in batch.readings:
            for series in OBJECTS.get(object_id, ()):
                for labels, text in payloads(series, raw):
                    if not self.values.update(series, text, taken_ns, now, labels):
                        continue
                    if ha.is_detail(series) and self._details.get(series.object_name) != text:
                        self._details[series.object_name] = text
                        details_changed = True
        self.events.add_readings(batch.readings)
        if details_changed:
            self._refresh_discovery()

    def _on_inventory(self, inventory: Inventory) -> None:
        self.inventory = inventory
        prefix = default_prefix(inventory)
        if not self.cfg.topic_prefix and prefix is not None and prefix != self.prefix:
            self._retarget(prefix)
        self._refresh_discovery()

    def _on_device_status(self, status: DeviceStatus) -> None:
        self.device_up = status.up
        self._sync_availability()

    # --- events from the network thread -------------------------------------------------------------------------
    def _on_connected(self, detail: str) -> None:
        LOG.info("connected to MQTT broker %s:%d", self.cfg.host, self.cfg.port)
        self.connected, self._trouble_logged = True, False
        self._availability_sent = None
        self._sync_availability()
        if self.cfg.discovery and self.link is not None:
            self.link.subscribe(f"{self.cfg.discovery_prefix}/{ha.STATUS_TOPIC}")
        self._sync_discovery(force=True)  # the broker may have restarted without its retained messages
        self.values.all_due()
        self.events.all_due()

    def _on_disconnected(self, detail: str) -> None:
        self.connected = False
        self._warn_once("lost the connection to MQTT broker %s:%d (%s); reconnecting", detail)

    def _on_refused(self, detail: str) -> None:
        self.connected = False
        self._warn_once("MQTT broker %s:%d refused the connection: %s; retrying", detail, level=logging.ERROR)

    def _on_unreachable(self, detail: str) -> None:
        self.connected = False
        self._warn_once("cannot reach MQTT broker %s:%d%s; retrying with backoff", detail)

    def _on_ha_online(self, detail: str) -> None:
        """Home Assistant restarted: without retained values it would show `unknown` until each value changes."""
        self._sync_discovery(force=True)
        self.values.all_due()

    def _warn_once(self, text: str, detail: str, level: int = logging.WARNING) -> None:
        if not self._trouble_logged:
            LOG.log(level, text, self.cfg.host, self.cfg.port, detail)
            self._trouble_logged = True

    # --- publishing -----------------------------------------------------------------------------------------------
    def _publish(self, topic: str, payload: str, retain: bool) -> bool:
        if self.link is None or not self.connected:
            return False
        ok = self.link.publish(topic, payload, retain)
        if not ok:
            self.publish_errors += 1
        return ok

    def _publish_due(self) -> None:
        if self.prefix is None or not self.connected:
            return
        now = time.monotonic()
        for entry in self.values.due():
            topic = self._topics.get(entry.key)
            if topic is None:
                topic = self._topics[entry.key] = f"{self.prefix}/{value_path(entry.series, entry.labels)}"
            if not self._publish(topic, entry.text, self.cfg.retain):
                return  # connection lost meanwhile: everything goes out again after the reconnect
            self.values.sent(entry, now)
        self._publish_events_and_faults(now)

    def _publish_events_and_faults(self, now: float) -> None:
        """Announce the events waiting (never retained: see mqtt_events) and the fault state when it is due."""
        sent = 0
        for payload in self.events.events_due():
            if not self._publish(f"{self.prefix}/{mqtt_events.EVENT_TOPIC}", payload, retain=False):
                break
            sent += 1
        self.events.events_sent(sent)
        faults = self.events.faults_due(now)
        if faults is not None and self._publish(f"{self.prefix}/{mqtt_events.FAULTS_TOPIC}", faults, self.cfg.retain):
            self.events.faults_sent(faults, now)

    def _sync_availability(self) -> None:
        wanted = ha.OFFLINE if self.device_up is False else ha.ONLINE
        if self.prefix is None or wanted == self._availability_sent:
            return
        if self._publish(self._availability_topic(), wanted, retain=True):
            self._availability_sent = wanted

    def _refresh_discovery(self) -> None:
        if not self.cfg.discovery or self.inventory is None or self.prefix is None:
            return
        prefix = self.prefix
        self._discovery_wanted = ha.discovery_configs(
            self.inventory, self.cfg.discovery_prefix, lambda s, labels: f"{prefix}/{value_path(s, labels)}",
            self._availability_topic(), self.intervals, self._details)
        self._discovery_wanted.update(mqtt_events.discovery_configs(
            self.inventory, self.cfg.discovery_prefix, prefix, self._availability_topic(),
            self.intervals[Tier.MEDIUM], self._details))
        self._sync_discovery(force=False)

    def _sync_discovery(self, force: bool) -> None:
        """Publish the configs that differ from what the broker holds; clear configs of vanished series."""
        if not self.connected:
            return
        for topic, payload in self._discovery_wanted.items():
            if (force or self._discovery_sent.get(topic) != payload) and self._publish(topic, payload, True):
                self._discovery_sent[topic] = payload
        for topic in [t for t in self._discovery_sent if t not in self._discovery_wanted]:
            if self._publish(topic, "", retain=True):  # an empty retained config removes the entity
                del self._discovery_sent[topic]

    # --- the broker link ------------------------------------------------------------------------------------------
    def _availability_topic(self) -> str:
        return f"{self.prefix}/{AVAILABILITY}"

    def _open_link(self) -> None:
        try:
            self.link = BrokerLink(self.cfg, self._availability_topic(), self._post)
            self.link.start()
        except (OSError, ValueError) as exc:  # TLS files missing or unreadable, a prefix with wildcards
            LOG.error("cannot set up the MQTT client (check mqtt.tls and mqtt.topic_prefix): %s", exc)
            self.link = None

    def _close_link(self) -> None:
        if self.link is not None:
            self.link.close(say_offline=self.connected)
            self._published_by_closed_links += self.link.published
            self.link, self.connected = None, False

    def _retarget(self, prefix: str) -> None:
        """Move to a new topic prefix (the inverter's name became known or changed); the will moves with it."""
        LOG.info("publishing under %s", prefix)
        self._close_link()
        self.prefix = prefix
        self._topics.clear()
        self._availability_sent = None
        self._open_link()
