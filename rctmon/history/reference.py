"""The tables of docs/history.md, generated from the code: logger series, event types, event fields.

    python -m rctmon.history.reference          # print the tables, each between its markers

tests/test_history_docs.py checks that the page carries exactly these tables.
"""

from __future__ import annotations

from rctmon.history.events import EVENT_FIELDS, EVENT_TYPES, Layout
from rctmon.history.series import LOGGER_SERIES, NOT_IMPORTED, ValueKind

_KIND_TEXT = {
    ValueKind.AVERAGE: "average power over the step",
    ValueKind.LEVEL: "level, once per step",
    ValueKind.ENERGY: "energy of the period",
}
_LAYOUT_TEXT = {
    Layout.RANGED: "end stamp · unknown · unknown",
    Layout.VOLTAGE: "end stamp · voltage (float, V) · ignored",
    Layout.FREQUENCY: "end stamp · frequency (float, Hz) · ignored",
    Layout.CASE: "end stamp · case number · unknown",
    Layout.ERROR: "end stamp · error code · unknown",
    Layout.PARAMETER: "object id · old value · new value",
    Layout.UPDATE: "0 · old version · new version",
}


def series_markdown() -> str:
    """Return the table of every logger series rctmon imports."""
    out = ["| measurement | field | unit | kind | rctclient object | OpenMetrics name | meaning |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in LOGGER_SERIES:
        scale = " (Wh × 3600)" if row.scale != 1.0 else ""
        sign = " (magnitude)" if row.magnitude else ""
        out.append(f"| {row.resolution.measurement} | {row.field} | {row.unit.symbol}{scale}{sign} | "
                   f"{_KIND_TEXT[row.kind]} | `{row.object_name}` | `{row.metric}` | {row.help} |")
    return "\n".join(out) + "\n"


def not_imported_markdown() -> str:
    """Return the list of logger objects rctmon leaves out, and why."""
    return "".join(f"- `{name}`: {why}\n" for name, why in NOT_IMPORTED.items())


def event_types_markdown() -> str:
    """Return the table of event types (rctclient's documentation) and their fields."""
    out = ["| code | type | ranged | the three fields | what the app says |", "| --- | --- | --- | --- | --- |"]
    for t in EVENT_TYPES:
        out.append(f"| `{t.code}` | {t.name} | {'yes' if t.ranged else 'no'} | {_LAYOUT_TEXT[t.layout]} | "
                   f"{t.description} |")
    return "\n".join(out) + "\n"


def event_fields_markdown() -> str:
    """Return the table of the fields an `inverter_event` point can carry."""
    out = ["| field | type | meaning |", "| --- | --- | --- |"]
    out += [f"| {name} | {kind} | {meaning} |" for name, kind, meaning in EVENT_FIELDS]
    return "\n".join(out) + "\n"


#: marker name in docs/history.md -> the generator of what stands between its begin and end markers
TABLES = {
    "history-series": series_markdown,
    "history-not-imported": not_imported_markdown,
    "history-event-types": event_types_markdown,
    "history-event-fields": event_fields_markdown,
}


if __name__ == "__main__":
    for name, make in TABLES.items():
        print(f"<!-- {name}:begin -->\n{make()}<!-- {name}:end -->\n")
