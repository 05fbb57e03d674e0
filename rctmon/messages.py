"""The messages rctmon's processes exchange: plain picklable data, never live objects.

Flow (the supervisor is the hub; children never talk to each other):

    collector  --ReadingBatch, Inventory, DeviceStatus, Heartbeat-->  supervisor
    supervisor --ReadingBatch (with seq), Inventory, DeviceStatus-->  every exporter
    supervisor --Health------------------------------------------->  prometheus exporter
    exporter   --Ack(seq), Heartbeat----------------------------->  supervisor
    any child  --Started (once set up)---------------------------->  supervisor
    supervisor --Stop--------------------------------------------->  any child
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from rctmon.inventory import Inventory

Value = Union[float, int, bool, str]
#: The value of an object with one record per element (a module's cells, catalog.Elements): a tuple per cell.
Records = tuple[tuple[float, ...], ...]
#: (object id, decoded value as the inverter sent it, epoch nanoseconds when the answer's frame arrived)
Reading = tuple[int, Union[Value, Records], int]

#: Upper bounds (seconds) of the response-time histogram the collector keeps; the exporter adds +Inf.
RESPONSE_BUCKETS: tuple[float, ...] = (0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)


@dataclass(frozen=True)
class ReadingBatch:
    """The readings of one burst. `seq` is set by the supervisor and is what an exporter acknowledges."""

    readings: tuple[Reading, ...]
    seq: int = 0


@dataclass(frozen=True)
class DeviceStatus:
    """Whether the collector is connected to the inverter (sent on every change)."""

    up: bool
    reason: str = ""


@dataclass(frozen=True)
class Ack:
    """An exporter has made batch `seq` (and every earlier one) durable; the supervisor may forget them."""

    seq: int


@dataclass(frozen=True)
class Started:
    """A child has finished setting up (the prometheus child: its endpoint answers); sent once per incarnation."""

    process: str


@dataclass(frozen=True)
class Stop:
    """Finish what is in hand and exit."""


@dataclass
class CollectorStats:
    """Cumulative counters of the collector process since it started."""

    connects: int = 0
    frames_sent: int = 0
    frames_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    request_timeouts: int = 0
    readings: int = 0
    decode_errors: dict[str, int] = field(default_factory=dict)  # kind -> count
    response_buckets: tuple[int, ...] = (0,) * len(RESPONSE_BUCKETS)  # cumulative count per bucket bound
    response_count: int = 0
    response_sum: float = 0.0
    inventory_complete: bool = False
    last_reading_ns: int = 0


@dataclass
class InfluxStats:
    """Cumulative counters of the influxdb exporter process since it started (the spool size is a gauge)."""

    points_written: int = 0
    write_errors: dict[str, int] = field(default_factory=dict)  # kind -> count
    spool_points: int = 0
    points_dropped: int = 0
    last_write_timestamp: float = 0.0  # epoch seconds of the last accepted write; 0: none yet
    #: for the systemd status: starting, ok, unreachable, timeout, server_error, rate_limited, unauthorized,
    #: forbidden, not_found
    state: str = "starting"


@dataclass
class MqttStats:
    """Cumulative counters of the mqtt exporter process since it started."""

    connected: bool = False
    messages_published: int = 0
    publish_errors: int = 0


@dataclass(frozen=True)
class Heartbeat:
    """A child is alive; it carries the child's own resource use and counters."""

    process: str
    pid: int
    rss_bytes: int
    cpu_seconds: float
    stats: CollectorStats | InfluxStats | MqttStats | None = None


@dataclass(frozen=True)
class ProcessHealth:
    """What the supervisor knows about one child process."""

    up: bool
    restarts: int
    readings_dropped: int
    rss_bytes: int = 0
    cpu_seconds: float = 0.0


@dataclass(frozen=True)
class Health:
    """The supervisor's view of every child, plus the latest counters each child reported."""

    processes: dict[str, ProcessHealth]
    collector: CollectorStats | None = None
    influxdb: InfluxStats | None = None
    mqtt: MqttStats | None = None
    device_up: bool = False
    inventory: Inventory | None = None
