"""Home Assistant MQTT discovery: the retained config messages that make rctmon's values appear with no YAML.

One config per value of a catalog series the inverter has, under
`<discovery_prefix>/sensor/<node_id>/<object_id>/config`. The inverter is one device; each battery module and the
Power Switch are devices of their own, linked to the inverter through `via_device`, so Home Assistant's device page
shows the installation as it is wired. A module's cells are entities of the module, announced but disabled by
default: seven modules of 24 cells would otherwise flood the entity list, and the module's lowest, highest and
spread of cell voltages, which are enabled, say when a cell is worth a look.

This module only builds payloads (plain dicts and JSON text); the mqtt process decides when to publish them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable
from collections.abc import Mapping

from rctmon import __version__
from rctmon.catalog import Kind, Labels, Series, Tier, enabled_series
from rctmon.inventory import Inventory

MANUFACTURER = "RCT Power"
ONLINE, OFFLINE = "online", "offline"
#: Home Assistant publishes `online` here when it (re)starts; see the mqtt process.
STATUS_TOPIC = "status"
#: A value not refreshed for this many of its tier's intervals is shown as unavailable: stale data lies.
EXPIRE_AFTER_INTERVALS = 3
_UNSAFE_ID = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True)
class DeviceKind:
    """A kind of Home Assistant device rctmon announces, and where its details come from."""

    name: str  # "{name}": the inverter's name, "{v}": the axis value (module number)
    model: str
    id_suffix: str  # appended to the inverter's identifier; "" for the inverter itself
    serial_object: str | None = None  # catalog row (object name) whose value is the device's serial number
    version_object: str | None = None  # catalog row (object name) whose value is the device's software version


DEVICES: Mapping[str, DeviceKind] = {
    # The inverter reports no model; its name (android_description) is what the owner sees in the RCT app.
    "inverter": DeviceKind("{name}", "Inverter", ""),
    "battery_module": DeviceKind("{name} battery module {v}", "Battery module", "_battery_module_{v}",
                                 serial_object="battery.module_sn[{}]"),
    "power_switch": DeviceKind("{name} Power Switch", "Power Switch", "_power_switch",
                               version_object="rb485.version_main"),
}


@dataclass(frozen=True)
class Placement:
    """Which device a catalog measurement's entities belong to, and the words their names start with."""

    device: str
    prefix: str


#: Keyed by the catalog's InfluxDB measurement; one the table does not know lands on the inverter.
PLACEMENTS: Mapping[str, Placement] = {
    "inverter": Placement("inverter", ""),
    "generator": Placement("inverter", ""),
    "grid": Placement("inverter", "grid"),
    "grid_phase": Placement("inverter", "grid"),
    "household": Placement("inverter", "household"),
    "household_phase": Placement("inverter", "household"),
    "battery": Placement("inverter", "battery"),
    "battery_module": Placement("battery_module", ""),
    "battery_cell": Placement("battery_module", ""),
    "external": Placement("inverter", "external generator"),
    "power_switch": Placement("power_switch", ""),
    "power_switch_phase": Placement("power_switch", ""),
}

#: How an axis value enters an entity name; modules need none because each module is its own device.
AXIS_NAMES: Mapping[str | None, str] = {
    None: "{field}",
    "generator": "generator {V} {field}",
    "phase": "phase {v} {field}",
    "module": "{field}",
    "word": "{field} word {v}",
}
#: How an element (a cell) enters an entity name, after the axis: `Cell 5 voltage`.
ELEMENT_NAMES: Mapping[str, str] = {"cell": "cell {v} {name}"}
#: Words spelled in capitals in entity names.
_ACRONYMS: Mapping[str, str] = {"ac": "AC", "dc": "DC", "mpp": "MPP"}


def safe_id(text: str) -> str:
    """Return `text` with every run of characters Home Assistant refuses in ids replaced by `_`."""
    return _UNSAFE_ID.sub("_", text).strip("_") or "_"


def node_id(inventory: Inventory) -> str:
    """Return the id every entity and device of this inverter is built on: its serial, else its name."""
    return "rctmon_" + safe_id(inventory.serial or inventory.name or "inverter")


def axis_value(series: Series) -> str | None:
    """Return the series' axis label value ("a", "1", ...) or None when its row has no axis."""
    axis = series.row.axis
    return dict(series.labels)[axis.label] if axis else None


def element_value(series: Series, labels: Labels) -> str | None:
    """Return the element's label value (the cell, "5") of one of a series' samples, or None for a single value."""
    if series.elements is None or not series.row.per_element:
        return None
    return dict(labels).get(series.elements.axis.label)


def object_id(series: Series, labels: Labels | None = None) -> str:
    """Return the id of one of the series' values within its inverter, e.g. `battery_cell_0_5_voltage`."""
    element = element_value(series, series.labels if labels is None else labels)
    parts = (series.row.measurement, axis_value(series), element, series.row.field)
    return safe_id("_".join(p for p in parts if p))


def entity_name(series: Series, labels: Labels | None = None) -> str:
    """Return the entity's name without its device's name (Home Assistant puts that in front)."""
    row = series.row
    field = " ".join(_ACRONYMS.get(w, w) for w in row.field.split("_"))
    value = axis_value(series) or ""
    template = AXIS_NAMES.get(row.axis.label if row.axis else None, "{field} {v}")
    name = template.format(field=field, v=value, V=value.upper())
    element = element_value(series, series.labels if labels is None else labels)
    if element is not None and series.elements is not None:
        name = ELEMENT_NAMES.get(series.elements.axis.label, "{v} {name}").format(v=element, name=name)
    prefix = PLACEMENTS.get(row.measurement, Placement("inverter", row.measurement.replace("_", " "))).prefix
    name = f"{prefix} {name}" if prefix else name
    return name[:1].upper() + name[1:]


def device(series: Series, inventory: Inventory, details: Mapping[str, object]) -> dict[str, Any]:
    """Return the `device` block for the device the series belongs to.

    `details` maps catalog object names to their latest values; module serial numbers and the Power Switch's
    software version come from there, because the inventory does not carry them.
    """
    placement = PLACEMENTS.get(series.row.measurement, Placement("inverter", ""))
    kind = DEVICES[placement.device]
    base = node_id(inventory)
    v = axis_value(series) or ""
    info: dict[str, Any] = {
        "identifiers": [base + kind.id_suffix.format(v=v)],
        "name": kind.name.format(name=inventory.name or "RCT Power inverter", v=v),
        "manufacturer": MANUFACTURER,
        "model": kind.model,
    }
    if placement.device == "inverter":
        info.update(serial_number=inventory.serial, sw_version=inventory.software_version)
    else:
        info["via_device"] = base
    extra = (("serial_number", kind.serial_object), ("sw_version", kind.version_object))
    for key, obj in extra:
        value = details.get(obj.format(series.index)) if obj else None
        if value not in (None, ""):
            info[key] = str(value)
    return {k: v for k, v in info.items() if v not in (None, "")}


def sensor_config(series: Series, inventory: Inventory, state_topic: str, availability_topic: str,
                  intervals: Mapping[Tier, float], details: Mapping[str, object],
                  labels: Labels | None = None) -> dict[str, Any]:
    """Return the discovery payload of one value of a series as a dict (see docs/mqtt.md for an example)."""
    row, nid = series.row, node_id(inventory)
    config: dict[str, Any] = {
        "name": entity_name(series, labels),
        "unique_id": f"{nid}_{object_id(series, labels)}",
        "state_topic": state_topic,
        "availability_topic": availability_topic,
        "payload_available": ONLINE,
        "payload_not_available": OFFLINE,
        "device": device(series, inventory, details),
        "origin": {"name": "rctmon", "sw_version": __version__},
    }
    unit = row.display_unit
    optional = {
        "device_class": row.device_class,
        "state_class": row.state_class,
        "unit_of_measurement": unit.symbol if unit else None,
        "suggested_display_precision": unit.precision if unit else None,
        "entity_category": "diagnostic" if row.kind is Kind.INFO else None,
        "expire_after": (int(EXPIRE_AFTER_INTERVALS * intervals[row.tier])
                         if row.tier is not Tier.STATIC and row.tier in intervals else None),
        "enabled_by_default": False if row.per_element else None,
    }
    config.update({k: v for k, v in optional.items() if v is not None})
    return config


def discovery_configs(inventory: Inventory, discovery_prefix: str, state_topic: Callable[[Series, Labels], str],
                      availability_topic: str, intervals: Mapping[Tier, float],
                      details: Mapping[str, object]) -> dict[str, str]:
    """Return {config topic: JSON payload} for every value of every series this inverter has."""
    nid = node_id(inventory)
    configs: dict[str, str] = {}
    for series in enabled_series(inventory):
        for labels in series.sample_labels:
            topic = f"{discovery_prefix}/sensor/{nid}/{object_id(series, labels)}/config"
            payload = sensor_config(series, inventory, state_topic(series, labels), availability_topic, intervals,
                                    details, labels)
            configs[topic] = json.dumps(payload, sort_keys=True, ensure_ascii=False)
    return configs


#: Catalog rows whose values enter device blocks: a new value of theirs changes discovery payloads.
DETAIL_ROWS: frozenset[str] = frozenset(
    obj for kind in DEVICES.values() for obj in (kind.serial_object, kind.version_object) if obj)


def is_detail(series: Series) -> bool:
    """Return whether the series' value belongs in a device block (serial number, software version)."""
    return series.row.object_name in DETAIL_ROWS
