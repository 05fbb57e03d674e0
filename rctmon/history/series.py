"""What the inverter's logger keeps: one declarative row per logger series, and the event table.

The rows say, for every `logger.*` time series rctmon imports: the rctclient object, its resolution (5 minutes, day,
month, year), the InfluxDB measurement and field, the base unit and how the raw value becomes one, and what kind of
value it is (an average power over the step, a level such as a voltage, or the energy of a period). The importer,
every output format and docs/history.md read this table; adding a series is adding a row.

What the series hold is pieced together from rctclient's documentation and issues (docs/history.md, "Sources"):
`e*` series are energies, kept per 5-minute step as the average power of the step (the registry's unit of
`logger.minutes_egrid_feed_log_ts` is W, and the app's day view plots them in W) and per day, month and year as the
energy of the period in Wh (the app's bars; rctclient issue #24: self-consumption = eac + egrid_feed, so feed-in is
negative, as in the live counters); `soc` is a fraction 0..1 (rctclient issue #7: the app's 49.7 % is 0.497 in the
log); `u*` are voltages and `temp*` temperatures. Feed-in is stored as a magnitude, like the live values.

Object ids are resolved from rctclient's registry at import, so a row naming an unknown object fails at once.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from collections.abc import Mapping

from rctclient.registry import REGISTRY
from rctclient.types import DataType

from rctmon.history.options import WHAT

WH_TO_J = 3600.0


@dataclass(frozen=True)
class Resolution:
    """One of the logger's memories: how far apart its entries are and where rctmon keeps them."""

    name: str  # as `rctmon history --what` names it
    measurement: str  # InfluxDB measurement
    step: int  # nominal seconds between entries (a month or a year: the longest one, for gap detection)
    chunk: int | None  # seconds of one chain of queries when a window is split to be read in parallel
    label: str  # how people call it

    @property
    def metric_prefix(self) -> str:
        return f"rctmon_{self.measurement}"


MINUTES = Resolution("minutes", "history_5min", 300, 86_400, "5 minutes")
DAY = Resolution("day", "history_day", 86_400 + 3_600, None, "day")  # a day with a DST change lasts 25 h
MONTH = Resolution("month", "history_month", 31 * 86_400 + 3_600, None, "month")
YEAR = Resolution("year", "history_year", 366 * 86_400 + 3_600, None, "year")
RESOLUTIONS: tuple[Resolution, ...] = (MINUTES, DAY, MONTH, YEAR)


class ValueKind(enum.Enum):
    """What one logged value is."""

    AVERAGE = "average"  # the average power over the step the entry stands for
    LEVEL = "level"  # a voltage, temperature or state of charge logged once per step
    ENERGY = "energy"  # the energy of the period (day, month, year) the entry stands for


@dataclass(frozen=True)
class Unit:
    """A base unit: its symbol in the docs and the word that ends an OpenMetrics name."""

    symbol: str
    word: str


WATTS = Unit("W", "watts")
VOLTS = Unit("V", "volts")
CELSIUS = Unit("°C", "celsius")
RATIO = Unit("0..1", "ratio")
JOULES = Unit("J", "joules")


@dataclass(frozen=True)
class LoggerRow:
    """One logger time series as rctmon imports it."""

    object_name: str
    resolution: Resolution
    field: str  # InfluxDB field; victoria-metrics names the series `<measurement>_<field>`
    unit: Unit
    kind: ValueKind
    help: str
    scale: float = 1.0  # multiply the raw value into the base unit
    magnitude: bool = False  # store abs(value): the inverter counts grid feed-in as negative energy

    @property
    def object_id(self) -> int:
        return OBJECT_IDS[self.object_name]

    @property
    def metric(self) -> str:
        """Return the OpenMetrics name of the series (a gauge: every value stands for one step or period)."""
        return f"{self.resolution.metric_prefix}_{self.field}_{self.unit.word}"

    def convert(self, raw: float) -> float:
        """Return a raw logged value in the base unit and sign rctmon stores."""
        value = abs(raw) if self.magnitude else raw
        return value * self.scale


@dataclass(frozen=True)
class _Quantity:
    """What one `e*`, `u*`, ... suffix of the logger's object names means, at every resolution that has it."""

    suffix: str  # logger.<resolution>_<suffix>_log_ts
    field: str  # InfluxDB field without the unit part
    help: str
    magnitude: bool = False


#: The energy quantities, logged per 5 minutes (as average power) and per day, month and year (as energy).
ENERGIES: tuple[_Quantity, ...] = (
    _Quantity("ea", "pv_a", "solar generator A"),
    _Quantity("eb", "pv_b", "solar generator B"),
    _Quantity("eext", "external", "external generator (S0 input)"),
    _Quantity("eac", "ac", "inverter AC output"),
    _Quantity("egrid_feed", "grid_feed", "fed into the grid (the inverter logs it negative)", magnitude=True),
    _Quantity("egrid_load", "grid_load", "drawn from the grid"),
    _Quantity("eload", "household", "household consumption"),
)
#: Energy quantities that only the 5-minute memory keeps.
MINUTE_ENERGIES: tuple[_Quantity, ...] = (
    _Quantity("eac1", "ac_l1", "inverter AC output, phase 1"),
    _Quantity("eac2", "ac_l2", "inverter AC output, phase 2"),
    _Quantity("eac3", "ac_l3", "inverter AC output, phase 3"),
    _Quantity("ebat", "battery", "battery (positive while discharging)"),
)
#: Levels logged every 5 minutes: (suffix, field, unit, help).
LEVELS: tuple[tuple[str, str, Unit, str], ...] = (
    ("ua", "pv_a_voltage", VOLTS, "voltage of solar generator A"),
    ("ub", "pv_b_voltage", VOLTS, "voltage of solar generator B"),
    ("ubat", "battery_voltage", VOLTS, "battery voltage"),
    ("ul1", "grid_l1_voltage", VOLTS, "grid voltage, phase 1"),
    ("ul2", "grid_l2_voltage", VOLTS, "grid voltage, phase 2"),
    ("ul3", "grid_l3_voltage", VOLTS, "grid voltage, phase 3"),
    ("soc", "battery_soc", RATIO, "battery state of charge"),
    ("soc_targ", "battery_soc_target", RATIO, "battery target state of charge"),
    ("temp", "heatsink_temperature", CELSIUS, "heat sink temperature"),
    ("temp2", "actuator_temperature", CELSIUS, "heat sink temperature of the battery actuator"),
    ("temp_bat", "battery_temperature", CELSIUS, "battery temperature"),
)


def _rows() -> tuple[LoggerRow, ...]:
    rows: list[LoggerRow] = []
    for q in ENERGIES + MINUTE_ENERGIES:
        rows.append(LoggerRow(f"logger.minutes_{q.suffix}_log_ts", MINUTES, f"{q.field}_power", WATTS,
                              ValueKind.AVERAGE, f"Average power over the 5 minutes: {q.help}.",
                              magnitude=q.magnitude))
    for suffix, field, unit, help in LEVELS:
        rows.append(LoggerRow(f"logger.minutes_{suffix}_log_ts", MINUTES, field, unit, ValueKind.LEVEL,
                              f"{help[0].upper()}{help[1:]}, once per 5 minutes."))
    for resolution in (DAY, MONTH, YEAR):
        for q in ENERGIES:
            rows.append(LoggerRow(f"logger.{resolution.name}_{q.suffix}_log_ts", resolution, f"{q.field}_energy",
                                  JOULES, ValueKind.ENERGY, f"Energy of the {resolution.label}: {q.help}.",
                                  scale=WH_TO_J, magnitude=q.magnitude))
    return tuple(rows)


#: Every logger time series rctmon imports, by resolution (5-minute series first), in a stable order.
LOGGER_SERIES: tuple[LoggerRow, ...] = _rows()

#: The event table: asked like a time series, answered with rows of five 4-byte fields (see history/events.py).
EVENT_OBJECT = "logger.error_log_time_stamp"
EVENT_MEASUREMENT = "inverter_event"
#: Logger objects the registry knows that rctmon does not import, and why (docs/history.md lists them).
NOT_IMPORTED: Mapping[str, str] = {
    "logger.year_log_ts": "meaning unknown (rctclient's own tool leaves it out)",
    "logger.log_rate": "a setting (the 5-minute memory's resolution in seconds), not a record",
    "logger.buffer": "a string of unknown meaning",
}

OBJECT_IDS: Mapping[str, int] = {name: REGISTRY.get_by_name(name).object_id
                                 for name in (*(r.object_name for r in LOGGER_SERIES), EVENT_OBJECT)}
EVENT_ID: int = OBJECT_IDS[EVENT_OBJECT]
SERIES_BY_ID: Mapping[int, LoggerRow] = {row.object_id: row for row in LOGGER_SERIES}


def rows_for(what: str) -> tuple[LoggerRow, ...]:
    """Return the rows of one resolution, by its --what name."""
    return tuple(row for row in LOGGER_SERIES if row.resolution.name == what)


def _check() -> None:
    """Fail at import if a row is not what the registry says or two rows collide."""
    fields = set()
    for row in LOGGER_SERIES:
        info = REGISTRY.get_by_name(row.object_name)
        if info.response_data_type is not DataType.TIMESERIES:
            raise ValueError(f"{row.object_name} is not a time series in rctclient's registry")
        key = (row.resolution.measurement, row.field)
        if key in fields:
            raise ValueError(f"two logger rows write {key}")
        fields.add(key)
    if WHAT != (*(r.name for r in RESOLUTIONS), "events"):
        raise ValueError("rctmon.history.options.WHAT does not list the resolutions")
    if REGISTRY.get_by_name(EVENT_OBJECT).response_data_type is not DataType.EVENT_TABLE:
        raise ValueError(f"{EVENT_OBJECT} is not the event table in rctclient's registry")


_check()
