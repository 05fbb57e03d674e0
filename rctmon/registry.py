"""Every kind of child process, registered once: what it needs, how the configuration enables it, its metrics.

The supervisor knows children only through these registrations; it holds no child's name. A child is one module
with a `Job` (rctmon/child.py runs it) plus one `ChildSpec` row below. The row is data and imports nothing of the
child's module (the supervisor must stay small): `job` names it, and only the forked child imports it.

Adding an exporter is a module under rctmon/exporters/ and a row in EXPORTERS (docs/architecture.md shows the
whole diff).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable
from collections.abc import Mapping

from rctmon.collector.framer import DECODE_ERROR_KINDS
from rctmon.config import Config
from rctmon.history.protocol import BAD_ANSWER_KINDS
from rctmon.health_metrics import CHANNEL_FULL, DROP_REASONS, SUPERVISOR, SUPERVISOR_METRICS, HealthMetric
from rctmon.messages import RESPONSE_BUCKETS, Stats


@dataclass(frozen=True)
class ChildSpec:
    """One kind of child: what the supervisor must give it, and when it runs."""

    name: str  # the process: its title `rctmon: <name>`, the `process` label, the key of its stats in Health
    job: str  # "module:attribute" of its rctmon.child.Job, imported in the child only
    enabled: Callable[[Config], bool]
    #: The part of the configuration it runs on: a reload replaces a running child only when this changed (or the
    #: logging section did, which every child shares).
    settings: Callable[[Config], object]
    readings: bool = False  # it gets every ReadingBatch, the Inventory and every DeviceStatus
    #: Readings leave the supervisor's backlog for it only when it acknowledges them (`Ack`): a new incarnation is
    #: replayed everything the previous one had not made durable. Without, readings go to the running incarnation
    #: only and a new one catches up through `replay_latest`.
    acknowledges: bool = False
    #: A new incarnation first gets the latest reading of every object: a latest-value view (the endpoint, MQTT)
    #: would otherwise lack slow and static values until they are next polled, up to an hour later.
    replay_latest: bool = False
    health: bool = False  # it gets `Health`: at start, before anything it serves, and on every change
    #: It keeps the history record: it gets every BackfillBatch (what the backfill read from the inverter's logger),
    #: kept in its backlog until acknowledged like readings (rctmon/history/record.py).
    history: bool = False
    #: The address its listening socket is bound to. The supervisor binds it (so the port stays bound across
    #: restarts, and a taken port fails the start) and hands the socket to every incarnation.
    listen: Callable[[Config], tuple[str, int]] | None = None
    #: Reasons for which the child itself drops readings; it counts them in its stats under `readings_dropped`.
    drops: tuple[str, ...] = ()
    #: Its part of the one-line status systemd shows, from its latest stats.
    status: Callable[[Stats], str] | None = None
    health_metrics: tuple[HealthMetric, ...] = ()

    def __post_init__(self) -> None:
        if self.readings and not (self.acknowledges or self.replay_latest):
            raise ValueError(f"{self.name}: a reader of readings must acknowledge them or get the latest replayed")
        if self.history and not self.acknowledges:
            raise ValueError(f"{self.name}: the history record advances only on acknowledged batches")
        if not set(self.drops) <= set(DROP_REASONS):
            raise ValueError(f"{self.name}: drop reasons {self.drops} must be among {DROP_REASONS}")
        strays = [m.name for m in self.health_metrics if m.source != self.name]
        if strays:
            raise ValueError(f"{self.name}: metrics {strays} must name this child as their source")


def _metric(source: str, name: str, type_: str, help_: str, key: str, labels: tuple[str, ...] = (),
            known: tuple[str, ...] = (), buckets: tuple[float, ...] = ()) -> HealthMetric:
    return HealthMetric(name, type_, labels, help_, source, key, tuple((k,) for k in known), buckets)


COLLECTOR = ChildSpec(
    "collector", "rctmon.collector.process:CollectorJob", enabled=lambda c: True,
    # the backfill runs in the collector, and only with InfluxDB (Prometheus cannot take the past)
    settings=lambda c: (c.device, c.history, c.influxdb.enable), drops=(CHANNEL_FULL,),
    health_metrics=(
        _metric("collector", "rctmon_device_connects_total", "counter", "TCP connections opened to the inverter",
                "connects"),
        _metric("collector", "rctmon_frames_sent_total", "counter", "Request frames sent to the inverter",
                "frames_sent"),
        _metric("collector", "rctmon_frames_received_total", "counter", "Valid frames received from the inverter",
                "frames_received"),
        _metric("collector", "rctmon_bytes_sent_total", "counter", "Bytes sent to the inverter", "bytes_sent"),
        _metric("collector", "rctmon_bytes_received_total", "counter", "Bytes received from the inverter",
                "bytes_received"),
        _metric("collector", "rctmon_decode_errors_total", "counter",
                "Received bytes or frames skipped, by kind (" + ", ".join(DECODE_ERROR_KINDS) + ")",
                "decode_errors", labels=("kind",), known=DECODE_ERROR_KINDS),
        _metric("collector", "rctmon_request_timeouts_total", "counter",
                "Requests the inverter did not answer in time", "request_timeouts"),
        _metric("collector", "rctmon_response_seconds", "histogram", "Time from sending a request to its answer",
                "response", buckets=RESPONSE_BUCKETS),
        _metric("collector", "rctmon_history_backfill_answers_reasked_total", "counter",
                "Answers of the inverter's logger the backfill refused and asked again, by kind (" +
                ", ".join(BAD_ANSWER_KINDS) + ")", "history_backfill_reasked", labels=("kind",),
                known=BAD_ANSWER_KINDS),
        # the event table, read every medium interval (rctmon/collector/events.py)
        _metric("collector", "rctmon_event_table_queries_total", "counter",
                "Queries to the inverter's event table (each one asked again counts)", "event_table_queries"),
        _metric("collector", "rctmon_event_table_refused_answers_total", "counter",
                "Event-table answers refused and asked again, by the check they failed (" +
                ", ".join(BAD_ANSWER_KINDS) + ")", "event_table_refused", labels=("kind",), known=BAD_ANSWER_KINDS),
        _metric("collector", "rctmon_event_table_unanswered_total", "counter",
                "Event-table queries nobody answered (each asked again)", "event_table_unanswered"),
        _metric("collector", "rctmon_event_table_incomplete_reads_total", "counter",
                "Reads of the event table given up before they reached what was read before (done again at the next "
                "interval)", "event_table_incomplete_reads"),
        _metric("collector", "rctmon_event_table_last_read_timestamp_seconds", "gauge",
                "When the event table was last read completely", "event_table_last_read"),
    ))

#: The kinds of failed write the influxdb exporter counts (rctmon.exporters.influxwriter.classify), besides
#: `http_<status>` for a refusal with an unusual status.
INFLUXDB_WRITE_ERROR_KINDS: tuple[str, ...] = ("connection", "timeout", "server", "rate_limited", "unauthorized",
                                               "forbidden", "not_found", "rejected", "other")


def _influxdb_status(stats: Stats) -> str:
    spooled = stats.get("spool_points", 0)
    pending = stats.get("history_backfill_pending_seconds", 0)
    return (f"InfluxDB {stats.get('state', 'starting')}" + (f", {spooled} spooled" if spooled else "")
            + (f", backfilling {_span(pending)}" if isinstance(pending, (int, float)) and pending > 0 else ""))


def _span(seconds: float) -> str:
    """Return a span of time as people read it in a status line: 45s, 12m, 5h12m, 3d4h."""
    whole = int(seconds)
    days, hours, minutes = whole // 86400, whole % 86400 // 3600, whole % 3600 // 60
    if days:
        return f"{days}d{hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m" if minutes else f"{whole}s"


#: The statuses the endpoint refuses requests with (rctmon.exporters.httpserver.REFUSAL_STATUSES) and the phases a
#: connection can time out in (httpserver.Phase); here, because the supervisor must not import the endpoint.
ENDPOINT_REFUSAL_STATUSES: tuple[str, ...] = ("400", "413", "431", "501", "505")
ENDPOINT_TIMEOUT_PHASES: tuple[str, ...] = ("fresh", "handshake", "head", "writing", "idle", "closing")

EXPORTERS: tuple[ChildSpec, ...] = (
    ChildSpec(
        "prometheus", "rctmon.exporters.prometheus:PrometheusExporter", enabled=lambda c: c.prometheus.enable,
        settings=lambda c: (c.prometheus, c.device.intervals), readings=True, replay_latest=True, health=True,
        listen=lambda c: (c.prometheus.bind_address, c.prometheus.bind_port),
        health_metrics=(
            _metric("prometheus", "rctmon_http_connections_accepted_total", "counter",
                    "Connections the metrics endpoint accepted", "http_accepted"),
            _metric("prometheus", "rctmon_http_requests_answered_total", "counter",
                    "Requests the metrics endpoint answered (scrapes, the landing page, 401, 404, its own probes)",
                    "http_answered"),
            _metric("prometheus", "rctmon_http_requests_refused_total", "counter",
                    "Requests the metrics endpoint refused as malformed or unwanted, by the status it sent ("
                    + ", ".join(ENDPOINT_REFUSAL_STATUSES) + ")", "http_refused", labels=("code",),
                    known=ENDPOINT_REFUSAL_STATUSES),
            _metric("prometheus", "rctmon_http_connections_shed_total", "counter",
                    "Connections the metrics endpoint closed at its connection limit to let a new client in",
                    "http_shed"),
            _metric("prometheus", "rctmon_http_connections_timed_out_total", "counter",
                    "Connections the metrics endpoint closed because a phase took too long, by phase ("
                    + ", ".join(ENDPOINT_TIMEOUT_PHASES) + ")", "http_timed_out", labels=("phase",),
                    known=ENDPOINT_TIMEOUT_PHASES),
            _metric("prometheus", "rctmon_http_tls_handshake_failures_total", "counter",
                    "TLS handshakes with the metrics endpoint that failed (not TLS, no common cipher, a reset)",
                    "http_tls_failed"),
        )),
    ChildSpec(
        "influxdb", "rctmon.exporters.influxdb:InfluxExporter", enabled=lambda c: c.influxdb.enable,
        settings=lambda c: (c.influxdb, c.history), readings=True, acknowledges=True, history=True,
        status=_influxdb_status,
        health_metrics=(
            _metric("influxdb", "rctmon_influxdb_points_written_total", "counter", "Points InfluxDB accepted",
                    "points_written"),
            _metric("influxdb", "rctmon_influxdb_write_errors_total", "counter",
                    "Failed writes to InfluxDB, by kind (" + ", ".join(INFLUXDB_WRITE_ERROR_KINDS) +
                    ", http_<status>)", "write_errors", labels=("kind",), known=INFLUXDB_WRITE_ERROR_KINDS),
            _metric("influxdb", "rctmon_influxdb_spool_points", "gauge", "Points in the spool waiting for InfluxDB",
                    "spool_points"),
            _metric("influxdb", "rctmon_influxdb_points_dropped_total", "counter",
                    "Points dropped: oldest points when the spool was full, points in spool rows that could not be "
                    "read or in a damaged spool file, lines InfluxDB rejected as malformed, and readings whose value "
                    "cannot be stored (NaN, infinite, absurd)", "points_dropped"),
            _metric("influxdb", "rctmon_influxdb_spool_corrupt_total", "counter",
                    "Damaged spool files moved aside (*.corrupt-<time>) and replaced by a new spool",
                    "spool_corrupt_files"),
            _metric("influxdb", "rctmon_influxdb_spool_unreadable_points_total", "counter",
                    "Points skipped while draining because their spool rows could not be read (also counted in "
                    "rctmon_influxdb_points_dropped_total)", "spool_unreadable_points"),
            _metric("influxdb", "rctmon_influxdb_last_write_timestamp_seconds", "gauge",
                    "When InfluxDB last accepted a write", "last_write_timestamp"),
            _metric("influxdb", "rctmon_history_backfill_points_total", "counter",
                    "Points the backfill read from the inverter's logger and put into the spool",
                    "history_backfill_points"),
            _metric("influxdb", "rctmon_history_backfill_pending_seconds", "gauge",
                    "Time the history record still lacks (what the backfill has yet to fill); 0 when complete",
                    "history_backfill_pending_seconds"),
        )),
    ChildSpec(
        "mqtt", "rctmon.exporters.mqtt:MqttExporter", enabled=lambda c: c.mqtt.enable,
        settings=lambda c: (c.mqtt, c.device.intervals), readings=True, acknowledges=True, replay_latest=True,
        health_metrics=(
            _metric("mqtt", "rctmon_mqtt_connected", "gauge", "1 while connected to the MQTT broker", "connected"),
            _metric("mqtt", "rctmon_mqtt_messages_published_total", "counter", "MQTT messages published",
                    "messages_published"),
            _metric("mqtt", "rctmon_mqtt_publish_errors_total", "counter", "MQTT publishes that failed",
                    "publish_errors"),
        )),
)

CHILDREN: tuple[ChildSpec, ...] = (COLLECTOR,) + EXPORTERS
CHILD_BY_NAME: Mapping[str, ChildSpec] = {spec.name: spec for spec in CHILDREN}
PROCESSES: tuple[str, ...] = tuple(CHILD_BY_NAME)
#: Every health metric rctmon can expose, each declared once.
HEALTH_METRICS: tuple[HealthMetric, ...] = SUPERVISOR_METRICS + tuple(
    metric for spec in CHILDREN for metric in spec.health_metrics)


def _check(children: tuple[ChildSpec, ...]) -> None:
    """Fail at import, not at run time, on two children of one name or two metrics of one name."""
    if len(CHILD_BY_NAME) != len(children) or SUPERVISOR in CHILD_BY_NAME:
        raise ValueError(f"child names must be unique and not {SUPERVISOR!r}: {[c.name for c in children]}")
    names = [metric.name for metric in HEALTH_METRICS]
    doubles = sorted({name for name in names if names.count(name) > 1})
    if doubles:
        raise ValueError(f"health metrics declared twice: {doubles}")


_check(CHILDREN)
