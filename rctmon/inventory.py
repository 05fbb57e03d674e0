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
#: The inverter has seven battery slots. A module is present when its stack's software version is non-zero; real
#: inverters report 0 for the empty slots (shared fixtures: slots 0, 1 and 2 of 7 non-zero). Nothing says the
#: present slots are always the first ones, so the inventory keeps their indexes, not just how many there are.
MODULE_SLOTS = 7
MODULE_OBJECTS: tuple[str, ...] = tuple(f"battery.stack_software_version[{i}]" for i in range(MODULE_SLOTS))
POWER_SWITCH_OBJECT = "rb485.available"
#: An external generator (a second inverter, a balcony plant) is measured through the S0 input, which one of the
#: two digital I/Os must be set to: usage 10, "Input S0 external power" in rctclient's enumeration.
IO_USAGE_OBJECTS: tuple[str, ...] = ("io_board.io1_usage", "io_board.io2_usage")
IO_USAGE_S0_EXTERNAL_POWER = 10
PRESENCE_OBJECTS: tuple[str, ...] = GENERATOR_OBJECTS + MODULE_OBJECTS + (POWER_SWITCH_OBJECT,) + IO_USAGE_OBJECTS
ALL_OBJECTS: tuple[str, ...] = (NAME_OBJECT,) + IDENTITY_OBJECTS + PRESENCE_OBJECTS


@dataclass(frozen=True)
class Inventory:
    """The inverter's identity and what is attached to it.

    Battery modules may be given by count (`battery_modules=3`: slots 0, 1, 2) or by their slots (`modules=(0, 2)`);
    both fields always agree once built.
    """

    name: str = ""
    serial: str = ""
    software_version: str = ""
    parameter_file: str = ""
    generators: tuple[str, ...] = ()  # "a", "b": the solar generators that are connected
    battery_modules: int = 0  # 0: no battery
    power_switch: bool = False
    complete: bool = False  # every inventory object has answered
    modules: tuple[int, ...] = ()  # the slots (0..6) that hold a battery module, ascending
    external_generator: bool = False  # an external generator measured through the S0 input

    def __post_init__(self) -> None:
        if self.modules:
            if self.battery_modules not in (0, len(self.modules)):
                raise ValueError(f"battery_modules={self.battery_modules} but modules={self.modules}")
            object.__setattr__(self, "modules", tuple(sorted(set(self.modules))))
            object.__setattr__(self, "battery_modules", len(self.modules))
        elif self.battery_modules:
            object.__setattr__(self, "modules", tuple(range(self.battery_modules)))

    @property
    def battery(self) -> bool:
        return self.battery_modules > 0

    @classmethod
    def from_values(cls, values: Mapping[str, object]) -> Inventory:
        """Build the inventory from the answers received so far, keyed by object name."""
        generators = tuple(g for g, obj in zip(GENERATOR_NAMES, GENERATOR_OBJECTS) if values.get(obj))
        modules = tuple(i for i, obj in enumerate(MODULE_OBJECTS) if values.get(obj))
        external = any(values.get(obj) == IO_USAGE_S0_EXTERNAL_POWER for obj in IO_USAGE_OBJECTS)
        return cls(
            name=str(values.get(NAME_OBJECT, "")),
            serial=str(values.get("inverter_sn", "")),
            software_version=str(values.get("svnversion", "")),
            parameter_file=str(values.get("parameter_file", "")),
            generators=generators,
            modules=modules,
            power_switch=bool(values.get(POWER_SWITCH_OBJECT)),
            external_generator=external,
            complete=all(obj in values for obj in ALL_OBJECTS),
        )

    def describe_battery(self) -> str:
        """Return e.g. `3 modules` (slots 0 to n-1), `2 modules (slots 0, 3)` or `none`."""
        if not self.battery:
            return "none"
        count = f"{self.battery_modules} module{'s' if self.battery_modules != 1 else ''}"
        if self.modules == tuple(range(self.battery_modules)):
            return count
        return f"{count} (slots {', '.join(str(m) for m in self.modules)})"

    def summary(self) -> str:
        """Return a one-line description, e.g. for logs and the systemd status."""
        battery = f"battery with {self.describe_battery()}" if self.battery else "no battery"
        gens = "+".join(g.upper() for g in self.generators) or "none"
        ps = "Power Switch" if self.power_switch else "no Power Switch"
        ext = ", external generator" if self.external_generator else ""
        return f"{self.name or '?'} (serial {self.serial or '?'}): generators {gens}, {battery}, {ps}{ext}"
