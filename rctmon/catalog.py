"""The catalog: every value rctmon reads, declared once.

One `Row` per value names the rctclient object, how often it is polled (its tier), which part of the
installation must be present for it to be polled, and how it appears in Prometheus and in InfluxDB. Rows that
exist once per solar generator, grid phase, battery module or fault word carry an `Axis` and are expanded into one
`Series` per index. Adding a value is adding a row; the collector, both exporters and the docs read this table.

Object ids are resolved from the rctclient registry once, at import time; a row naming an object the registry does
not know fails here rather than at run time.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from collections.abc import Iterator, Mapping

from rctclient.registry import REGISTRY
from rctclient.types import DataType

from rctmon.inventory import Inventory


class Tier(enum.Enum):
    """How often a value is polled; the intervals themselves are configuration (`device.intervals`)."""

    FAST = "fast"  # power, voltages, state of charge: every few seconds
    MEDIUM = "medium"  # temperatures, daily energy, totals: about a minute
    SLOW = "slow"  # monthly and yearly energy, battery statistics: minutes
    STATIC = "static"  # serial numbers and versions: with the inventory, then rarely


class Kind(enum.Enum):
    """The Prometheus metric type a value is exposed as."""

    GAUGE = "gauge"
    COUNTER = "counter"
    INFO = "info"  # a string (or version number) carried as a label of an `_info` metric whose value is 1


class Needs(enum.Enum):
    """The part of the installation a row depends on; rows with an axis also need their index to exist."""

    ALWAYS = "always"
    GENERATOR = "generator"
    BATTERY = "battery"
    POWER_SWITCH = "power_switch"


@dataclass(frozen=True)
class Axis:
    """A dimension a row is expanded over: the index in the object name and the label value for each."""

    label: str
    values: tuple[str, ...]

    def indexed(self) -> Iterator[tuple[int, str]]:
        return iter(enumerate(self.values))


GENERATOR = Axis("generator", ("a", "b"))
PHASE = Axis("phase", ("1", "2", "3"))
MODULE = Axis("module", tuple(str(i) for i in range(7)))  # the inverter numbers battery modules from 0, up to 7
FAULT_WORD = Axis("word", ("0", "1", "2", "3"))

WH_TO_J = 3600.0  # energy arrives in watt-hours; Prometheus' base unit is the joule
AH_TO_C = 3600.0  # charge arrives in ampere-hours; the base unit is the coulomb

#: The largest magnitude a numeric value may have; anything above it is a decoding accident, not a reading.
#: Lifetime energy counters in Wh reach about 1e7 on real inverters (see shared fixtures), so there is headroom.
ABSURD_MAGNITUDE = 1e12


@dataclass(frozen=True)
class DisplayUnit:
    """How values in one base unit are shown to people (MQTT payloads, Home Assistant).

    Prometheus and InfluxDB keep base units. People and Home Assistant's Energy dashboard expect kWh and percent,
    and Home Assistant releases before 2024 refuse joules for the energy device class, so MQTT converts.
    """

    symbol: str
    factor: float  # multiply the base-unit value by this
    device_class: str | None  # Home Assistant sensor device class
    state_class: str  # Home Assistant state class of a gauge in this unit (counters are always total_increasing)
    precision: int  # decimals worth showing


#: Keyed by the unit word that ends the metric name (before any `_total`); metrics without one have no unit.
DISPLAY_UNITS: Mapping[str, DisplayUnit] = {
    "watts": DisplayUnit("W", 1.0, "power", "measurement", 0),
    "volts": DisplayUnit("V", 1.0, "voltage", "measurement", 1),
    "amperes": DisplayUnit("A", 1.0, "current", "measurement", 2),
    "hertz": DisplayUnit("Hz", 1.0, "frequency", "measurement", 2),
    "celsius": DisplayUnit("°C", 1.0, "temperature", "measurement", 1),
    # Day, month and year energy restart at zero: total_increasing reads a drop as a meter reset, as it should.
    "joules": DisplayUnit("kWh", 1 / 3.6e6, "energy", "total_increasing", 2),
    "ratio": DisplayUnit("%", 100.0, None, "measurement", 1),
    "coulombs": DisplayUnit("Ah", 1 / 3600, None, "total_increasing", 1),
}
#: Metrics whose Home Assistant device class is narrower than their unit's (a battery's charge left is `battery`).
DEVICE_CLASS_OVERRIDES: Mapping[str, str] = {"rctmon_battery_state_of_charge_ratio": "battery"}


@dataclass(frozen=True)
class Row:
    """One value (or one family of values, with an axis) as declared in the catalog."""

    object_name: str  # rctclient registry name; "{}" stands for the axis index
    metric: str  # Prometheus metric name
    help: str
    kind: Kind
    tier: Tier
    measurement: str  # InfluxDB measurement
    field: str  # InfluxDB field (for INFO rows also the label name in Prometheus)
    needs: Needs = Needs.ALWAYS
    axis: Axis | None = None
    labels: tuple[tuple[str, str], ...] = ()  # fixed labels (and InfluxDB tags), e.g. (("sensor", "core"),)
    scale: float = 1.0  # multiply the raw value into the base unit
    magnitude: bool = False  # report abs(value): the inverter counts grid feed-in as negative energy

    @property
    def display_unit(self) -> DisplayUnit | None:
        """Return how this row's values are shown to people, or None for plain numbers, states and strings."""
        base = self.metric[: -len("_total")] if self.metric.endswith("_total") else self.metric
        return DISPLAY_UNITS.get(base.rsplit("_", 1)[-1])

    @property
    def device_class(self) -> str | None:
        unit = self.display_unit
        return DEVICE_CLASS_OVERRIDES.get(self.metric, unit.device_class if unit else None)

    @property
    def state_class(self) -> str | None:
        """Return measurement, total_increasing, or None where statistics make no sense (states, strings)."""
        if self.kind is Kind.COUNTER:
            return "total_increasing"
        unit = self.display_unit
        return unit.state_class if unit else None


@dataclass(frozen=True)
class Series:
    """One object id as polled and exported: a row expanded for one index of its axis."""

    object_id: int
    object_name: str
    data_type: DataType
    row: Row
    labels: tuple[tuple[str, str], ...]  # axis label (if any) and fixed labels, also the InfluxDB tags
    index: int | None

    @property
    def metric(self) -> str:
        return self.row.metric

    @property
    def tier(self) -> Tier:
        return self.row.tier

    def enabled(self, inventory: Inventory) -> bool:
        """Return whether this series exists on an inverter with that inventory."""
        needs, index = self.row.needs, self.index
        if needs is Needs.GENERATOR:
            return index is not None and GENERATOR.values[index] in inventory.generators
        if needs is Needs.BATTERY:
            if self.row.axis is MODULE:
                return index is not None and index < inventory.battery_modules
            return inventory.battery_modules > 0
        if needs is Needs.POWER_SWITCH:
            return inventory.power_switch
        return True

    def convert(self, raw: object) -> object:
        """Return the raw decoded value in the exported unit and sign (strings and booleans pass through)."""
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            return raw
        value = abs(raw) if self.row.magnitude else raw
        if self.row.scale != 1.0:
            return value * self.row.scale
        return value

    def display(self, raw: object) -> object:
        """Return the raw decoded value in its display unit (kWh, %, ...), for MQTT and Home Assistant."""
        value = self.convert(raw)
        unit = self.row.display_unit
        if unit is None or unit.factor == 1.0 or isinstance(value, bool) or not isinstance(value, (int, float)):
            return value
        return value * unit.factor


def _r(object_name: str, metric: str, help: str, kind: Kind, tier: Tier, measurement: str, field: str,
       **extra: object) -> Row:
    return Row(object_name, metric, help, kind, tier, measurement, field, **extra)  # type: ignore[arg-type]


G, C, I = Kind.GAUGE, Kind.COUNTER, Kind.INFO  # noqa: E741 - short names keep the table readable
FAST, MEDIUM, SLOW, STATIC = Tier.FAST, Tier.MEDIUM, Tier.SLOW, Tier.STATIC
GEN = dict(needs=Needs.GENERATOR, axis=GENERATOR)
BAT = dict(needs=Needs.BATTERY)
MOD = dict(needs=Needs.BATTERY, axis=MODULE)
PS = dict(needs=Needs.POWER_SWITCH, axis=PHASE)

# fmt: off
ROWS: tuple[Row, ...] = (
    # --- the inverter itself -------------------------------------------------------------------------------------
    _r("android_description", "rctmon_inverter_info", "Inverter identity; value always 1", I, STATIC, "inverter", "name"),
    _r("inverter_sn", "rctmon_inverter_info", "Inverter identity; value always 1", I, STATIC, "inverter", "serial"),
    _r("svnversion", "rctmon_inverter_info", "Inverter identity; value always 1", I, STATIC, "inverter", "software_version"),
    _r("parameter_file", "rctmon_inverter_info", "Inverter identity; value always 1", I, STATIC, "inverter", "parameter_file"),
    _r("prim_sm.state", "rctmon_inverter_state", "Operating state of the inverter (prim_sm.state enumeration)", G, FAST, "inverter", "state"),
    _r("prim_sm.island_flag", "rctmon_inverter_island", "1 while the inverter runs grid-separated (island mode)", G, FAST, "inverter", "island"),
    _r("fault[{}].flt", "rctmon_inverter_fault_flags", "Fault bit field of the inverter, one series per 32-bit word; 0 when all is well", G, MEDIUM, "inverter", "fault_flags", axis=FAULT_WORD),
    _r("g_sync.p_ac_sum_lp", "rctmon_inverter_ac_power_watts", "AC power of the inverter", G, FAST, "inverter", "ac_power"),
    _r("buf_v_control.power_reduction_max_solar_grid", "rctmon_inverter_feed_in_limit_watts", "Largest grid feed-in power the inverter allows", G, STATIC, "inverter", "feed_in_limit"),
    _r("db.temp1", "rctmon_inverter_temperature_celsius", "Internal temperatures of the inverter", G, MEDIUM, "inverter", "heatsink_temperature", labels=(("sensor", "heatsink"),)),
    _r("db.temp2", "rctmon_inverter_temperature_celsius", "Internal temperatures of the inverter", G, MEDIUM, "inverter", "battery_actuator_temperature", labels=(("sensor", "battery_actuator"),)),
    _r("db.core_temp", "rctmon_inverter_temperature_celsius", "Internal temperatures of the inverter", G, MEDIUM, "inverter", "core_temperature", labels=(("sensor", "core"),)),
    _r("energy.e_ac_day", "rctmon_inverter_energy_day_joules", "AC energy the inverter produced today", G, MEDIUM, "inverter", "energy_day", scale=WH_TO_J),
    _r("energy.e_ac_month", "rctmon_inverter_energy_month_joules", "AC energy the inverter produced this month", G, SLOW, "inverter", "energy_month", scale=WH_TO_J),
    _r("energy.e_ac_year", "rctmon_inverter_energy_year_joules", "AC energy the inverter produced this year", G, SLOW, "inverter", "energy_year", scale=WH_TO_J),
    _r("energy.e_ac_total", "rctmon_inverter_energy_joules_total", "AC energy the inverter produced over its lifetime", C, MEDIUM, "inverter", "energy_total", scale=WH_TO_J),

    # --- solar generators A and B --------------------------------------------------------------------------------
    _r("dc_conv.dc_conv_struct[{}].p_dc_lp", "rctmon_generator_power_watts", "DC power of the solar generator", G, FAST, "generator", "power", **GEN),
    _r("dc_conv.dc_conv_struct[{}].u_sg_lp", "rctmon_generator_voltage_volts", "DC voltage of the solar generator", G, FAST, "generator", "voltage", **GEN),
    _r("dc_conv.dc_conv_struct[{}].u_target", "rctmon_generator_mpp_target_voltage_volts", "Voltage the MPP tracker aims at", G, MEDIUM, "generator", "mpp_target_voltage", **GEN),
    _r("dc_conv.dc_conv_struct[{}].mpp.mpp_step", "rctmon_generator_mpp_search_step_volts", "Step of the MPP tracker's search", G, SLOW, "generator", "mpp_search_step", **GEN),
    _r("energy.e_dc_day[{}]", "rctmon_generator_energy_day_joules", "Energy of the solar generator today", G, MEDIUM, "generator", "energy_day", scale=WH_TO_J, **GEN),
    _r("energy.e_dc_month[{}]", "rctmon_generator_energy_month_joules", "Energy of the solar generator this month", G, SLOW, "generator", "energy_month", scale=WH_TO_J, **GEN),
    _r("energy.e_dc_year[{}]", "rctmon_generator_energy_year_joules", "Energy of the solar generator this year", G, SLOW, "generator", "energy_year", scale=WH_TO_J, **GEN),
    _r("energy.e_dc_total[{}]", "rctmon_generator_energy_joules_total", "Energy of the solar generator over the inverter's lifetime", C, MEDIUM, "generator", "energy_total", scale=WH_TO_J, **GEN),

    # --- grid ------------------------------------------------------------------------------------------------------
    _r("g_sync.p_ac_grid_sum_lp", "rctmon_grid_power_watts", "Power exchanged with the grid, all phases (positive: drawn from the grid)", G, FAST, "grid", "power"),
    _r("grid_pll[0].f", "rctmon_grid_frequency_hertz", "Grid frequency as the inverter measures it", G, FAST, "grid", "frequency"),
    _r("g_sync.p_ac_sc[{}]", "rctmon_grid_phase_power_watts", "Power exchanged with the grid on one phase", G, FAST, "grid_phase", "power", axis=PHASE),
    _r("g_sync.u_l_rms[{}]", "rctmon_grid_voltage_volts", "Grid voltage of one phase against neutral", G, FAST, "grid_phase", "voltage", axis=PHASE),
    _r("g_sync.u_ptp_rms[{}]", "rctmon_grid_phase_to_phase_voltage_volts", "Grid voltage between two phases (1: L1-L2, 2: L2-L3, 3: L3-L1)", G, MEDIUM, "grid_phase", "voltage_phase_to_phase", axis=PHASE),
    _r("energy.e_grid_feed_day", "rctmon_grid_feed_energy_day_joules", "Energy fed into the grid today (positive)", G, MEDIUM, "grid", "feed_energy_day", scale=WH_TO_J, magnitude=True),
    _r("energy.e_grid_feed_month", "rctmon_grid_feed_energy_month_joules", "Energy fed into the grid this month (positive)", G, SLOW, "grid", "feed_energy_month", scale=WH_TO_J, magnitude=True),
    _r("energy.e_grid_feed_year", "rctmon_grid_feed_energy_year_joules", "Energy fed into the grid this year (positive)", G, SLOW, "grid", "feed_energy_year", scale=WH_TO_J, magnitude=True),
    _r("energy.e_grid_feed_total", "rctmon_grid_feed_energy_joules_total", "Energy fed into the grid over the inverter's lifetime (positive)", C, MEDIUM, "grid", "feed_energy_total", scale=WH_TO_J, magnitude=True),
    _r("energy.e_grid_load_day", "rctmon_grid_draw_energy_day_joules", "Energy drawn from the grid today", G, MEDIUM, "grid", "draw_energy_day", scale=WH_TO_J, magnitude=True),
    _r("energy.e_grid_load_month", "rctmon_grid_draw_energy_month_joules", "Energy drawn from the grid this month", G, SLOW, "grid", "draw_energy_month", scale=WH_TO_J, magnitude=True),
    _r("energy.e_grid_load_year", "rctmon_grid_draw_energy_year_joules", "Energy drawn from the grid this year", G, SLOW, "grid", "draw_energy_year", scale=WH_TO_J, magnitude=True),
    _r("energy.e_grid_load_total", "rctmon_grid_draw_energy_joules_total", "Energy drawn from the grid over the inverter's lifetime", C, MEDIUM, "grid", "draw_energy_total", scale=WH_TO_J, magnitude=True),

    # --- household ---------------------------------------------------------------------------------------------------
    _r("g_sync.p_ac_load_sum_lp", "rctmon_household_power_watts", "Power the household uses, all phases", G, FAST, "household", "power"),
    _r("g_sync.p_ac_load[{}]", "rctmon_household_phase_power_watts", "Power the household uses on one phase", G, FAST, "household_phase", "power", axis=PHASE),
    _r("energy.e_load_day", "rctmon_household_energy_day_joules", "Energy the household used today", G, MEDIUM, "household", "energy_day", scale=WH_TO_J),
    _r("energy.e_load_month", "rctmon_household_energy_month_joules", "Energy the household used this month", G, SLOW, "household", "energy_month", scale=WH_TO_J),
    _r("energy.e_load_year", "rctmon_household_energy_year_joules", "Energy the household used this year", G, SLOW, "household", "energy_year", scale=WH_TO_J),
    _r("energy.e_load_total", "rctmon_household_energy_joules_total", "Energy the household used over the inverter's lifetime", C, MEDIUM, "household", "energy_total", scale=WH_TO_J),

    # --- battery -----------------------------------------------------------------------------------------------------
    _r("battery.bms_sn", "rctmon_battery_info", "Battery identity; value always 1", I, STATIC, "battery", "serial", **BAT),
    _r("battery.bms_software_version", "rctmon_battery_info", "Battery identity; value always 1", I, STATIC, "battery", "software_version", **BAT),
    _r("battery.soc", "rctmon_battery_state_of_charge_ratio", "State of charge of the battery (0 to 1)", G, FAST, "battery", "state_of_charge", **BAT),
    _r("battery.soc_target", "rctmon_battery_state_of_charge_target_ratio", "State of charge the inverter aims at (0 to 1)", G, MEDIUM, "battery", "state_of_charge_target", **BAT),
    _r("power_mng.soc_min", "rctmon_battery_state_of_charge_min_ratio", "Lowest state of charge the inverter allows (0 to 1)", G, SLOW, "battery", "state_of_charge_min", **BAT),
    _r("battery.soh", "rctmon_battery_state_of_health_ratio", "State of health of the battery (0 to 1)", G, SLOW, "battery", "state_of_health", **BAT),
    _r("battery.voltage", "rctmon_battery_voltage_volts", "Battery voltage", G, FAST, "battery", "voltage", **BAT),
    _r("battery.current", "rctmon_battery_current_amperes", "Battery current", G, FAST, "battery", "current", **BAT),
    _r("g_sync.p_acc_lp", "rctmon_battery_power_watts", "Battery power (positive: discharging)", G, FAST, "battery", "power", **BAT),
    _r("battery.temperature", "rctmon_battery_temperature_celsius", "Battery temperature", G, MEDIUM, "battery", "temperature", **BAT),
    _r("power_mng.state", "rctmon_battery_state", "State of the inverter's battery state machine (power_mng.state)", G, MEDIUM, "battery", "state", **BAT),
    _r("battery.status", "rctmon_battery_status", "Status word the battery reports (battery.status)", G, MEDIUM, "battery", "status", **BAT),
    _r("battery.cycles", "rctmon_battery_cycles_total", "Charge and discharge cycles of the battery", C, SLOW, "battery", "cycles", **BAT),
    _r("battery.charged_amp_hours", "rctmon_battery_charged_coulombs_total", "Charge that flowed into the battery over its lifetime", C, SLOW, "battery", "charged_charge", scale=AH_TO_C, **BAT),
    _r("battery.discharged_amp_hours", "rctmon_battery_discharged_coulombs_total", "Charge that flowed out of the battery over its lifetime", C, SLOW, "battery", "discharged_charge", scale=AH_TO_C, **BAT),
    _r("battery.stored_energy", "rctmon_battery_stored_energy_joules_total", "Energy that flowed into the battery over its lifetime", C, SLOW, "battery", "stored_energy", scale=WH_TO_J, **BAT),
    _r("battery.used_energy", "rctmon_battery_used_energy_joules_total", "Energy that flowed out of the battery over its lifetime", C, SLOW, "battery", "used_energy", scale=WH_TO_J, **BAT),
    _r("battery.min_cell_voltage", "rctmon_battery_cell_voltage_min_volts", "Lowest cell voltage in the battery now", G, MEDIUM, "battery", "cell_voltage_min", **BAT),
    _r("battery.max_cell_voltage", "rctmon_battery_cell_voltage_max_volts", "Highest cell voltage in the battery now", G, MEDIUM, "battery", "cell_voltage_max", **BAT),
    _r("battery.min_cell_temperature", "rctmon_battery_cell_temperature_min_celsius", "Lowest cell temperature in the battery now", G, MEDIUM, "battery", "cell_temperature_min", **BAT),
    _r("battery.max_cell_temperature", "rctmon_battery_cell_temperature_max_celsius", "Highest cell temperature in the battery now", G, MEDIUM, "battery", "cell_temperature_max", **BAT),

    # --- battery modules ---------------------------------------------------------------------------------------------
    _r("battery.module_sn[{}]", "rctmon_battery_module_info", "Battery module identity; value always 1", I, STATIC, "battery_module", "serial", **MOD),
    _r("battery.stack_cycles[{}]", "rctmon_battery_module_cycles_total", "Charge and discharge cycles of the battery module", C, SLOW, "battery_module", "cycles", **MOD),
    _r("battery.cells_stat[{}].u_min.value", "rctmon_battery_module_cell_voltage_lowest_volts", "Lowest cell voltage the module has recorded", G, SLOW, "battery_module", "cell_voltage_lowest", **MOD),
    _r("battery.cells_stat[{}].u_max.value", "rctmon_battery_module_cell_voltage_highest_volts", "Highest cell voltage the module has recorded", G, SLOW, "battery_module", "cell_voltage_highest", **MOD),
    _r("battery.cells_stat[{}].t_min.value", "rctmon_battery_module_cell_temperature_lowest_celsius", "Lowest cell temperature the module has recorded", G, SLOW, "battery_module", "cell_temperature_lowest", **MOD),
    _r("battery.cells_stat[{}].t_max.value", "rctmon_battery_module_cell_temperature_highest_celsius", "Highest cell temperature the module has recorded", G, SLOW, "battery_module", "cell_temperature_highest", **MOD),

    # --- Power Switch --------------------------------------------------------------------------------------------------
    _r("rb485.version_main", "rctmon_power_switch_info", "Power Switch identity; value always 1", I, STATIC, "power_switch", "software_version", needs=Needs.POWER_SWITCH),
    _r("rb485.version_boot", "rctmon_power_switch_info", "Power Switch identity; value always 1", I, STATIC, "power_switch", "bootloader_version", needs=Needs.POWER_SWITCH),
    _r("rb485.u_l_grid[{}]", "rctmon_power_switch_grid_voltage_volts", "Grid voltage of one phase as the Power Switch measures it", G, MEDIUM, "power_switch_phase", "grid_voltage", **PS),
    _r("rb485.f_grid[{}]", "rctmon_power_switch_grid_frequency_hertz", "Grid frequency of one phase as the Power Switch measures it", G, MEDIUM, "power_switch_phase", "grid_frequency", **PS),
    _r("rb485.f_wr[{}]", "rctmon_power_switch_inverter_frequency_hertz", "Frequency of the inverter's side of one phase at the Power Switch", G, MEDIUM, "power_switch_phase", "inverter_frequency", **PS),
)
# fmt: on


def _expand(row: Row) -> Iterator[Series]:
    indexed = row.axis.indexed() if row.axis else iter([(None, "")])
    for index, label_value in indexed:
        name = row.object_name.format(index) if index is not None else row.object_name
        info = REGISTRY.get_by_name(name)  # KeyError here means a row names an object rctclient does not know
        labels = ((row.axis.label, label_value),) if row.axis else ()
        yield Series(info.object_id, name, info.response_data_type, row, labels + row.labels, index)


def _build() -> tuple[Series, ...]:
    series = tuple(s for row in ROWS for s in _expand(row))
    seen: dict[int, Series] = {}
    for s in series:
        if s.object_id in seen:
            raise ValueError(f"catalog: {s.object_name} is declared twice")
        seen[s.object_id] = s
    return series


SERIES: tuple[Series, ...] = _build()
SERIES_BY_ID: Mapping[int, Series] = {s.object_id: s for s in SERIES}
SERIES_BY_NAME: Mapping[str, Series] = {s.object_name: s for s in SERIES}


def enabled_series(inventory: Inventory) -> tuple[Series, ...]:
    """Return the series an inverter with this inventory has, in catalog order."""
    return tuple(s for s in SERIES if s.enabled(inventory))


def metric_families() -> dict[str, tuple[Row, ...]]:
    """Return the catalog rows grouped by Prometheus metric name, in catalog order."""
    families: dict[str, tuple[Row, ...]] = {}
    for row in ROWS:
        families[row.metric] = families.get(row.metric, ()) + (row,)
    return families


__all__ = ["ROWS", "SERIES", "SERIES_BY_ID", "SERIES_BY_NAME", "Row", "Series", "Tier", "Kind", "Needs", "Axis",
           "DisplayUnit", "DISPLAY_UNITS", "enabled_series", "metric_families"]
