"""docs/metrics.md lists exactly what the endpoint exposes: checked against a real scrape, so it cannot drift.

The exporter runs with exposition on, InfluxDB and MQTT enabled and an inverter with everything attached (two
generators, a battery with modules, a Power Switch), and is fed a reading for every catalog series and a health
report with every counter set: then every family rctmon can expose is on the page.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import pytest

import support
from rctmon import catalog
from rctmon.exporters import prometheus_events
from rctmon.exporters.prometheus import FAMILIES, unit_of
from rctmon.history.events import Event
from rctmon.history.protocol import RawEvent
from rctmon.messages import InverterEvents
from rctmon.health_metrics import DROP_REASONS
from rctmon.registry import HEALTH_METRICS
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from test_prometheus_exporter import INVENTORY, full_batch, full_health, make_config, start_exporter

__all__ = ["start_exporter"]  # the fixture, imported so that pytest finds it here

pytestmark = pytest.mark.timeout(30)

DOC = os.path.join(support.REPO, "docs", "metrics.md")
ROW = re.compile(r"^\| `(?P<name>rctmon_\w+)` \| (?P<type>[a-z]+) \| (?P<unit>[^|]+?) \| (?P<labels>[^|]+?) "
                 r"\| (?P<tier>[^|]+?) \| (?P<meaning>[^|]+?) \|$")
NONE = "—"
OPENMETRICS = {"Accept": "application/openmetrics-text; version=1.0.0"}  # tells info from gauge, unlike text 0.0.4
SUFFIX = {"counter": "_total", "info": "_info"}  # which OpenMetrics leaves off the family name


@dataclass(frozen=True)
class DocRow:
    name: str
    type: str
    unit: str
    labels: tuple[str, ...]
    tier: str
    meaning: str


def doc_rows() -> dict[str, DocRow]:
    rows: dict[str, DocRow] = {}
    with open(DOC, encoding="utf-8") as doc:
        for number, line in enumerate(doc, 1):
            if not line.startswith("| `rctmon_"):
                continue
            match = ROW.match(line.rstrip("\n"))
            assert match, f"docs/metrics.md:{number}: not a row of six columns: {line!r}"
            labels = tuple(re.findall(r"`(\w+)`", match["labels"]))
            assert labels or match["labels"] == NONE, f"docs/metrics.md:{number}: labels"
            row = DocRow(match["name"], match["type"], match["unit"], labels, match["tier"], match["meaning"])
            assert row.name not in rows, f"docs/metrics.md:{number}: {row.name} listed twice"
            rows[row.name] = row
    return rows


def expected_type(name: str) -> str:
    """Return the type the documentation should give: the catalog's kind or the health table's type."""
    health = {m.name: m.type for m in HEALTH_METRICS}
    health.update((family, kind) for family, kind, *_ in prometheus_events.FAMILIES)
    if name in health:
        return health[name]
    return catalog.metric_families()[name][0].kind.value


def expected_tier(name: str) -> str:
    tiers = {f.name: ", ".join(t.value for t in f.tiers) for f in FAMILIES}
    tiers.update((family, tier) for family, _, _, _, tier in prometheus_events.FAMILIES)
    return tiers.get(name, NONE)


def families(text: str) -> dict[str, object]:
    """Return the families of an OpenMetrics exposition by the name their samples carry."""
    return {f.name + SUFFIX.get(f.type, ""): f for f in text_string_to_metric_families(text)}


@pytest.fixture
def full_scrape(start_exporter) -> dict[str, object]:
    exporter = start_exporter(make_config(exposition=True, influxdb=True, mqtt=True))
    event = Event(RawEvent(ord("Z"), 1_700_000_000, 1_700_000_000, 0, 0, 0), "NO_GRID", 1_700_000_000, None)
    exporter.send(full_health(), INVENTORY, full_batch(), InverterEvents((event,), new=True, seq=2))
    every = (set(catalog.metric_families()) | {m.name for m in HEALTH_METRICS}
             | {name for name, *_ in prometheus_events.FAMILIES})
    return support.wait_for(
        lambda: (found := families(exporter.metrics(OPENMETRICS))) and set(found) >= every and found, 10,
        message="every family in the exposition")


def test_the_reference_lists_every_exposed_family_and_nothing_else(full_scrape):
    documented = doc_rows()
    missing = sorted(set(full_scrape) - set(documented))
    extra = sorted(set(documented) - set(full_scrape))
    assert (missing, extra) == ([], []), \
        f"exposed but not in docs/metrics.md: {missing}; in docs/metrics.md but not exposed: {extra}"


def test_the_reference_gives_each_family_its_type_unit_labels_and_tier(full_scrape):
    problems: list[str] = []
    for name, row in doc_rows().items():
        family = full_scrape.get(name)
        if family is None:
            continue  # reported by the test above
        if not row.type == family.type == expected_type(name):
            problems.append(f"{name}: documented as {row.type}, exposed as {family.type}, "
                            f"declared as {expected_type(name)}")
        labels = {k for s in family.samples for k in s.labels if k != "le"}
        if set(row.labels) != labels:
            problems.append(f"{name}: documented labels {sorted(row.labels)}, exposed {sorted(labels)}")
        if unit_of(name) and row.unit != unit_of(name):
            problems.append(f"{name}: documented unit {row.unit!r}, the name says {unit_of(name)!r}")
        if row.tier != expected_tier(name):
            problems.append(f"{name}: documented tier {row.tier!r}, the catalog says {expected_tier(name)!r}")
    assert problems == []


def test_every_inverter_family_says_its_values_are_cached(full_scrape):
    for name in catalog.metric_families():
        assert "(cached; read every " in full_scrape[name].documentation, name


def test_the_reference_explains_every_reason_readings_are_dropped():
    with open(DOC, encoding="utf-8") as doc:
        reasons = {match for line in doc for match in re.findall(r"^\| `(\w+)` \|", line)}
    assert set(DROP_REASONS) <= reasons
