"""Readings -> InfluxDB line protocol, with the schema taken from the catalog.

A reading of one value becomes one line:

    grid_phase,inverter=PS\\ 6.0,phase=2 power=-512.5 1732492800123456789

- measurement: `Row.measurement` (one per subsystem: inverter, generator, grid, ...)
- tags: `inverter` (the inverter's name) plus the series labels (generator, phase, module, cell, sensor, pole,
  word), sorted by key as InfluxDB prefers
- field: `Row.field`, typed from the rctclient data type of the object so that a field never changes type
  (InfluxDB refuses a point whose field type differs from what the shard already holds): float for FLOAT objects,
  for integer objects that are scaled into a base unit and for cell values, integer (`i` suffix) for the other
  integer objects, boolean, and string
- value: in the base unit, as `catalog.Series.samples` gives it; values the catalog finds implausible are dropped
  and counted, like values of the wrong type
- timestamp: the reading's own epoch nanoseconds (when its frame arrived), never the time of writing

A reading of a module's cells becomes one line per cell with every field taken from that object
(`battery_cell,cell=3,inverter=...,module=0 temperature=25.0,voltage=3.318 ...`) and one line of the module's
summaries (`battery_module,... cell_voltage_max=...,cell_voltage_min=...,cell_voltage_spread=...`).

The lines are what the spool stores, so draining the spool is a join and a POST, nothing more.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from collections.abc import Iterable

from rctclient.types import DataType

from rctmon.catalog import OBJECTS, SERIES, Labels, Series
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
    if series.elements is not None:
        return FieldType.FLOAT  # cell values are measurements, whatever width the inverter sends them in
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
    """Return a plausible value (catalog.plausible) as a field value of its type, or None if it cannot be one.

    What is plausible is the catalog's decision; what is left here is the type: a fraction where the field holds
    integers, or a string where it holds numbers, cannot be written.
    """
    if kind is FieldType.FLOAT or kind is FieldType.INTEGER:
        if not isinstance(value, (int, float)):  # bool is an int: True -> 1
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


@dataclass(frozen=True)
class _Field:
    series: Series
    kind: FieldType
    key: str  # "field="
    counted: bool  # its dropped values count as invalid (a summary's do not: its cells were counted)


class LineEncoder:
    """Turn readings into line-protocol lines for one inverter name; per-object fields are looked up once.

    A reading of one value is one line. A reading of a module's cells is one line per cell, carrying every field
    the catalog takes from that object (`battery_cell,...,cell=3 temperature=25.0,voltage=3.318`), plus one line
    of the module's summaries.
    """

    def __init__(self, inverter: str) -> None:
        self.inverter = inverter
        self._fields: dict[int, tuple[_Field, ...]] = {}
        self._prefixes: dict[tuple[str, Labels], str] = {}
        self.unknown = 0  # readings of objects the catalog does not export (inventory probes): not points
        self.invalid = 0  # values that cannot be a field (implausible, wrong type): dropped, counted

    def _fields_of(self, object_id: int) -> tuple[_Field, ...]:
        fields = self._fields.get(object_id)
        if fields is None:
            fields = tuple(_Field(s, kind, _escape_key(s.row.field) + "=", s.row.summary is None)
                           for s in OBJECTS.get(object_id, ()) if (kind := field_type(s)) is not None)
            self._fields[object_id] = fields
        return fields

    def _prefix(self, measurement: str, labels: Labels) -> str:
        key = (measurement, labels)
        prefix = self._prefixes.get(key)
        if prefix is None:
            prefix = self._prefixes[key] = line_prefix(measurement, labels, self.inverter)
        return prefix

    def encode(self, reading: Reading) -> list[bytes]:
        """Return the lines of one reading (none: counted in `unknown` or `invalid`)."""
        object_id, raw, timestamp_ns = reading
        fields = self._fields_of(object_id)
        if not fields:
            self.unknown += 1
            return []
        lines: dict[str, list[str]] = {}
        for f in fields:
            samples = f.series.samples(raw)
            if f.counted:
                self.invalid += len(f.series.sample_labels) - len(samples)
            for labels, value in samples:
                text = format_value(f.kind, value)
                if text is None:
                    self.invalid += 1
                    continue
                lines.setdefault(self._prefix(f.series.row.measurement, labels), []).append(f.key + text)
        stamp = f" {int(timestamp_ns)}"
        return [(prefix + ",".join(values) + stamp).encode() for prefix, values in lines.items()]

    def encode_all(self, readings: Iterable[Reading]) -> list[bytes]:
        """Return the lines of the readings that make points, in order."""
        lines: list[bytes] = []
        for reading in readings:
            lines += self.encode(reading)
        return lines


def line_prefix(measurement: str, labels: Labels, inverter: str) -> str:
    """Return "measurement,tag=value,... " for a sample with these labels on the named inverter."""
    tags = sorted((("inverter", inverter),) + labels)
    tag_text = "".join(f",{_escape_key(k)}={_escape_key(v)}" for k, v in tags)
    return f"{_escape_key(measurement)}{tag_text} "


#: Object ids whose readings become points (the others, e.g. inventory probes, are not part of the schema).
EXPORTED_IDS = frozenset(oid for oid, series in OBJECTS.items() if any(field_type(s) is not None for s in series))


def unit(series: Series) -> str:
    """Return the unit of a series' field (the base unit its Prometheus name declares), or "" for none."""
    base = series.row.unit
    return base.symbol if base else ""


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
    for series in SERIES:
        row = series.row
        kind = field_type(series)
        if (row.measurement, row.field) in seen or kind is None:
            continue
        seen.add((row.measurement, row.field))
        tags = tuple(sorted(("inverter",) + series.label_names))
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
