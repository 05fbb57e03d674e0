"""The inverter's event table, decoded: one declarative row per known event type.

Each row of the table is five 4-byte fields: the type (one ASCII character), the start (or the moment) as a stamp,
and three fields whose meaning depends on the type. rctclient's documentation (protocol_event_table) lists the
types its authors have seen, with the name the vendor's app shows and what the fields carry; `EVENT_TYPES` is that
table. A ranged event carries its end stamp in the first field; a parameter change the changed object's id and its
old and new value (raw, to be decoded by the object's type); an update the old and new software version.

Types the table does not know are kept, not dropped: they are named `UNKNOWN_<hex code>` and carry their three raw
fields like every event.
"""

from __future__ import annotations

import enum
import math
import struct
from dataclasses import dataclass, field
from typing import Union
from collections.abc import Mapping

from rctclient.registry import REGISTRY
from rctclient.types import DataType

from rctmon.history.protocol import RawEvent
from rctmon.history.timezone import InverterClock

#: The longest an event may last before its end field is taken for something else (a stuck or garbled end).
MAX_DURATION = 366 * 86_400

FieldValue = Union[int, float, str]


class Layout(enum.Enum):
    """What the three type-specific fields of a row carry."""

    RANGED = "ranged"  # end stamp; two fields of unknown meaning
    VOLTAGE = "voltage"  # end stamp; a voltage (float); one field ignored
    FREQUENCY = "frequency"  # end stamp; a frequency (float); one field ignored
    CASE = "case"  # end stamp; a case number; one field of unknown meaning
    ERROR = "error"  # end stamp; an error code; one field of unknown meaning
    PARAMETER = "parameter"  # the object id changed, its old value, its new value (raw)
    UPDATE = "update"  # 0, the old software version, the new one


@dataclass(frozen=True)
class EventType:
    """One event type as rctclient documents it."""

    code: str  # the type character
    name: str  # rctclient's name, the `type` tag
    layout: Layout
    description: str  # what the vendor's app says

    @property
    def ranged(self) -> bool:
        return self.layout not in (Layout.PARAMETER, Layout.UPDATE)


EVENT_TYPES: tuple[EventType, ...] = (
    EventType("c", "PHASE_POS", Layout.CASE, "Phase position error (not 120° as expected)"),
    EventType("d", "BAT_OVERVOLTAGE", Layout.VOLTAGE, "Battery overvoltage"),
    EventType("k", "CAN_TIMEOUT", Layout.RANGED, "CAN communication timeout with battery"),
    EventType("r", "BAT_INTERN", Layout.ERROR, "Internal battery error"),
    EventType("s", "PRM_CHANGE", Layout.PARAMETER, "Parameter changed"),
    EventType("v", "RESET", Layout.RANGED, "System start"),
    EventType("w", "UPDATE", Layout.UPDATE, "Update"),
    EventType("y", "FRT_UNDERVOLTAGE", Layout.RANGED, "FRT under-voltage"),
    EventType("x", "FRT_OVERVOLTAGE", Layout.RANGED, "FRT over-voltage"),
    EventType("O", "SW_ON_UMIN_L1", Layout.VOLTAGE, "Switching on conditions Umin phase 1"),
    EventType("P", "SW_ON_UMAX_L1", Layout.VOLTAGE, "Switching on conditions Umax phase 1"),
    EventType("R", "SW_ON_FMAX_L1", Layout.FREQUENCY, "Switching on conditions Fmax phase 1"),
    EventType("S", "SW_ON_UMIN_L2", Layout.VOLTAGE, "Switching on conditions Umin phase 2"),
    EventType("T", "SW_ON_UMAX_L2", Layout.VOLTAGE, "Switching on conditions Umax phase 2"),
    EventType("W", "SW_ON_UMIN_L3", Layout.VOLTAGE, "Switching on conditions Umin phase 3"),
    EventType("X", "SW_ON_UMAX_L3", Layout.VOLTAGE, "Switching on conditions Umax phase 3"),
    EventType("Y", "SURGE", Layout.RANGED, "Phase failure detected"),
    EventType("Z", "NO_GRID", Layout.CASE, "Loss of the power grid"),
)
EVENT_TYPES_BY_CODE: Mapping[int, EventType] = {ord(t.code): t for t in EVENT_TYPES}

#: The fields an `inverter_event` point can carry, with their InfluxDB type and meaning (docs/history.md).
EVENT_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("code", "string", "the type character the inverter sent"),
    ("end", "integer", "end of a ranged event (UNIX seconds; absent while it lasts or when the end is garbled)"),
    ("duration", "float", "seconds from start to end (ranged events)"),
    ("voltage", "float", "V: the voltage the event reports (battery overvoltage, switching-on conditions)"),
    ("frequency", "float", "Hz: the frequency the event reports (SW_ON_FMAX_L1)"),
    ("case", "integer", "the case number (PHASE_POS, NO_GRID)"),
    ("error_code", "integer", "the error code (BAT_INTERN)"),
    ("object", "string", "the parameter changed: its rctclient name, or its id in hex when unknown"),
    ("old_value", "string", "the parameter's old value, decoded by its type"),
    ("new_value", "string", "the parameter's new value, decoded by its type"),
    ("old_version", "integer", "the software version before an update"),
    ("new_version", "integer", "the software version after an update"),
    ("element2", "integer", "the first type-specific field, raw (kept for every event)"),
    ("element3", "integer", "the second type-specific field, raw"),
    ("element4", "integer", "the third type-specific field, raw"),
)


@dataclass(frozen=True)
class Event:
    """One event, decoded."""

    raw: RawEvent
    type: str  # the name (rctclient's), or UNKNOWN_<hex code>
    start: int  # true instant
    end: int | None  # true instant, for ranged events whose end makes sense
    fields: dict[str, FieldValue] = field(default_factory=dict)

    @property
    def duration(self) -> float | None:
        return None if self.end is None else float(self.end - self.start)


def type_name(code: int) -> str:
    """Return the name of an event type, or UNKNOWN_<hex> for one rctclient does not document."""
    known = EVENT_TYPES_BY_CODE.get(code)
    return known.name if known is not None else f"UNKNOWN_{code:02X}"


def _float(raw: int) -> float:
    return float(struct.unpack(">f", struct.pack(">I", raw))[0])


def float32_text(value: float) -> str:
    """Return the shortest text of a 4-byte float that reads back as the same 4-byte float (0.97, not 0.9700000286)."""
    if not math.isfinite(value):
        return repr(value)
    packed = struct.pack(">f", value)
    for digits in range(6, 10):
        text = f"{value:.{digits}g}"
        if struct.pack(">f", float(text)) == packed:
            return text
    return repr(value)


_REGISTRY_TYPES: Mapping[int, DataType] = {info.object_id: info.request_data_type for info in REGISTRY.all()}
_REGISTRY_NAMES: Mapping[int, str] = {info.object_id: info.name for info in REGISTRY.all()}
_SIGNED = {DataType.INT8: 8, DataType.INT16: 16, DataType.INT32: 32}


def parameter_value(object_id: int, raw: int) -> str:
    """Return a parameter's raw 4-byte value decoded by the object's registry type, as text."""
    data_type = _REGISTRY_TYPES.get(object_id)
    if data_type is DataType.FLOAT:
        return float32_text(_float(raw))
    if data_type is DataType.BOOL:
        return "true" if raw else "false"
    bits = _SIGNED.get(data_type) if data_type is not None else None
    if bits is not None:
        value = raw & ((1 << bits) - 1)
        return str(value - (1 << bits) if value >> (bits - 1) else value)
    return str(raw)


def decode(raw: RawEvent, clock: InverterClock) -> Event:
    """Return an event decoded by its type (unknown types with their raw fields only)."""
    fields: dict[str, FieldValue] = {"code": chr(raw.code) if 0x20 <= raw.code < 0x7F else f"{raw.code:#04x}",
                                     "element2": raw.element2, "element3": raw.element3, "element4": raw.element4}
    known = EVENT_TYPES_BY_CODE.get(raw.code)
    end = None
    if known is not None and known.ranged:
        end = clock.resolve_after(raw.element2, raw.instant) if raw.element2 else None
        if end is not None and end - raw.instant > MAX_DURATION:
            end = None
        if end is not None:
            fields["end"] = end
            fields["duration"] = float(end - raw.instant)
    layout = known.layout if known is not None else None
    if layout is Layout.VOLTAGE:
        fields["voltage"] = _float(raw.element3)
    elif layout is Layout.FREQUENCY:
        fields["frequency"] = _float(raw.element3)
    elif layout is Layout.CASE:
        fields["case"] = raw.element3
    elif layout is Layout.ERROR:
        fields["error_code"] = raw.element3
    elif layout is Layout.PARAMETER:
        fields["object"] = _REGISTRY_NAMES.get(raw.element2, f"0x{raw.element2:08X}")
        fields["old_value"] = parameter_value(raw.element2, raw.element3)
        fields["new_value"] = parameter_value(raw.element2, raw.element4)
    elif layout is Layout.UPDATE:
        fields["old_version"] = raw.element3
        fields["new_version"] = raw.element4
    for name in ("voltage", "frequency"):  # a float that is no number cannot be stored; the raw field stays
        value = fields.get(name)
        if isinstance(value, float) and not math.isfinite(value):
            del fields[name]
    return Event(raw, type_name(raw.code), raw.instant, end, fields)
