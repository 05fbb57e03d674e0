"""The generated reference tables of docs/ are what the catalog says (regenerate: python -m rctmon.reference)."""

from __future__ import annotations

import re

import pytest
from rctclient.registry import REGISTRY

import support
from rctmon import catalog, reference
from test_simulator_older import ALL as SIMULATED_OLDER_OBJECTS


@pytest.mark.parametrize("page, marker", sorted(reference.sections()))
def test_every_generated_section_is_current(page: str, marker: str) -> None:
    with open(f"{support.REPO}/{page}", encoding="utf-8") as f:
        doc = f.read()
    assert reference.marked(doc, marker) == reference.sections()[(page, marker)](), \
        f"{page} ({marker}) differs from the catalog: run python -m rctmon.reference"


def older_rows() -> dict[str, str]:
    with open(f"{support.REPO}/docs/metrics.md", encoding="utf-8") as f:
        table = reference.marked(f.read(), "older")
    rows = [re.match(r"^\| `([^`]+)` \| `[^`]+` \| (.+) \|$", line) for line in table.splitlines()[2:]]
    assert all(rows), "a row of the older rctmon table is not | `object` | `file` | series |"
    return {m.group(1): m.group(2) for m in rows if m}


def test_every_object_the_older_rctmon_reads_is_in_the_table_as_a_series_or_the_inventory() -> None:
    listed = [name for name, _ in reference.older_objects()]
    assert len(listed) == len(set(listed)) == 102
    assert set(listed) == set(SIMULATED_OLDER_OBJECTS)  # the simulator answers the same list
    rows = older_rows()
    assert list(rows) == listed
    for name, shown in rows.items():
        REGISTRY.get_by_name(name)
        assert shown != reference.NONE, f"{name}: the older rctmon reads it, rctmon does not"
        series = catalog.SERIES_BY_NAME.get(name)
        if series is None:
            assert shown.startswith("inventory: "), name
        else:
            assert all(f"`{s.metric}" in shown for s in catalog.OBJECTS[series.object_id]), name


def test_the_values_the_issue_names_are_among_them() -> None:
    rows = older_rows()
    assert rows["iso_struct.Rp"] == '`rctmon_inverter_insulation_resistance_ohms{pole="positive"}`'
    assert rows["battery.efficiency"] == "`rctmon_battery_efficiency_ratio`"
    assert rows["battery.bat_impedance.impedance_fine"] == "`rctmon_battery_impedance_ohms`"
    assert rows["battery.status2"] == "`rctmon_battery_extra_status`"


def test_every_inverter_family_has_a_row_in_the_metrics_reference() -> None:
    text = reference.metrics_markdown()
    for name in catalog.metric_families():
        assert text.count(f"| `{name}` |") == 1, name
