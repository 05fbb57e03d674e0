"""What is attached to the inverter, and the objects that tell.

The collector discovers the inventory by reading `NAME_OBJECT` first (an inverter that answers it is there), then
`IDENTITY_OBJECTS` and `PRESENCE_OBJECTS`; `Inventory.from_values` turns those answers into this record. It is plain
data, sent to every exporter, so the exporters need not know how it was found.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Mapping

NAME_OBJECT = "android_description"
IDENTITY_OBJECTS: tuple[str, ...] = ("inverter_sn", "svnversion", "parameter_file")
GENERATOR_OBJECTS: tuple[str, ...] = ("dc_conv.dc_conv_struct[0].enabled", "dc_conv.dc_conv_struct[1].enabled")
GENERATOR_NAMES: tuple[str, ...] = ("a", "b")
#: A battery stack (module) is present when its software version is non-zero; real inverters report 0 for the
#: slots that are empty (shared fixtures: 3 of 7 non-zero).
MODULE_OBJECTS: tuple[str, ...] = tuple(f"battery.stack_software_version[{i}]" for i in range(7))
POWER_SWITCH_OBJECT = "rb485.available"
PRESENCE_OBJECTS: tuple[str, ...] = GENERATOR_OBJECTS + MODULE_OBJECTS + (POWER_SWITCH_OBJECT,)
ALL_OBJECTS: tuple[str, ...] = (NAME_OBJECT,) + IDENTITY_OBJECTS + PRESENCE_OBJECTS


@dataclass(frozen=True)
class Inventory:
    """The inverter's identity and what is attached to it."""

    name: str = ""
    serial: str = ""
    software_version: str = ""
    parameter_file: str = ""
    generators: tuple[str, ...] = ()  # "a", "b": the solar generators that are connected
    battery_modules: int = 0  # 0: no battery
    power_switch: bool = False
    complete: bool = False  # every inventory object has answered

    @property
    def battery(self) -> bool:
        return self.battery_modules > 0

    @classmethod
    def from_values(cls, values: Mapping[str, object]) -> Inventory:
        """Build the inventory from the answers received so far, keyed by object name."""
        generators = tuple(g for g, obj in zip(GENERATOR_NAMES, GENERATOR_OBJECTS) if values.get(obj))
        modules = sum(1 for obj in MODULE_OBJECTS if values.get(obj))
        return cls(
            name=str(values.get(NAME_OBJECT, "")),
            serial=str(values.get("inverter_sn", "")),
            software_version=str(values.get("svnversion", "")),
            parameter_file=str(values.get("parameter_file", "")),
            generators=generators,
            battery_modules=modules,
            power_switch=bool(values.get(POWER_SWITCH_OBJECT)),
            complete=all(obj in values for obj in ALL_OBJECTS),
        )

    def summary(self) -> str:
        """Return a one-line description, e.g. for logs and the systemd status."""
        battery = f"battery with {self.battery_modules} modules" if self.battery else "no battery"
        gens = "+".join(g.upper() for g in self.generators) or "none"
        ps = "Power Switch" if self.power_switch else "no Power Switch"
        return f"{self.name or '?'} (serial {self.serial or '?'}): generators {gens}, {battery}, {ps}"
