"""The child registrations: contradictions fail at registration, and declared label values match the code."""

from __future__ import annotations

import pytest

from rctmon.child import load_job
from rctmon.collector.framer import DECODE_ERROR_KINDS
from rctmon.exporters import influxwriter
from rctmon.health_metrics import HealthMetric
from rctmon.registry import CHILDREN, HEALTH_METRICS, INFLUXDB_WRITE_ERROR_KINDS, ChildSpec


def spec(**fields: object) -> ChildSpec:
    return ChildSpec("thing", "rctmon.exporters.thing:Job", enabled=lambda c: True, settings=lambda c: None,
                     **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("fields, problem", [
    ({"readings": True}, "must acknowledge them or get the latest replayed"),
    ({"health_metrics": (HealthMetric("rctmon_x", "gauge", (), "x", "other", "x"),)}, "must name this child"),
    ({"drops": ("lost_somewhere",)}, "drop reasons"),
])
def test_a_registration_that_contradicts_itself_fails_at_once(fields: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        spec(**fields)


def test_every_registered_job_can_be_loaded() -> None:
    for child in CHILDREN:
        assert callable(load_job(child))


def test_metric_names_are_unique_and_labels_known_in_advance_are_declared() -> None:
    names = [metric.name for metric in HEALTH_METRICS]
    assert len(names) == len(set(names))
    known = {metric.name: {values[0] for values in metric.known} for metric in HEALTH_METRICS}
    assert known["rctmon_decode_errors_total"] == set(DECODE_ERROR_KINDS)
    assert known["rctmon_influxdb_write_errors_total"] == set(INFLUXDB_WRITE_ERROR_KINDS)


class _Status(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


@pytest.mark.parametrize("error", [
    ConnectionRefusedError("refused"), TimeoutError("slow"), RuntimeError("odd"),
    *(_Status(status) for status in (400, 401, 403, 404, 413, 422, 429, 500, 503)),
])
def test_every_write_error_kind_the_writer_counts_is_declared(error: BaseException) -> None:
    kind = influxwriter.classify(error).kind
    assert kind in INFLUXDB_WRITE_ERROR_KINDS or kind.startswith("http_"), kind


def test_an_unusual_refusal_is_counted_as_its_status() -> None:
    assert influxwriter.classify(_Status(418)).kind == "http_418"
