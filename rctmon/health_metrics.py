"""rctmon's own health metrics: how one is declared, and the supervisor's own.

A health metric names the process whose figures it shows (`source`) and the key of that process's stats mapping
(`key`): the prometheus exporter fills every declared metric from the `Health` the supervisor sends, with no code
per metric. Each child's metrics are declared with its registration (rctmon/registry.py); the table of all of them
is `rctmon.registry.HEALTH_METRICS`, against which the alert rules, the Grafana dashboard and docs/metrics.md are
checked.

How a stat value becomes samples:
- a metric without labels: the value is a number (a missing key counts as 0);
- a metric with labels: the value maps label values (a string for one label, a tuple for several) to numbers, and
  every combination in `known` is exposed at 0 until it is counted, so rate() sees the first error of a kind;
- a histogram: `<key>_buckets` (cumulative counts per bound of `buckets`), `<key>_count` and `<key>_sum`.
"""

from __future__ import annotations

from dataclasses import dataclass

from rctmon import __version__

SUPERVISOR = "supervisor"  # the source (and `process` label value) of the supervisor's own figures

#: Why readings were dropped: the `reason` label of rctmon_readings_dropped_total (docs/metrics.md explains each).
BACKLOG_FULL = "backlog_full"  # the supervisor's backlog for an acknowledging exporter was full: oldest dropped
CHANNEL_FULL = "channel_full"  # the collector's channel to the supervisor refused a batch (the supervisor hung)
SEND_FAILED = "send_failed"  # the supervisor's channel to a child refused readings it does not keep
DROP_REASONS: tuple[str, ...] = (BACKLOG_FULL, CHANNEL_FULL, SEND_FAILED)


@dataclass(frozen=True)
class HealthMetric:
    """One health metric: its name, type, labels and help, and where its figures come from."""

    name: str
    type: str  # gauge, counter or histogram
    labels: tuple[str, ...]
    help: str
    #: The process whose stats carry the figures: "supervisor" or a child's name. A child's metrics are exposed
    #: only while the supervisor runs that child, so that a disabled exporter never looks like a broken one.
    source: str
    key: str
    #: Label values exposed at 0 before they are first counted (one tuple per series).
    known: tuple[tuple[str, ...], ...] = ()
    #: Histograms only: the upper bounds of the buckets (+Inf added).
    buckets: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.type not in ("gauge", "counter", "histogram"):
            raise ValueError(f"{self.name}: unknown type {self.type!r}")
        if any(len(values) != len(self.labels) for values in self.known):
            raise ValueError(f"{self.name}: every known label tuple needs one value per label {self.labels}")
        if (self.type == "histogram") != bool(self.buckets):
            raise ValueError(f"{self.name}: buckets belong to histograms, and every histogram needs them")


def _supervisor(name: str, type_: str, labels: tuple[str, ...], help_: str, key: str) -> HealthMetric:
    return HealthMetric(name, type_, labels, help_, SUPERVISOR, key)


#: Figures the supervisor keeps itself: per process (the processes it runs, known from the first scrape) and
#: those it counts while routing readings. The per-process values are filled in for every supervised process.
SUPERVISOR_METRICS: tuple[HealthMetric, ...] = (
    HealthMetric("rctmon_build_info", "gauge", ("version",), "rctmon version; value always 1", SUPERVISOR,
                 "build_info", known=((__version__,),)),
    _supervisor("rctmon_process_up", "gauge", ("process",), "1 while the child process runs", "up"),
    _supervisor("rctmon_process_restarts_total", "counter", ("process",), "Times the supervisor restarted the child",
                "restarts"),
    _supervisor("rctmon_process_resident_memory_bytes", "gauge", ("process",), "Resident memory of the process",
                "resident_memory_bytes"),
    _supervisor("rctmon_process_cpu_seconds_total", "counter", ("process",), "CPU time the process has used",
                "cpu_seconds"),
    _supervisor("rctmon_readings_dropped_total", "counter", ("process", "reason"),
                "Readings dropped on their way to or from the process, by reason (backlog_full, channel_full, "
                "send_failed)", "readings_dropped"),
    _supervisor("rctmon_messages_dropped_total", "counter", ("process", "message"),
                "Messages other than readings that the channel to the process refused, by message (inventory, "
                "device_status, health, stop)", "messages_dropped"),
    _supervisor("rctmon_device_up", "gauge", (), "1 while the collector is connected to the inverter and it answers",
                "device_up"),
    _supervisor("rctmon_inventory_complete", "gauge", (), "1 once the inverter's inventory is fully discovered",
                "inventory_complete"),
    _supervisor("rctmon_readings_total", "counter", (), "Readings the collector has taken", "readings"),
    _supervisor("rctmon_last_reading_timestamp_seconds", "gauge", (), "When the collector last took a reading",
                "last_reading_seconds"),
)
