"""The reference tables of docs/, rendered from the catalog: what each inverter value is called everywhere.

`python -m rctmon.reference` rewrites the marked sections of docs/metrics.md (the inverter values, and what each
object the older rctmon reads became), docs/influxdb.md (the schema) and docs/mqtt.md (the topics and Home
Assistant entities); `python -m rctmon.reference --check` fails when one differs. Tests do the same check, so the
pages cannot drift from the catalog.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from rctmon import catalog
from rctmon.catalog import Kind, Row, Series
from rctmon.inventory import (GENERATOR_OBJECTS, IDENTITY_OBJECTS, IO_USAGE_OBJECTS, MODULE_OBJECTS, NAME_OBJECT,
                              POWER_SWITCH_OBJECT)

NONE = "—"
REPO = Path(__file__).resolve().parent.parent
#: What the older rctmon (svalouch/rctmon) reads, copied from its source; see the file's header.
OLDER_OBJECTS = REPO / "tests" / "fixtures" / "older-rctmon-objects.tsv"

#: docs/metrics.md's sections of inverter values: a title and the InfluxDB measurements whose families it lists.
SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Inverter", ("inverter",)),
    ("Solar generators", ("generator",)),
    ("External generator", ("external",)),
    ("Grid", ("grid", "grid_phase")),
    ("Household", ("household", "household_phase")),
    ("Battery", ("battery",)),
    ("Battery modules", ("battery_module",)),
    ("Battery cells", ("battery_cell",)),
    ("Power Switch", ("power_switch", "power_switch_phase")),
)
#: Unit conversions, as the reference explains them: (scale, base unit) -> what the inverter sends and the factor.
CONVERSIONS: Mapping[tuple[float, str], tuple[str, str]] = {
    (catalog.WH_TO_J, "joules"): ("Wh", "Wh × 3600"),
    (catalog.AH_TO_C, "coulombs"): ("Ah", "Ah × 3600"),
    (catalog.MILLI, "volts"): ("mV", "mV ÷ 1000"),
    (catalog.MILLI, "ohms"): ("mΩ", "mΩ ÷ 1000"),
}
SUMMARIES: Mapping[catalog.Summary, str] = {
    catalog.Summary.MIN: "the lowest of the module's cells",
    catalog.Summary.MAX: "the highest of the module's cells",
    catalog.Summary.SPREAD: "the highest minus the lowest of the module's cells",
}
#: What the inventory does with the objects it reads (they decide which series exist rather than being one).
INVENTORY_ROLES: Mapping[str, str] = {
    **{name: "inventory: whether generator " + g + "'s series (`generator=\"" + g + "\"`) exist"
       for name, g in zip(GENERATOR_OBJECTS, ("a", "b"))},
    **{name: f"inventory: whether battery module {i}'s series (`module=\"{i}\"`) exist"
       for i, name in enumerate(MODULE_OBJECTS)},
    POWER_SWITCH_OBJECT: "inventory: whether the `rctmon_power_switch_*` series exist",
    **{name: "inventory: whether the `rctmon_external_*` series exist (usage 10: S0 external power)"
       for name in IO_USAGE_OBJECTS},
}


# --- docs/metrics.md: the inverter values --------------------------------------------------------------------------


def _span(row: Row) -> str:
    """Return the row's object name with its axis written as a range, e.g. `battery.cells[0..6]`."""
    if row.axis is None:
        return row.object_name
    return row.object_name.format(f"0..{len(row.axis.values) - 1}")


def _labels(rows: Sequence[Row], series: Series) -> list[str]:
    if rows[0].kind is Kind.INFO:
        return ["inverter"] + ([rows[0].axis.label] if rows[0].axis else []) + [r.field for r in rows]
    return ["inverter", *series.label_names]


def _sources(rows: Sequence[Row]) -> str:
    if rows[0].kind is Kind.INFO:
        return "Labels from " + ", ".join(f"`{r.field}`: `{_span(r)}`" for r in rows) + "."
    if len(rows) == 1:
        row = rows[0]
        if row.summary is not None:
            return f"From `{_span(row)}`: {SUMMARIES[row.summary]}."
        return f"From `{_span(row)}`" + (", one value per cell." if row.per_element else ".")
    return "From " + ", ".join(
        ",".join(f"{k}={v}" for k, v in r.labels) + f": `{_span(r)}`" for r in rows) + "."


def _notes(row: Row) -> str:
    notes = []
    unit = row.unit
    if row.scale != 1.0 and unit is not None:
        sent, factor = CONVERSIONS[(row.scale, unit.word)]
        notes.append(f"The inverter reports {sent}; exposed in {unit.word} ({factor}).")
    if row.magnitude:
        notes.append("Exposed positive (magnitude).")
    return "".join(" " + note for note in notes)


def _family_line(name: str, rows: Sequence[Row], tiers: str) -> str:
    series = next(s for s in catalog.SERIES if s.metric == name)
    unit = rows[0].unit
    labels = ", ".join(f"`{label}`" for label in _labels(rows, series))
    meaning = f"{rows[0].help}. {_sources(rows)}{_notes(rows[0])}"
    return f"| `{name}` | {rows[0].kind.value} | {unit.word if unit else NONE} | {labels} | {tiers} | {meaning} |"


def metrics_markdown() -> str:
    """Return the inverter-value tables of docs/metrics.md, one per section."""
    families = catalog.metric_families()
    out: list[str] = []
    for title, measurements in SECTIONS:
        names = [name for name, rows in families.items() if rows[0].measurement in measurements]
        if not names:
            continue
        out += [f"### {title}", "", "| Name | Type | Unit | Labels | Tier | Meaning |", "|---|---|---|---|---|---|"]
        for name in names:
            rows = families[name]
            tiers = ", ".join(t.value for t in catalog.Tier if any(r.tier is t for r in rows))
            out.append(_family_line(name, rows, tiers))
        out.append("")
    placed = {m for _, measurements in SECTIONS for m in measurements}
    unplaced = sorted({rows[0].measurement for rows in families.values()} - placed)
    if unplaced:
        raise ValueError(f"reference: no section of docs/metrics.md for the measurements {unplaced}")
    return "\n".join(out)


# --- docs/metrics.md: the objects the older rctmon reads -----------------------------------------------------------


def older_objects(path: Path = OLDER_OBJECTS) -> list[tuple[str, str]]:
    """Return (object name, file of the older rctmon that reads it) from the copied list."""
    with open(path, encoding="utf-8") as f:
        return [(row[0], row[1]) for row in csv.reader(f, delimiter="\t") if row and not row[0].startswith("#")]


def appears_as(object_name: str) -> str:
    """Return how rctmon shows an object: its series (metric and labels), or what the inventory makes of it."""
    if object_name in INVENTORY_ROLES:
        return INVENTORY_ROLES[object_name]
    series = catalog.SERIES_BY_NAME.get(object_name)
    if series is None:
        if object_name in (NAME_OBJECT,) + IDENTITY_OBJECTS:
            raise ValueError(f"reference: {object_name} should be a catalog row")
        return NONE
    shown = []
    for s in catalog.OBJECTS[series.object_id]:
        labels = [f'{k}="{v}"' for k, v in s.labels]
        if s.row.kind is Kind.INFO:
            labels.append(f"{s.row.field}=…")
        elif s.row.per_element:
            labels.append('cell="0".."23"')
        shown.append(f"`{s.metric}{{{','.join(labels)}}}`" if labels else f"`{s.metric}`")
    return ", ".join(shown)


def older_markdown(objects: Iterable[tuple[str, str]]) -> str:
    """Return the table of docs/metrics.md that says what became of each object the older rctmon reads."""
    out = ["| Object | Read by (older rctmon) | rctmon series |", "|---|---|---|"]
    for name, where in objects:
        out.append(f"| `{name}` | `{where}` | {appears_as(name)} |")
    return "\n".join(out) + "\n"


# --- docs/mqtt.md: topics and Home Assistant entities --------------------------------------------------------------


def _topic_pattern(row: Row, series: Series) -> str:
    parts = (row.measurement, f"<{row.axis.label}>" if row.axis else None,
             f"<{series.elements.axis.label}>" if row.per_element and series.elements else None, row.field)
    return "/".join(p for p in parts if p)


def topics_markdown() -> str:
    """Return the table of docs/mqtt.md: every topic (one per catalog row, with its indexes) and its entity."""
    from rctmon.exporters import homeassistant as ha

    out = ["| topic below the prefix | unit | Home Assistant entity (the first) | device | device_class | "
           "state_class | enabled |", "|---|---|---|---|---|---|---|"]
    for row in catalog.ROWS:
        series = next(s for s in catalog.SERIES if s.row is row)
        unit = row.display_unit
        device = ha.DEVICES[ha.PLACEMENTS.get(row.measurement, ha.Placement("inverter", "")).device].model
        out.append(f"| `{_topic_pattern(row, series)}` | {unit.symbol if unit else ''} | "
                   f"{ha.entity_name(series, series.sample_labels[0])} | {device} | {row.device_class or ''} | "
                   f"{row.state_class or ''} | {'no' if row.per_element else 'yes'} |")
    return "\n".join(out) + "\n"


# --- rewriting the pages -------------------------------------------------------------------------------------------


def _section(doc: str, marker: str) -> re.Match[str] | None:
    return re.search(rf"(<!-- {marker}:begin -->\n)(.*?)(<!-- {marker}:end -->)", doc, re.S)


def marked(doc: str, marker: str) -> str:
    """Return the text between `<!-- marker:begin -->` and `<!-- marker:end -->` of a page."""
    match = _section(doc, marker)
    if match is None:
        raise ValueError(f"no {marker} markers")
    return match.group(2)


def _replace(doc: str, marker: str, text: str) -> str:
    match = _section(doc, marker)
    if match is None:
        raise ValueError(f"no {marker} markers")
    return doc[:match.start(2)] + text + doc[match.end(2):]


def sections() -> dict[tuple[str, str], Callable[[], str]]:
    """Return {(page, marker): renderer} of every generated section."""
    from rctmon.exporters import lineprotocol

    return {
        ("docs/metrics.md", "catalog"): metrics_markdown,
        ("docs/metrics.md", "older"): lambda: older_markdown(older_objects()),
        ("docs/influxdb.md", "schema"): lineprotocol.schema_markdown,
        ("docs/mqtt.md", "topics"): topics_markdown,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rctmon.reference", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report pages that differ; exit 1 if any")
    args = parser.parse_args(argv)
    stale = []
    for (page, marker), render in sections().items():
        path = REPO / page
        doc = path.read_text(encoding="utf-8")
        new = _replace(doc, marker, render())
        if new != doc:
            stale.append(f"{page} ({marker})")
            if not args.check:
                path.write_text(new, encoding="utf-8")
    if stale:
        print(("differs: " if args.check else "rewrote: ") + ", ".join(stale))
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
