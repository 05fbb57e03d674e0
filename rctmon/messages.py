"""The messages rctmon's processes exchange: plain picklable data, never live objects.

Flow (the supervisor is the hub; children never talk to each other):

    collector  --ReadingBatch, Inventory, DeviceStatus------------>  supervisor
    supervisor --ReadingBatch (with seq), Inventory, DeviceStatus->  every child that reads readings
    collector  --InverterEvents----------------------------------->  supervisor
    supervisor --InverterEvents (with seq; the recent ones replayed)> every child that reads readings
    collector  --BackfillBatch------------------------------------>  supervisor
    supervisor --BackfillBatch (with seq)------------------------->  every child that keeps the history record
    supervisor --Health------------------------------------------->  every child that reads health
    exporter   --Ack(seq)----------------------------------------->  supervisor (and back, to begin a resend)
    any child  --Heartbeat (with its stats)----------------------->  supervisor
    any child  --Started (once set up)---------------------------->  supervisor
    supervisor --Stop--------------------------------------------->  any child

Which child gets what is declared in its registration (rctmon/registry.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Union
from collections.abc import Mapping

from rctmon.inventory import Inventory

if TYPE_CHECKING:  # unpickling an event imports it where one arrives; a process that sees none never does
    from rctmon.history.events import Event

Value = Union[float, int, bool, str]
#: The value of an object with one record per element (a module's cells, catalog.Elements): a tuple per cell.
Records = tuple[tuple[float, ...], ...]
#: (object id, decoded value as the inverter sent it, epoch nanoseconds when the answer's frame arrived)
Reading = tuple[int, Union[Value, Records], int]

#: One figure of a process's stats: a number, a mapping from label values (a string for one label, a tuple for
#: several) to numbers, or the cumulative counts of histogram buckets. See rctmon/health_metrics.py.
StatValue = Union[int, float, bool, str, Mapping[str, float], Mapping[tuple[str, ...], float], tuple[int, ...]]
Stats = Mapping[str, StatValue]

#: Upper bounds (seconds) of the response-time histogram the collector keeps; the exporter adds +Inf.
RESPONSE_BUCKETS: tuple[float, ...] = (0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)


@dataclass(frozen=True)
class ReadingBatch:
    """The readings of one burst. `seq` is set by the supervisor and is what an exporter acknowledges."""

    readings: tuple[Reading, ...]
    seq: int = 0


#: A span of the history record: (rctclient object name of a logger series or the event table, start, end), UNIX s.
RecordSpan = tuple[str, int, int]


@dataclass(frozen=True)
class BackfillBatch:
    """What the backfill read from the inverter's logger, and which part of the history record that completes.

    `lines` are line protocol, ready for the spool; `done` the spans they complete (a span is done once its points
    are durable, so it travels with them); `gaps` spans newly missing from the record (declared when a connection
    starts, before any of its live readings); nothing before `since` is to be filled any more (history.max_gap).
    Routed like a ReadingBatch to the children that keep the record (`ChildSpec.history`): numbered by `seq` and
    acknowledged, so a span is never marked done before its points are in the spool.
    """

    lines: tuple[bytes, ...] = ()
    done: tuple[RecordSpan, ...] = ()
    gaps: tuple[RecordSpan, ...] = ()
    since: int | None = None
    seq: int = 0


@dataclass(frozen=True)
class DeviceStatus:
    """Whether the collector is connected to the inverter (sent on every change)."""

    up: bool
    reason: str = ""


@dataclass(frozen=True)
class Ack:
    """An exporter has made batch `seq` (and every earlier one) durable; the supervisor may forget them.

    With `resend`, the exporter let go of the batches after `seq` (its spool could not store them): the supervisor
    sends them again from its backlog, preceded by this Ack, so that the exporter knows where they begin.
    """

    seq: int
    resend: bool = False


@dataclass(frozen=True)
class Started:
    """A child has finished setting up (the prometheus child: its endpoint answers); sent once per incarnation."""

    process: str


@dataclass(frozen=True)
class Stop:
    """Finish what is in hand and exit."""


@dataclass
class CollectorStats:
    """Cumulative counters of the collector process since it started; its heartbeat carries them as a mapping."""

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
    readings_dropped: dict[str, int] = field(default_factory=dict)  # reason -> readings the channel refused
    #: kind -> answers of the inverter's logger the backfill refused and asked again (rctmon/history/protocol.py)
    history_backfill_reasked: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Heartbeat:
    """A child is alive (and works: a child that does not, sends none); with its resource use and its figures."""

    process: str
    pid: int
    rss_bytes: int
    cpu_seconds: float
    #: The child's own figures by stat key, as its health metrics declare them (rctmon/registry.py).
    stats: Stats = field(default_factory=dict)


@dataclass(frozen=True)
class Health:
    """The supervisor's view: the latest figures of every process it runs, and of itself.

    `stats` has a key for every supervised process (an empty mapping until it has reported) and for "supervisor",
    whose figures include the per-process ones (up, restarts, memory, CPU, dropped readings) for every process.
    """

    stats: dict[str, Stats]
    inventory: Inventory | None = None


@dataclass(frozen=True)
class InverterEvents:
    """Events read from the inverter's event table (rctmon/collector/events.py), decoded as `rctmon history` does.

    `new`: they appeared in the table after the collector's first complete read of it, so they happened while
    rctmon watched (counted on /metrics, announced on MQTT). Without it they are that first read: the table as it
    was when the collector started (history, not news: Prometheus shows their latest start), or an event read again
    with other fields (its end filled in). `store`: InfluxDB is to store them; not the first read's events from
    before the collector started, which are the backfill's to fill (or not: `history.backfill`). `seq` is the
    supervisor's number (shared with ReadingBatch), what an exporter acknowledges; 0 for the recent events a new
    incarnation is replayed (never to be announced again).
    """

    events: tuple[Event, ...]
    new: bool
    seq: int = 0
    store: bool = True
