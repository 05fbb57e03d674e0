"""rctmon's own health metrics: name, type, labels and help, declared once.

The prometheus exporter exposes exactly these (plus the catalog's inverter values when exposition is on); the
alert rules, the Grafana dashboard and docs/metrics.md are checked against this table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HealthMetric:
    name: str
    type: str  # gauge, counter, histogram, info
    labels: tuple[str, ...]
    help: str
    #: Whose figures these are. An optional exporter's metrics ("influxdb", "mqtt") are exposed only while that
    #: exporter is enabled, so that a disabled exporter never looks like a broken one; all others always are.
    source: str = "collector"


PROCESSES = ("collector", "prometheus", "influxdb", "mqtt")

HEALTH_METRICS: tuple[HealthMetric, ...] = (
    HealthMetric("rctmon_build_info", "gauge", ("version",), "rctmon version; value always 1", source="rctmon"),
    HealthMetric("rctmon_device_up", "gauge", (), "1 while the collector is connected to the inverter and it answers"),
    HealthMetric("rctmon_device_connects_total", "counter", (), "TCP connections opened to the inverter"),
    HealthMetric("rctmon_frames_sent_total", "counter", (), "Request frames sent to the inverter"),
    HealthMetric("rctmon_frames_received_total", "counter", (), "Valid frames received from the inverter"),
    HealthMetric("rctmon_bytes_sent_total", "counter", (), "Bytes sent to the inverter"),
    HealthMetric("rctmon_bytes_received_total", "counter", (), "Bytes received from the inverter"),
    HealthMetric("rctmon_decode_errors_total", "counter", ("kind",),
                 ("Received bytes or frames skipped, by kind (garbage, crc, truncated, absurd_length, unknown_object, "
                  "plant_frame, not_response, bad_payload, absurd_value)")),
    HealthMetric("rctmon_request_timeouts_total", "counter", (), "Requests the inverter did not answer in time"),
    HealthMetric("rctmon_response_seconds", "histogram", (), "Time from sending a request to its answer"),
    HealthMetric("rctmon_inventory_complete", "gauge", (), "1 once the inverter's inventory is fully discovered"),
    HealthMetric("rctmon_readings_total", "counter", (), "Readings the collector has taken"),
    HealthMetric("rctmon_last_reading_timestamp_seconds", "gauge", (), "When the collector last took a reading"),
    HealthMetric("rctmon_process_up", "gauge", ("process",), "1 while the child process runs",
                 source="supervisor"),
    HealthMetric("rctmon_process_restarts_total", "counter", ("process",), "Times the supervisor restarted the child",
                 source="supervisor"),
    HealthMetric("rctmon_process_resident_memory_bytes", "gauge", ("process",), "Resident memory of the process",
                 source="supervisor"),
    HealthMetric("rctmon_process_cpu_seconds_total", "counter", ("process",), "CPU time the process has used",
                 source="supervisor"),
    HealthMetric("rctmon_readings_dropped_total", "counter", ("process",),
                 "Readings the supervisor could not hand to the child (its backlog was full)", source="supervisor"),
    HealthMetric("rctmon_influxdb_points_written_total", "counter", (), "Points InfluxDB accepted",
                 source="influxdb"),
    HealthMetric("rctmon_influxdb_write_errors_total", "counter", ("kind",),
                 "Failed writes to InfluxDB, by kind (connection, timeout, server, rate_limited, unauthorized, "
                 "forbidden, not_found, rejected, http_<status>, other)", source="influxdb"),
    HealthMetric("rctmon_influxdb_spool_points", "gauge", (), "Points in the spool waiting for InfluxDB",
                 source="influxdb"),
    HealthMetric("rctmon_influxdb_points_dropped_total", "counter", (),
                 "Points dropped: oldest points when the spool was full, lines InfluxDB rejected as malformed, and "
                 "readings whose value cannot be stored (NaN, infinite, absurd)",
                 source="influxdb"),
    HealthMetric("rctmon_influxdb_last_write_timestamp_seconds", "gauge", (), "When InfluxDB last accepted a write",
                 source="influxdb"),
    HealthMetric("rctmon_mqtt_connected", "gauge", (), "1 while connected to the MQTT broker", source="mqtt"),
    HealthMetric("rctmon_mqtt_messages_published_total", "counter", (), "MQTT messages published", source="mqtt"),
    HealthMetric("rctmon_mqtt_publish_errors_total", "counter", (), "MQTT publishes that failed", source="mqtt"),
)
