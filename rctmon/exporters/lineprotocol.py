"""Readings -> InfluxDB line protocol, with the schema taken from the catalog.

One reading becomes one line:

    grid_phase,inverter=PS\\ 6.0,phase=2 power=-512.5 1732492800123456789

- measurement: `Row.measurement` (one per subsystem: inverter, generator, grid, ...)
- tags: `inverter` (the inverter's name) plus the series labels (generator, phase, module, sensor, word), sorted
  by key as InfluxDB prefers
- one field: `Row.field`, typed from the rctclient data type of the object so that a field never changes type
  (InfluxDB refuses a point whose field type differs from what the shard already holds): float for FLOAT objects
  and for integer objects that are scaled into a base unit, integer (`i` suffix) for the other integer objects,
  boolean, and string
- timestamp: the reading's own epoch nanoseconds (when its frame arrived), never the time of writing

The lines are what the spool stores, so draining the spool is a join and a POST, nothing more.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from collections.abc import Iterable

from rctclient.types import DataType

from rctmon.catalog import ABSURD_MAGNITUDE, SERIES_BY_ID, Series
from rctmon.inventory import Inventory
from rctmon.messages import Reading

#: Used as the `inverter` tag when the inverter has neither a name nor a serial number (a tag may not be empty).
FALLBACK_INVERTER = "unknown"

_INT_TYPES = {DataType.UINT8, DataType.INT8, DataType.UINT16, DataType.INT16, DataType.UINT32, DataType.INT32,
              DataType.ENUM}


class FieldType(enum.Enum):
    """The InfluxDB type of a field."""

    FLOAT = "float"
    INTEGER = "integer"
    BOOLEAN = "boolean"
    STRING = "string"


def field_type(series: Series) -> FieldType | None:
    """Return the InfluxDB type of a series' field, or None for object types rctmon does not export."""
    data_type = series.data_type
    if data_type is DataType.FLOAT:
        return FieldType.FLOAT
    if data_type in _INT_TYPES:
        # Scaled integers (e.g. Wh -> J) are no longer whole numbers in general.
        return FieldType.FLOAT if series.row.scale != 1.0 else FieldType.INTEGER
    if data_type is DataType.BOOL:
        return FieldType.BOOLEAN
    if data_type is DataType.STRING:
        return FieldType.STRING
    return None


def inverter_tag(inventory: Inventory) -> str | None:
    """Return the `inverter` tag value for an inventory, or None while the name is still unknown.

    The name is `android_description`; an inverter without one is tagged with its serial number, and one without
    either (only once the inventory is complete) with FALLBACK_INVERTER.
    """
    if inventory.name:
        return inventory.name
    if inventory.complete:
        return inventory.serial or FALLBACK_INVERTER
    return None


def _escape_key(text: str) -> str:
    """Escape a measurement, tag key, tag value or field key (commas, equals signs and spaces)."""
    text = "".join(" " if ch in "\n\r\t" else ch for ch in text)
    # A trailing backslash would escape the separator that follows it.
    text = text.rstrip("\\")
    return text.replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def _escape_string(text: str) -> str:
    """Quote a string field value; newlines end a line in line protocol, so they become spaces."""
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + text.replace("\n", " ").replace("\r", " ") + '"'


def format_value(kind: FieldType, value: object) -> str | None:
    """Return a converted value as a line-protocol field value, or None if it cannot be one (NaN, absurd, type)."""
    try:
        if kind is FieldType.FLOAT or kind is FieldType.INTEGER:
            if not isinstance(value, (int, float)):  # bool is an int: True -> 1
                return None
            if not math.isfinite(value) or abs(value) > ABSURD_MAGNITUDE:
                return None
            if kind is FieldType.FLOAT:
                return repr(float(value))
            if isinstance(value, float) and not value.is_integer():
                return None
            return f"{int(value)}i"
        if kind is FieldType.BOOLEAN:
            return "true" if value else "false"
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        return _escape_string(str(value))
    except (TypeError, ValueError, OverflowError):
        return None


@dataclass(frozen=True)
class _Template:
    prefix: bytes  # "measurement,tags field="
    kind: FieldType
    series: Series


class LineEncoder:
    """Turn readings into line-protocol lines for one inverter name; per-object templates are built once."""

    def __init__(self, inverter: str) -> None:
        self.inverter = inverter
        self._templates: dict[int, _Template | None] = {}
        self.unknown = 0  # readings of objects the catalog does not export (inventory probes): not points
        self.invalid = 0  # readings whose value cannot be a field (NaN, absurd, wrong type): dropped, counted

    def _template(self, object_id: int) -> _Template | None:
        if object_id in self._templates:
            return self._templates[object_id]
        series = SERIES_BY_ID.get(object_id)
        template = None
        if series is not None:
            kind = field_type(series)
            if kind is not None:
                template = _Template(line_prefix(series, self.inverter).encode("utf-8"), kind, series)
        self._templates[object_id] = template
        return template

    def encode(self, reading: Reading) -> bytes | None:
        """Return the line for one reading, or None (counted in `unknown` or `invalid`)."""
        object_id, raw, timestamp_ns = reading
        template = self._template(object_id)
        if template is None:
            self.unknown += 1
            return None
        value = format_value(template.kind, template.series.convert(raw))
        if value is None:
            self.invalid += 1
            return None
        return template.prefix + f"{value} {int(timestamp_ns)}".encode()

    def encode_all(self, readings: Iterable[Reading]) -> list[bytes]:
        """Return the lines of the readings that make points, in order."""
        lines = []
        for reading in readings:
            line = self.encode(reading)
            if line is not None:
                lines.append(line)
        return lines


def line_prefix(series: Series, inverter: str) -> str:
    """Return "measurement,tag=value,... field=" for a series on the named inverter."""
    tags = sorted((("inverter", inverter),) + series.labels)
    tag_text = "".join(f",{_escape_key(k)}={_escape_key(v)}" for k, v in tags)
    return f"{_escape_key(series.row.measurement)}{tag_text} {_escape_key(series.row.field)}="


#: Object ids whose readings become points (the others, e.g. inventory probes, are not part of the schema).
EXPORTED_IDS = frozenset(oid for oid, series in SERIES_BY_ID.items() if field_type(series) is not None)


_UNITS = (("_watts", "W"), ("_volts", "V"), ("_amperes", "A"), ("_hertz", "Hz"), ("_celsius", "°C"),
          ("_joules", "J"), ("_coulombs", "C"), ("_ratio", "0..1"))


def unit(series: Series) -> str:
    """Return the unit of a series' field (the base unit its Prometheus name declares), or "" for none."""
    name = series.row.metric
    for suffix in ("_total", "_info"):
        name = name[: -len(suffix)] if name.endswith(suffix) else name
    return next((symbol for suffix, symbol in _UNITS if name.endswith(suffix)), "")


@dataclass(frozen=True)
class SchemaRow:
    """One field of the documented schema."""

    measurement: str
    field: str
    type: FieldType
    unit: str
    tags: tuple[str, ...]
    present: str  # which part of the installation the field needs
    object_name: str  # the rctclient object ("{}" for the axis index)


def schema() -> list[SchemaRow]:
    """Return every field rctmon writes, in catalog order (one entry per catalog row)."""
    rows: list[SchemaRow] = []
    seen = set()
    for series in SERIES_BY_ID.values():
        row = series.row
        kind = field_type(series)
        if (row.measurement, row.field) in seen or kind is None:
            continue
        seen.add((row.measurement, row.field))
        tags = tuple(sorted(("inverter",) + tuple(k for k, _ in series.labels)))
        rows.append(SchemaRow(row.measurement, row.field, kind, unit(series), tags, row.needs.value,
                              row.object_name))
    return rows


def schema_markdown() -> str:
    """Return the schema as the Markdown table docs/influxdb.md carries between its schema markers."""
    out = ["| measurement | field | type | unit | tags | present when | rctclient object |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in schema():
        out.append(f"| {r.measurement} | {r.field} | {r.type.value} | {r.unit} | {', '.join(r.tags)} | "
                   f"{r.present} | `{r.object_name}` |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":  # print the table for docs/influxdb.md
    print(schema_markdown(), end="")
