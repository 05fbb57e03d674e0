"""The catalog: every value rctmon reads, declared once, with its unit and what makes it plausible.

One `Row` per value names the rctclient object, how often it is polled (its tier), which part of the
installation must be present for it to be polled, and how it appears in Prometheus and in InfluxDB. Rows that
exist once per solar generator, grid phase, battery module or fault word carry an `Axis` and are expanded into one
`Series` per index. Adding a value is adding a row; the collector, every exporter and the docs read this table.

Some objects carry many values: `battery.cells[n]` holds a record (voltage, temperature) for each of a module's 24
cells. A row takes one field of those records (`element=`) and is still one row: it yields one value per cell,
labelled `cell`, or, with `summary=`, one value per module (the lowest, the highest, their spread). Several rows may
read the same object; it is polled once.

Units and plausibility are decided here and nowhere else. A row's unit is the base unit its Prometheus name ends
with (`UNITS`); `Series.samples` turns a reading as decoded into values in that unit (Prometheus, InfluxDB) and
`Series.display_samples` into the unit people read (MQTT, Home Assistant, `rctmon inventory`). Both leave out
every value `plausible` refuses: not a number where a number belongs, NaN, infinite, or outside the row's sane
range. So every output shows the same values and drops the same ones.

Object ids are resolved from the rctclient registry once, at import time; a row naming an object the registry does
not know, or a field its records do not have, fails here rather than at run time.
"""

from __future__ import annotations

import enum
import functools
import math
from dataclasses import dataclass, field
from typing import Callable, Union
from collections.abc import Iterable, Iterator, Mapping, Sequence

from rctclient.registry import REGISTRY
from rctclient.types import DataType

from rctmon.inventory import MODULE_SLOTS, Inventory


class Tier(enum.Enum):
    """How often a value is polled; the intervals themselves are configuration (`device.intervals`)."""

    FAST = "fast"  # power, voltages, state of charge: every few seconds
    MEDIUM = "medium"  # temperatures, daily energy, totals: about a minute
    SLOW = "slow"  # monthly and yearly energy, battery statistics, battery cells: minutes
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
    EXTERNAL = "external_generator"


@dataclass(frozen=True)
class Axis:
    """A dimension a row is expanded over: the index in the object name and the label value for each."""

    label: str
    values: tuple[str, ...]

    def indexed(self) -> Iterator[tuple[int, str]]:
        return iter(enumerate(self.values))


GENERATOR = Axis("generator", ("a", "b"))
PHASE = Axis("phase", ("1", "2", "3"))
MODULE = Axis("module", tuple(str(i) for i in range(MODULE_SLOTS)))  # the inverter numbers modules from 0
FAULT_WORD = Axis("word", ("0", "1", "2", "3"))
CELLS_PER_MODULE = 24  # rctclient decodes 24 records per module (shared fixtures: battery.cells[0])
CELL = Axis("cell", tuple(str(i) for i in range(CELLS_PER_MODULE)))


@dataclass(frozen=True)
class Elements:
    """How a value holding one record per element (the cells of a module) is carried in a reading.

    rctclient decodes such an object into a structure of its own; the collector turns it into a plain tuple with
    one tuple per element, holding the `fields` of rctclient's per-element record in this order (as decoded:
    millivolts, degrees, milliohms). That keeps readings small and picklable, and the exporters free of rctclient.
    """

    axis: Axis
    fields: tuple[str, ...]

    def records(self, decoded: Iterable[object]) -> tuple[tuple[float, ...], ...]:
        """Return rctclient's decoded structure as the plain tuples readings carry."""
        return tuple(tuple(getattr(record, name) for name in self.fields) for record in decoded)


#: Object types whose one answer carries many values, by rctclient data type.
ELEMENTS: Mapping[DataType, Elements] = {
    DataType.BATTERY_MODULE_STATUS: Elements(CELL, ("voltage_mv", "temperature_c")),
    DataType.BATTERY_MODULE_RESISTANCE: Elements(CELL, ("resistance_mohm",)),
}


class Summary(enum.Enum):
    """One value computed from every element's value of a row's field."""

    MIN = "min"
    MAX = "max"
    SPREAD = "spread"  # highest minus lowest


_SUMMARIES: Mapping[Summary, Callable[[Sequence[float]], float]] = {
    Summary.MIN: min,
    Summary.MAX: max,
    Summary.SPREAD: lambda values: max(values) - min(values),
}


@dataclass(frozen=True)
class DisplayUnit:
    """How values in one base unit are shown to people (MQTT payloads, Home Assistant, `rctmon inventory`).

    Prometheus and InfluxDB keep base units. People and Home Assistant's Energy dashboard expect kWh and percent,
    and Home Assistant releases before 2024 refuse joules for the energy device class, so MQTT converts.
    """

    symbol: str
    factor: float  # multiply the base-unit value by this
    device_class: str | None  # Home Assistant sensor device class
    state_class: str  # Home Assistant state class of a gauge in this unit (counters are always total_increasing)
    precision: int  # decimals worth showing


@dataclass(frozen=True)
class Unit:
    """A base unit: the word Prometheus names end with, its symbol, its sane range and how people see it."""

    word: str  # "watts"
    symbol: str  # "W", as docs/influxdb.md writes the unit of a field
    low: float  # a converted value outside low..high is a decoding accident or a broken sensor, not a reading
    high: float
    display: DisplayUnit | None = None


WH_TO_J = 3600.0  # energy arrives in watt-hours; Prometheus' base unit is the joule
AH_TO_C = 3600.0  # charge arrives in ampere-hours; the base unit is the coulomb
MILLI = 1e-3  # cell voltages arrive in millivolts, cell resistances in milliohms

#: The sane range of values without a unit (states, bit fields, counts, version numbers): 32-bit words fit.
UNITLESS_LIMIT = 1e12

#: Keyed by the unit word that ends a metric name (before any `_total`); metrics without one have no unit.
#: The ranges are wide on purpose (a 10 kW inverter is nowhere near 1 MW): they catch decoding accidents, not
#: unusual installations. Energy may be negative: real day and lifetime counters are (tests/fixtures/README.md).
UNITS: Mapping[str, Unit] = {u.word: u for u in (
    Unit("watts", "W", -1e6, 1e6, DisplayUnit("W", 1.0, "power", "measurement", 0)),
    Unit("volts", "V", -1e4, 1e4, DisplayUnit("V", 1.0, "voltage", "measurement", 1)),
    Unit("amperes", "A", -1e4, 1e4, DisplayUnit("A", 1.0, "current", "measurement", 2)),
    Unit("hertz", "Hz", 0.0, 1e3, DisplayUnit("Hz", 1.0, "frequency", "measurement", 2)),
    Unit("celsius", "°C", -60.0, 150.0, DisplayUnit("°C", 1.0, "temperature", "measurement", 1)),
    # Day, month and year energy restart at zero: total_increasing reads a drop as a meter reset, as it should.
    Unit("joules", "J", -1e15, 1e15, DisplayUnit("kWh", 1 / 3.6e6, "energy", "total_increasing", 2)),
    Unit("coulombs", "C", -1e13, 1e13, DisplayUnit("Ah", 1 / 3600, None, "total_increasing", 1)),
    Unit("ratio", "0..1", -1.0, 10.0, DisplayUnit("%", 100.0, None, "measurement", 1)),
    Unit("ohms", "Ω", 0.0, 1e12, DisplayUnit("Ω", 1.0, None, "measurement", 0)),
    # rctmon's own health metrics (rctmon.health_metrics) use these two; no catalog row does.
    Unit("seconds", "s", -UNITLESS_LIMIT, UNITLESS_LIMIT),
    Unit("bytes", "B", 0.0, UNITLESS_LIMIT),
)}
#: Metrics whose Home Assistant device class is narrower than their unit's (a battery's charge left is `battery`).
DEVICE_CLASS_OVERRIDES: Mapping[str, str] = {"rctmon_battery_state_of_charge_ratio": "battery"}


def unit_of(name: str) -> Unit | None:
    """Return the base unit a metric name ends with (ignoring `_total`), or None."""
    stem = name[:-len("_total")] if name.endswith("_total") else name
    return UNITS.get(stem.rsplit("_", 1)[-1])


def plausible_number(value: object, low: float = -UNITLESS_LIMIT, high: float = UNITLESS_LIMIT) -> bool:
    """Return whether `value` is a number (bools count) within low..high; NaN and infinities never are."""
    if isinstance(value, bool):
        return True
    # Comparisons with NaN are false, and the bounds are finite, so this refuses NaN and both infinities too.
    return isinstance(value, (int, float)) and low <= value <= high


Value = Union[bool, int, float, str]
Labels = tuple[tuple[str, str], ...]
#: One value a series yields from a reading: its labels (the series' own, then the element's) and the value.
Sample = tuple[Labels, Value]


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
    labels: Labels = ()  # fixed labels (and InfluxDB tags), e.g. (("sensor", "core"),)
    scale: float = 1.0  # multiply the raw value into the base unit
    magnitude: bool = False  # report abs(value): the inverter counts grid feed-in as negative energy
    element: str | None = None  # for objects with many values: the field of each element's record this row takes
    summary: Summary | None = None  # with `element`: one value from all elements instead of one per element
    display_unit_override: DisplayUnit | None = None  # how people see it, where the unit's default does not fit
    limits: tuple[float, float] | None = None  # the sane range, where the unit's default does not fit

    @functools.cached_property
    def unit(self) -> Unit | None:
        """Return the base unit the metric name ends with, or None for plain numbers, states and strings."""
        return unit_of(self.metric)

    @functools.cached_property
    def display_unit(self) -> DisplayUnit | None:
        """Return how this row's values are shown to people, or None for plain numbers, states and strings."""
        if self.display_unit_override is not None:
            return self.display_unit_override
        unit = self.unit
        return unit.display if unit else None

    @functools.cached_property
    def bounds(self) -> tuple[float, float]:
        """Return the sane range of a converted value of this row."""
        if self.limits is not None:
            return self.limits
        unit = self.unit
        return (unit.low, unit.high) if unit else (-UNITLESS_LIMIT, UNITLESS_LIMIT)

    @functools.cached_property
    def per_element(self) -> bool:
        """Return whether the row yields one value per element (cell), rather than one per series."""
        return self.element is not None and self.summary is None

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


def plausible(row: Row, value: object) -> bool:
    """Return whether a value of `row`, converted to its base unit, is worth exporting.

    The one place that decides it: the collector drops (and counts) readings it refuses, and every exporter takes
    its values from `Series.samples`, which leaves out the same ones. Info rows take strings and numbers (versions);
    every other row takes numbers only, finite and within the row's sane range.
    """
    if row.kind is Kind.INFO:
        return isinstance(value, str) or plausible_number(value)
    low, high = row.bounds
    return plausible_number(value, low, high)


def _convert_number(row: Row, value: int | float) -> float | int:
    value = abs(value) if row.magnitude else value
    scale = row.scale
    if scale == 1.0:
        return value
    try:
        # Divide by 1000 rather than multiply by 0.001: 3318 mV is then exactly the 3.318 V a person expects.
        return value / (1.0 / scale) if scale < 1.0 else value * scale
    except OverflowError:  # an int too large for a float: certainly no reading
        return math.inf


@dataclass(frozen=True, eq=False)
class Series:
    """A row expanded for one index of its axis: the values one object's readings yield for one metric.

    Several series may read the same object (a module's cell voltages, their lowest, highest and spread).
    """

    object_id: int
    object_name: str
    data_type: DataType
    row: Row
    labels: Labels  # axis label (if any) and fixed labels, also the InfluxDB tags
    index: int | None
    elements: Elements | None = None  # the layout of the object's records, for rows with `element`
    part: int = 0  # where the row's field sits in each record
    element_labels: tuple[Labels, ...] = field(default=(), repr=False)  # per element: `labels` plus its own

    @property
    def metric(self) -> str:
        return self.row.metric

    @property
    def tier(self) -> Tier:
        return self.row.tier

    @property
    def label_names(self) -> tuple[str, ...]:
        """Return the names of the labels every sample of this series carries, in order."""
        names = tuple(k for k, _ in self.labels)
        return names + (self.elements.axis.label,) if self.elements and self.row.per_element else names

    @property
    def sample_labels(self) -> tuple[Labels, ...]:
        """Return the labels of every sample this series can yield (one per element, or just its own)."""
        return self.element_labels if self.row.per_element else (self.labels,)

    def enabled(self, inventory: Inventory) -> bool:
        """Return whether this series exists on an inverter with that inventory."""
        needs, index = self.row.needs, self.index
        if needs is Needs.GENERATOR:
            return index is not None and GENERATOR.values[index] in inventory.generators
        if needs is Needs.BATTERY:
            if self.row.axis is MODULE:
                return index is not None and index in inventory.modules
            return inventory.battery
        if needs is Needs.POWER_SWITCH:
            return inventory.power_switch
        if needs is Needs.EXTERNAL:
            return inventory.external_generator
        return True

    def convert(self, raw: object) -> object:
        """Return a scalar raw value in the base unit and sign (strings and booleans pass through), unchecked."""
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            return raw
        return _convert_number(self.row, raw)

    def samples(self, raw: object) -> list[Sample]:
        """Return the plausible values a reading yields for this series, in the base unit, with their labels."""
        row = self.row
        if self.elements is None:
            value = self.convert(raw)
            return [(self.labels, value)] if plausible(row, value) else []  # type: ignore[list-item]
        values = self._element_values(raw)
        if row.summary is None:
            return [(self.element_labels[i], v) for i, _, v in values]
        if not values:
            return []
        # Summarised as sent (whole millivolts), then converted: a spread of 20 mV is 0.02 V, without float noise.
        value = _convert_number(row, _SUMMARIES[row.summary]([r for _, r, _ in values]))
        return [(self.labels, value)] if plausible(row, value) else []

    def display_samples(self, raw: object) -> list[Sample]:
        """Return `samples` in the row's display unit (kWh, %, mV, ...): what people read."""
        unit = self.row.display_unit
        samples = self.samples(raw)
        if unit is None or unit.factor == 1.0:
            return samples
        return [(labels, v * unit.factor if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
                for labels, v in samples]

    def _element_values(self, raw: object) -> list[tuple[int, float, float]]:
        """Return (element index, value as sent, converted value) for every plausible value of the row's field.

        The hot path of a module's reading (24 cells, five series): `plausible` and `_convert_number`, inlined.
        """
        if not isinstance(raw, tuple):
            return []
        row, part, out = self.row, self.part, []
        low, high = row.bounds
        scale = row.scale
        divisor = 1.0 / scale if scale < 1.0 else 0.0
        for i, record in enumerate(raw[:len(self.element_labels)]):
            try:
                value = record[part]
            except (TypeError, IndexError, KeyError):
                continue
            if type(value) is not int and type(value) is not float:  # bools are no cell values
                continue
            if row.magnitude:
                value = abs(value)
            try:
                converted = value / divisor if divisor else value * scale
            except OverflowError:
                continue
            if low <= converted <= high:  # refuses NaN too
                out.append((i, value, converted))
        return out


def _r(object_name: str, metric: str, help: str, kind: Kind, tier: Tier, measurement: str, field: str,
       **extra: object) -> Row:
    return Row(object_name, metric, help, kind, tier, measurement, field, **extra)  # type: ignore[arg-type]


G, C, I = Kind.GAUGE, Kind.COUNTER, Kind.INFO  # noqa: E741 - short names keep the table readable
FAST, MEDIUM, SLOW, STATIC = Tier.FAST, Tier.MEDIUM, Tier.SLOW, Tier.STATIC
GEN = dict(needs=Needs.GENERATOR, axis=GENERATOR)
BAT = dict(needs=Needs.BATTERY)
MOD = dict(needs=Needs.BATTERY, axis=MODULE)
PS = dict(needs=Needs.POWER_SWITCH, axis=PHASE)
EXT = dict(needs=Needs.EXTERNAL)
#: People read a cell's few millivolts of difference, its milliohms and an insulation in kilohms.
CELL_VOLTS = DisplayUnit("V", 1.0, "voltage", "measurement", 3)
MILLIVOLTS = DisplayUnit("mV", 1e3, "voltage", "measurement", 0)
MILLIOHMS = DisplayUnit("mΩ", 1e3, None, "measurement", 2)
KILOHMS = DisplayUnit("kΩ", 1e-3, None, "measurement", 0)
#: A cell reads 0 V when its sensor fails; more than 10 V is no lithium cell.
CELL_VOLTAGE_LIMITS = (0.0, 10.0)

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
    _r("iso_struct.Riso", "rctmon_inverter_insulation_resistance_ohms", "Insulation resistance of the PV array against earth, as the inverter last measured it (a falling value is an early sign of a ground fault; total: both poles in parallel)", G, SLOW, "inverter", "insulation_resistance_total", labels=(("pole", "total"),), display_unit_override=KILOHMS),
    _r("iso_struct.Rp", "rctmon_inverter_insulation_resistance_ohms", "Insulation resistance of the PV array against earth, as the inverter last measured it (a falling value is an early sign of a ground fault; total: both poles in parallel)", G, SLOW, "inverter", "insulation_resistance_positive", labels=(("pole", "positive"),), display_unit_override=KILOHMS),
    _r("iso_struct.Rn", "rctmon_inverter_insulation_resistance_ohms", "Insulation resistance of the PV array against earth, as the inverter last measured it (a falling value is an early sign of a ground fault; total: both poles in parallel)", G, SLOW, "inverter", "insulation_resistance_negative", labels=(("pole", "negative"),), display_unit_override=KILOHMS),
    _r("power_mng.battery_type", "rctmon_inverter_battery_type", "Battery type the inverter is set up for (power_mng.battery_type enumeration: 3 RCT Power, 5 none)", G, STATIC, "inverter", "battery_type"),
    _r("energy.e_ac_day", "rctmon_inverter_energy_day_joules", "AC energy the inverter produced today", G, MEDIUM, "inverter", "energy_day", scale=WH_TO_J),
    _r("energy.e_ac_month", "rctmon_inverter_energy_month_joules", "AC energy the inverter produced this month", G, SLOW, "inverter", "energy_month", scale=WH_TO_J),
    _r("energy.e_ac_year", "rctmon_inverter_energy_year_joules", "AC energy the inverter produced this year", G, SLOW, "inverter", "energy_year", scale=WH_TO_J),
    _r("energy.e_ac_total", "rctmon_inverter_energy_joules_total", "AC energy the inverter produced over its lifetime", C, MEDIUM, "inverter", "energy_total", scale=WH_TO_J),

    # --- solar generators A and B --------------------------------------------------------------------------------
    _r("dc_conv.dc_conv_struct[{}].p_dc_lp", "rctmon_generator_power_watts", "DC power of the solar generator", G, FAST, "generator", "power", **GEN),
    _r("dc_conv.dc_conv_struct[{}].u_sg_lp", "rctmon_generator_voltage_volts", "DC voltage of the solar generator", G, FAST, "generator", "voltage", **GEN),
    _r("g_sync.u_sg_avg[{}]", "rctmon_generator_voltage_average_volts", "DC voltage of the solar generator, averaged by the inverter's grid synchronisation", G, MEDIUM, "generator", "voltage_average", **GEN),
    _r("dc_conv.dc_conv_struct[{}].u_target", "rctmon_generator_mpp_target_voltage_volts", "Voltage the MPP tracker aims at", G, MEDIUM, "generator", "mpp_target_voltage", **GEN),
    _r("dc_conv.dc_conv_struct[{}].mpp.mpp_step", "rctmon_generator_mpp_search_step_volts", "Step of the MPP tracker's search", G, SLOW, "generator", "mpp_search_step", **GEN),
    _r("energy.e_dc_day[{}]", "rctmon_generator_energy_day_joules", "Energy of the solar generator today", G, MEDIUM, "generator", "energy_day", scale=WH_TO_J, **GEN),
    _r("energy.e_dc_month[{}]", "rctmon_generator_energy_month_joules", "Energy of the solar generator this month", G, SLOW, "generator", "energy_month", scale=WH_TO_J, **GEN),
    _r("energy.e_dc_year[{}]", "rctmon_generator_energy_year_joules", "Energy of the solar generator this year", G, SLOW, "generator", "energy_year", scale=WH_TO_J, **GEN),
    _r("energy.e_dc_total[{}]", "rctmon_generator_energy_joules_total", "Energy of the solar generator over the inverter's lifetime", C, MEDIUM, "generator", "energy_total", scale=WH_TO_J, **GEN),

    # --- an external generator on the S0 input (a second inverter, a balcony plant) -----------------------------------
    _r("io_board.s0_external_power", "rctmon_external_power_watts", "Power of the external generator, measured through the S0 input", G, FAST, "external", "power", **EXT),
    _r("energy.e_ext_day", "rctmon_external_energy_day_joules", "Energy of the external generator today", G, MEDIUM, "external", "energy_day", scale=WH_TO_J, **EXT),
    _r("energy.e_ext_month", "rctmon_external_energy_month_joules", "Energy of the external generator this month", G, SLOW, "external", "energy_month", scale=WH_TO_J, **EXT),
    _r("energy.e_ext_year", "rctmon_external_energy_year_joules", "Energy of the external generator this year", G, SLOW, "external", "energy_year", scale=WH_TO_J, **EXT),
    _r("energy.e_ext_total", "rctmon_external_energy_joules_total", "Energy of the external generator over the inverter's lifetime", C, MEDIUM, "external", "energy_total", scale=WH_TO_J, **EXT),

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
    _r("power_mng.soc_min_island", "rctmon_battery_state_of_charge_min_island_ratio", "Lowest state of charge the inverter allows while grid-separated (0 to 1)", G, SLOW, "battery", "state_of_charge_min_island", **BAT),
    _r("power_mng.soc_max", "rctmon_battery_state_of_charge_max_ratio", "Highest state of charge the inverter charges to (0 to 1)", G, SLOW, "battery", "state_of_charge_max", **BAT),
    _r("battery.soh", "rctmon_battery_state_of_health_ratio", "State of health of the battery (0 to 1)", G, SLOW, "battery", "state_of_health", **BAT),
    _r("battery.voltage", "rctmon_battery_voltage_volts", "Battery voltage", G, FAST, "battery", "voltage", **BAT),
    _r("adc.u_acc", "rctmon_battery_inverter_voltage_volts", "Battery voltage as the inverter itself measures it", G, MEDIUM, "battery", "inverter_voltage", **BAT),
    _r("power_mng.u_acc_mix_lp", "rctmon_battery_filtered_voltage_volts", "Battery voltage as the inverter's power management uses it (filtered)", G, MEDIUM, "battery", "filtered_voltage", **BAT),
    _r("battery.current", "rctmon_battery_current_amperes", "Battery current", G, FAST, "battery", "current", **BAT),
    _r("acc_conv.i_acc_lp_fast", "rctmon_battery_inverter_current_amperes", "Battery current as the inverter's battery converter measures it", G, MEDIUM, "battery", "inverter_current", **BAT),
    _r("g_sync.p_acc_lp", "rctmon_battery_power_watts", "Battery power (positive: discharging)", G, FAST, "battery", "power", **BAT),
    _r("power_mng.battery_power", "rctmon_battery_discharge_power_watts", "Battery power as the inverter's power management sees it (positive: discharging)", G, MEDIUM, "battery", "discharge_power", **BAT),
    _r("battery.temperature", "rctmon_battery_temperature_celsius", "Battery temperature", G, MEDIUM, "battery", "temperature", **BAT),
    _r("power_mng.state", "rctmon_battery_state", "State of the inverter's battery state machine (power_mng.state)", G, MEDIUM, "battery", "state", **BAT),
    _r("battery.status", "rctmon_battery_status", "Status word the battery reports (battery.status)", G, MEDIUM, "battery", "status", **BAT),
    _r("battery.status2", "rctmon_battery_extra_status", "Extra status word the battery reports (battery.status2)", G, MEDIUM, "battery", "extra_status", **BAT),
    _r("battery.bat_status", "rctmon_battery_status_flags", "Status bit field of the battery (battery.bat_status); 0 when no bit is set", G, MEDIUM, "battery", "status_flags", **BAT),
    _r("battery.bat_impedance.impedance_fine", "rctmon_battery_impedance_ohms", "Impedance of the battery circuit as the inverter measures it", G, SLOW, "battery", "impedance", display_unit_override=MILLIOHMS, **BAT),
    _r("battery.efficiency", "rctmon_battery_efficiency_ratio", "Energy taken out of the battery over energy put in, over its lifetime (0 to 1)", G, SLOW, "battery", "efficiency", **BAT),
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
    _r("battery.cells[{}]", "rctmon_battery_module_cell_voltage_min_volts", "Lowest cell voltage of the module now", G, SLOW, "battery_module", "cell_voltage_min", element="voltage_mv", summary=Summary.MIN, scale=MILLI, limits=CELL_VOLTAGE_LIMITS, display_unit_override=CELL_VOLTS, **MOD),
    _r("battery.cells[{}]", "rctmon_battery_module_cell_voltage_max_volts", "Highest cell voltage of the module now", G, SLOW, "battery_module", "cell_voltage_max", element="voltage_mv", summary=Summary.MAX, scale=MILLI, limits=CELL_VOLTAGE_LIMITS, display_unit_override=CELL_VOLTS, **MOD),
    _r("battery.cells[{}]", "rctmon_battery_module_cell_voltage_spread_volts", "Highest minus lowest cell voltage of the module now: how far out of balance it is", G, SLOW, "battery_module", "cell_voltage_spread", element="voltage_mv", summary=Summary.SPREAD, scale=MILLI, limits=CELL_VOLTAGE_LIMITS, display_unit_override=MILLIVOLTS, **MOD),
    _r("battery.cells_stat[{}].u_min.value", "rctmon_battery_module_cell_voltage_lowest_volts", "Lowest cell voltage the module has recorded", G, SLOW, "battery_module", "cell_voltage_lowest", **MOD),
    _r("battery.cells_stat[{}].u_max.value", "rctmon_battery_module_cell_voltage_highest_volts", "Highest cell voltage the module has recorded", G, SLOW, "battery_module", "cell_voltage_highest", **MOD),
    _r("battery.cells_stat[{}].t_min.value", "rctmon_battery_module_cell_temperature_lowest_celsius", "Lowest cell temperature the module has recorded", G, SLOW, "battery_module", "cell_temperature_lowest", **MOD),
    _r("battery.cells_stat[{}].t_max.value", "rctmon_battery_module_cell_temperature_highest_celsius", "Highest cell temperature the module has recorded", G, SLOW, "battery_module", "cell_temperature_highest", **MOD),

    # --- battery cells: 24 per module, one row yields a value per cell; slow, because cells change slowly ------------
    _r("battery.cells[{}]", "rctmon_battery_cell_voltage_volts", "Voltage of one cell of a battery module", G, SLOW, "battery_cell", "voltage", element="voltage_mv", scale=MILLI, limits=CELL_VOLTAGE_LIMITS, display_unit_override=CELL_VOLTS, **MOD),
    _r("battery.cells[{}]", "rctmon_battery_cell_temperature_celsius", "Temperature of one cell of a battery module", G, SLOW, "battery_cell", "temperature", element="temperature_c", **MOD),
    _r("battery.cells_resist[{}]", "rctmon_battery_cell_resistance_ohms", "Internal resistance of one cell of a battery module (a weak cell's rises first)", G, SLOW, "battery_cell", "resistance", element="resistance_mohm", scale=MILLI, display_unit_override=MILLIOHMS, **MOD),

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
        labels = ((row.axis.label, label_value),) + row.labels if row.axis else row.labels
        data_type = info.response_data_type
        elements = ELEMENTS.get(data_type)
        if (row.element is None) != (elements is None):
            raise ValueError(f"catalog: {name} ({data_type.name}) and the row's element {row.element!r} disagree")
        if elements is None or row.element is None:
            yield Series(info.object_id, name, data_type, row, labels, index)
            continue
        if row.element not in elements.fields:
            raise ValueError(f"catalog: {name} records have no field {row.element!r} (only {elements.fields})")
        element_labels = tuple(labels + ((elements.axis.label, v),) for v in elements.axis.values)
        yield Series(info.object_id, name, data_type, row, labels, index, elements,
                     elements.fields.index(row.element), element_labels)


def _build() -> tuple[Series, ...]:
    series = tuple(s for row in ROWS for s in _expand(row))
    seen: dict[int, Series] = {}
    for s in series:
        first = seen.setdefault(s.object_id, s)
        if first is s:
            continue
        # Several rows may read one object only as views of its elements, polled at one tier.
        if s.elements is None or first.elements is None:
            raise ValueError(f"catalog: {s.object_name} is declared twice")
        if s.tier is not first.tier or s.row.needs is not first.row.needs:
            raise ValueError(f"catalog: the rows reading {s.object_name} differ in tier or needs")
    keys = [(s.metric, s.sample_labels) for s in series if s.row.kind is not Kind.INFO]
    if len(set(keys)) != len(keys):
        raise ValueError("catalog: two series of one metric have the same labels")
    return series


SERIES: tuple[Series, ...] = _build()
#: Every object the catalog polls, with the series its answers feed (a module's cells feed several), in order.
OBJECTS: Mapping[int, tuple[Series, ...]] = {}
for _series in SERIES:
    OBJECTS[_series.object_id] = OBJECTS.get(_series.object_id, ()) + (_series,)  # type: ignore[index]
del _series
#: Object name -> the first series reading it (objects with several series share name, id, type and tier).
SERIES_BY_NAME: Mapping[str, Series] = {}
for _series in reversed(SERIES):
    SERIES_BY_NAME[_series.object_name] = _series  # type: ignore[index]
del _series


def samples(object_id: int, raw: object) -> Iterator[tuple[Series, Labels, Value]]:
    """Yield every plausible value a reading of `object_id` yields, in the base unit: (series, labels, value)."""
    for series in OBJECTS.get(object_id, ()):
        for labels, value in series.samples(raw):
            yield series, labels, value


def rejected(object_id: int, raw: object) -> int:
    """Return how many of the values a reading carries the catalog leaves out as implausible (the collector counts
    them); for an object outside the catalog (inventory objects), 1 for a number that makes no sense."""
    series = OBJECTS.get(object_id)
    if series is None:
        return 0 if isinstance(raw, (str, tuple)) or plausible_number(raw) else 1
    count = 0
    for s in series:
        if not s.row.per_element and s.row.summary is None:
            count += 0 if s.samples(raw) else 1
        elif s.row.per_element:
            count += len(s.element_labels) - len(s.samples(raw))
    return count


def enabled_series(inventory: Inventory) -> tuple[Series, ...]:
    """Return the series an inverter with this inventory has, in catalog order."""
    return tuple(s for s in SERIES if s.enabled(inventory))


def enabled_objects(inventory: Inventory) -> tuple[int, ...]:
    """Return the object ids an inverter with this inventory is polled for, once each, in catalog order."""
    return tuple(dict.fromkeys(s.object_id for s in enabled_series(inventory)))


def metric_families() -> dict[str, tuple[Row, ...]]:
    """Return the catalog rows grouped by Prometheus metric name, in catalog order."""
    families: dict[str, tuple[Row, ...]] = {}
    for row in ROWS:
        families[row.metric] = families.get(row.metric, ()) + (row,)
    return families


__all__ = ["ROWS", "SERIES", "OBJECTS", "SERIES_BY_NAME", "Row", "Series", "Tier", "Kind", "Needs", "Axis",
           "Elements", "ELEMENTS", "Summary", "Unit", "UNITS", "DisplayUnit", "unit_of", "plausible",
           "plausible_number", "samples", "rejected", "enabled_series", "enabled_objects", "metric_families"]
