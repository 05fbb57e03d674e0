"""What the simulated inverter answers for each object: one table of name patterns, resolved once per object id.

`RULES` maps a registry name pattern (a regular expression; its first group, if any, is the generator, phase or
module index) to the part of the installation it belongs to and a function of the plant that gives its value. The
first rule that matches a name wins; the last rules catch every other registry object and answer the registry's
type-correct default, so any object rctclient knows gets a decodable answer.

An object whose part is absent answers the zero of its type (False, 0, 0.0, "" or an all-zero structure), which is
what real inverters do for empty battery slots (shared fixtures: battery.stack_software_version[3..6] = 0). So a
simulator without battery answers battery.soc with 0.0 rather than staying silent: the collector learns from the
inventory objects, not from silence, that there is no battery.

Objects of type UNKNOWN (rctclient cannot decode them either) are not answered, like unknown object ids.
"""

from __future__ import annotations

import enum
import functools
import re
import struct
import time
from dataclasses import dataclass
from typing import Any, Callable, cast
from collections.abc import Sequence

from rctclient.registry import REGISTRY, ObjectInfo
from rctclient.types import DataType
from rctclient.utils import decode_value, encode_value

from rctmon.simulator.options import PARAMETER_FILE, SOFTWARE_VERSION, serial_for
from rctmon.simulator.cells import CELLS_PER_MODULE, Cell
from rctmon.simulator.plant import PERIODS, Plant

#: rctclient's encoder and decoder for a data type known only at run time (their overloads want literal types).
encode_any = cast(Callable[[DataType, Any], bytes], encode_value)
decode_any = cast(Callable[[DataType, bytes], Any], decode_value)

STRING_LENGTH = 64  # real inverters NUL-pad strings to this length (shared fixtures: android_description)


class Part(enum.Enum):
    """The part of the installation an object describes; absent parts answer zeros."""

    ALWAYS = "always"
    GENERATOR = "generator"  # index: generator (0: A, 1: B)
    BATTERY = "battery"
    MODULE = "module"  # index: battery module
    POWER_SWITCH = "power_switch"
    EXTERNAL = "external"  # the external generator on the S0 input


class Inverter:
    """The simulated inverter: identity from the options, state from the plant."""

    def __init__(self, name: str, plant: Plant, fault_words: tuple[int, ...] = (0, 0, 0, 0)) -> None:
        self.name = name
        self.plant = plant
        self.serial = serial_for(name)
        self.fault_words = fault_words  # fault[0..3].flt; a test may switch faults on and off while it runs

    def present(self, part: Part, index: int) -> bool:
        """Return whether that part (with that index) is attached."""
        return _PRESENT[part](self.plant, index)


#: Whether a part (with an index) is attached to a plant.
_PRESENT: dict[Part, Callable[[Plant, int], bool]] = {
    Part.ALWAYS: lambda plant, i: True,
    Part.GENERATOR: lambda plant, i: i < plant.generators,
    Part.BATTERY: lambda plant, i: plant.battery_modules > 0,
    Part.MODULE: lambda plant, i: i < plant.battery_modules,
    Part.POWER_SWITCH: lambda plant, i: plant.power_switch,
    Part.EXTERNAL: lambda plant, i: plant.external_generator,
}


ValueFn = Callable[[Inverter, int], Any]


@dataclass(frozen=True)
class Rule:
    """Objects whose name matches `pattern` belong to `part` and answer `value` (None: the registry default)."""

    pattern: str
    part: Part
    value: ValueFn | None = None


def _attr(name: str) -> ValueFn:
    return lambda inv, i: getattr(inv.plant, name)


def _item(name: str) -> ValueFn:
    return lambda inv, i: getattr(inv.plant, name)[i]


def _const(value: Any) -> ValueFn:
    return lambda inv, i: value


def _energy(counter: str, period: str) -> ValueFn:
    return lambda inv, i: inv.plant.energy(counter, period)


def _generator_energy(period: str) -> ValueFn:
    return lambda inv, i: inv.plant.energy(f"dc{i}", period)


@functools.cache
def module_history(module: int) -> tuple[tuple[int, int, float], ...]:
    """Return the extreme cell readings a battery module has recorded, as battery.cells_stat[i] carries them.

    One (cell index, epoch seconds, value) each for u_min, u_max, t_min, t_max; they differ a little per module so
    that a mix-up of module indexes shows. They lie outside what the cells show while the simulator runs (LiFePO4
    cells: 2.9 to 3.6 V), as a record of extremes does.
    """
    when = 1_690_000_000 - 86_400 * 37 * module
    return (((3 + 5 * module) % 24, when, 2.80 + 0.01 * module),
            ((7 + module) % 24, when + 3600, 3.65 - 0.005 * module),
            ((11 + module) % 24, when - 86_400, 8.5 + 0.5 * module),
            ((19 + module) % 24, when + 7200, 36.0 + 0.3 * module))


_STAT_FIELDS = {"u_min": 0, "u_max": 1, "t_min": 2, "t_max": 3}
_STAT_PARTS = {"index": 0, "time": 1, "value": 2}


def _cell_stat(stat: str, part: str) -> ValueFn:
    return lambda inv, i: module_history(i)[_STAT_FIELDS[stat]][_STAT_PARTS[part]]


def cell_status(cell: Cell) -> tuple[int, int, int]:
    """Return a cell's record as battery.cells[i] carries it: temperature (degC), voltage (mV), status byte."""
    return min(255, max(0, round(cell.temperature))), min(0xFFFF, max(0, round(cell.voltage * 1000.0))), 0


def cell_resistance_raw(cell: Cell) -> int:
    """Return a cell's resistance as battery.cells_resist[i] carries it: 1/256 milliohm in 16 bits."""
    return min(0xFFFF, max(0, round(cell.resistance * 1000.0 * 256.0)))


def _cells(inv: Inverter, i: int) -> tuple[tuple[int, int, int], ...]:
    return tuple(cell_status(cell) for cell in inv.plant.cells(i))


def _cells_resist(inv: Inverter, i: int) -> tuple[int, ...]:
    return tuple(cell_resistance_raw(cell) for cell in inv.plant.cells(i))


def _stack(field: str) -> ValueFn:
    return lambda inv, i: getattr(inv.plant.stack, field)


def _timeseries(inv: Inverter, i: int) -> tuple[int, tuple[tuple[int, float], ...]]:
    """Return a logger time series: the last 40 five-minute points (long enough to need a LONG_RESPONSE)."""
    now = int(time.time()) // 300 * 300
    return now, tuple((now - 300 * k, float(100 + 10 * (k % 7))) for k in range(40))


def _battery_state(power: float) -> int:
    """Return a power_mng.state code; rctclient documents no enumeration, so these only tell the states apart."""
    return 4 if power < -1.0 else 6 if power > 1.0 else 0  # charging, discharging, idle


def _per_phase(pattern: str, attr: str, part: Part = Part.ALWAYS) -> Rule:
    return Rule(pattern, part, _item(attr))


A, G, B, M, PS, X = Part.ALWAYS, Part.GENERATOR, Part.BATTERY, Part.MODULE, Part.POWER_SWITCH, Part.EXTERNAL
#: io_board.io1_usage when the external generator is on the S0 input (rctclient's enumeration).
IO_USAGE_S0_EXTERNAL = 10
#: power_mng.battery_type (rctclient's enumeration): RCT Power's own battery, or none.
BATTERY_TYPE_RCT, BATTERY_TYPE_NONE = 3, 5

# fmt: off
RULES: tuple[Rule, ...] = (
    # identity and state
    Rule(r"android_description", A, lambda inv, i: inv.name),
    Rule(r"inverter_sn", A, lambda inv, i: inv.serial),
    Rule(r"svnversion", A, _const(SOFTWARE_VERSION)),
    Rule(r"parameter_file", A, _const(PARAMETER_FILE)),
    Rule(r"prim_sm\.state", A, lambda inv, i: 13 if inv.plant.ac_power > 1.0 else 2),  # 13: feed in, 2: standby
    Rule(r"prim_sm\.island_flag", A, _const(0)),
    Rule(r"fault\[(\d+)\]\.flt", A, lambda inv, i: inv.fault_words[i]),
    Rule(r"g_sync\.p_ac_sum_lp", A, _attr("ac_power")),
    Rule(r"buf_v_control\.power_reduction_max_solar_grid", A, _const(4950.0)),
    Rule(r"db\.temp1", A, _attr("heatsink_temperature")),
    Rule(r"db\.temp2", A, _attr("actuator_temperature")),
    Rule(r"db\.core_temp", A, _attr("core_temperature")),
    # insulation of the PV array (ohm), measured every morning
    Rule(r"iso_struct\.Riso", A, _attr("insulation_total")),
    Rule(r"iso_struct\.Rp", A, _attr("insulation_positive")),
    Rule(r"iso_struct\.Rn", A, _attr("insulation_negative")),
    # solar generators
    Rule(r"dc_conv\.dc_conv_struct\[(\d)\]\.enabled", G, _const(True)),
    Rule(r"dc_conv\.dc_conv_struct\[(\d)\]\.p_dc(_lp)?", G, _item("generator_power")),
    Rule(r"dc_conv\.dc_conv_struct\[(\d)\]\.u_sg(_lp)?", G, _item("generator_voltage")),
    Rule(r"g_sync\.u_sg_avg\[(\d)\]", G, _item("generator_voltage")),
    Rule(r"dc_conv\.dc_conv_struct\[(\d)\]\.u_target", G, lambda inv, i: inv.plant.generator_voltage[i] + 1.5),
    Rule(r"dc_conv\.dc_conv_struct\[(\d)\]\.mpp\.mpp_step", G, lambda inv, i: 2.0 + 3.0 * i),
    *(Rule(rf"energy\.e_dc_{period}\[(\d)\]", G, _generator_energy(period)) for period in PERIODS),
    # the external generator on the S0 input (I/O 1 set to "Input S0 external power" when there is one)
    Rule(r"io_board\.io1_usage", A, lambda inv, i: IO_USAGE_S0_EXTERNAL if inv.plant.external_generator else 0),
    Rule(r"io_board\.io2_usage", A, _const(0)),
    Rule(r"io_board\.s0_external_power", X, _attr("external_power")),
    *(Rule(rf"energy\.e_ext_{period}", X, _energy("ext", period)) for period in PERIODS),
    # energy counters (Wh; grid feed-in negative, as the inverter counts it)
    *(Rule(rf"energy\.e_ac_{period}", A, _energy("ac", period)) for period in PERIODS),
    *(Rule(rf"energy\.e_grid_feed_{period}", A, _energy("grid_feed", period)) for period in PERIODS),
    *(Rule(rf"energy\.e_grid_load_{period}", A, _energy("grid_load", period)) for period in PERIODS),
    *(Rule(rf"energy\.e_load_{period}", A, _energy("household", period)) for period in PERIODS),
    # grid and household
    Rule(r"g_sync\.p_ac_grid_sum_lp", A, _attr("grid_power")),
    Rule(r"grid_pll\[(\d)\]\.f", A, _attr("frequency")),
    _per_phase(r"g_sync\.p_ac_sc\[(\d)\]", "grid_phase"),
    _per_phase(r"g_sync\.u_l_rms\[(\d)\]", "grid_voltage"),
    _per_phase(r"g_sync\.u_ptp_rms\[(\d)\]", "grid_ptp"),
    Rule(r"g_sync\.p_ac_load_sum_lp", A, _attr("load")),
    _per_phase(r"g_sync\.p_ac_load\[(\d)\]", "load_phase"),
    # battery (fractions 0..1 for state of charge and health, as the inverter reports them)
    Rule(r"power_mng\.battery_type", A,
         lambda inv, i: BATTERY_TYPE_RCT if inv.plant.battery_modules else BATTERY_TYPE_NONE),
    Rule(r"battery\.bms_sn", B, lambda inv, i: f"BMS{inv.serial[3:]}"),
    Rule(r"battery\.bms_software_version", B, _const(3292)),
    Rule(r"battery\.soc", B, _attr("soc")),
    Rule(r"battery\.soc_target", B, lambda inv, i: 0.97 if inv.plant.generator_power[0] > 0 else 0.5),
    Rule(r"power_mng\.soc_min", B, _const(0.07)),
    Rule(r"power_mng\.soc_min_island", B, _const(0.07)),
    Rule(r"power_mng\.soc_max", B, _const(0.97)),
    Rule(r"battery\.soh", B, _attr("soh")),
    Rule(r"battery\.voltage", B, _attr("battery_voltage")),
    Rule(r"power_mng\.u_acc(_mix)?_lp", B, _attr("battery_voltage")),
    Rule(r"adc\.u_acc", B, lambda inv, i: inv.plant.battery_voltage + 0.4),  # the inverter's own measurement
    Rule(r"battery\.current", B, _attr("battery_current")),
    Rule(r"acc_conv\.i_acc_lp_(fast|slow)", B, _attr("battery_current")),
    Rule(r"g_sync\.p_acc_lp", B, _attr("battery_power")),
    Rule(r"power_mng\.battery_power", B, _attr("battery_power")),
    Rule(r"battery\.temperature", B, _attr("battery_temperature")),
    Rule(r"power_mng\.state", B, lambda inv, i: _battery_state(inv.plant.battery_power)),
    Rule(r"battery\.status", B, _const(0)),
    Rule(r"battery\.status2", B, _const(0)),
    Rule(r"battery\.bat_status", B, _const(0)),  # a bit field: no bit set
    Rule(r"battery\.efficiency", B, _attr("efficiency")),
    Rule(r"battery\.bat_impedance\.impedance_fine", B, _attr("battery_impedance")),
    Rule(r"battery\.cycles", B, lambda inv, i: inv.plant.cycles),
    Rule(r"battery\.charged_amp_hours", B, _attr("charged_ah")),
    Rule(r"battery\.discharged_amp_hours", B, _attr("discharged_ah")),
    Rule(r"battery\.stored_energy", B, _attr("stored_wh")),
    Rule(r"battery\.used_energy", B, _attr("used_wh")),
    Rule(r"battery\.min_cell_voltage", B, _stack("min_voltage")),
    Rule(r"battery\.max_cell_voltage", B, _stack("max_voltage")),
    Rule(r"battery\.min_cell_temperature", B, _stack("min_temperature")),
    Rule(r"battery\.max_cell_temperature", B, _stack("max_temperature")),
    # battery modules (the inverter has 7 slots; empty ones answer 0)
    Rule(r"battery\.stack_software_version\[(\d)\]", M, _const(5599)),
    Rule(r"battery\.module_sn\[(\d)\]", M, lambda inv, i: f"PLB{inv.serial[3:]}{i}"),
    Rule(r"battery\.stack_cycles\[(\d)\]", M, lambda inv, i: inv.plant.cycles + 3 * i),
    *(Rule(rf"battery\.cells_stat\[(\d)\]\.{stat}\.{part}", M, _cell_stat(stat, part))
      for stat in _STAT_FIELDS for part in _STAT_PARTS),
    Rule(r"battery\.cells_stat\[(\d)\]", M, lambda inv, i: module_history(i)),
    Rule(r"battery\.cells\[(\d)\]", M, _cells),
    Rule(r"battery\.cells_resist\[(\d)\]", M, _cells_resist),
    # Power Switch
    Rule(r"rb485\.available", PS, _const(True)),
    Rule(r"rb485\.version_main", PS, _const(0x0204)),
    Rule(r"rb485\.version_boot", PS, _const(0x0101)),
    _per_phase(r"rb485\.u_l_grid\[(\d)\]", "grid_voltage", PS),
    Rule(r"rb485\.f_grid\[(\d)\]", PS, _attr("frequency")),
    Rule(r"rb485\.f_wr\[(\d)\]", PS, lambda inv, i: inv.plant.frequency + 0.002 * (i - 1)),
    # everything else: the registry's type-correct default, zero when its part is absent
    Rule(r"logger\.\w+_log_ts", A, _timeseries),
    Rule(r"dc_conv\.dc_conv_struct\[(\d)\]\..*", G),
    Rule(r"battery\.\w+\[(\d)\].*", M),
    Rule(r"(battery|bat_mng_struct|power_mng)\..*", B),
    Rule(r"rb485\..*", PS),
    Rule(r".*", A),
)
# fmt: on


def _unsigned(bits: int) -> Callable[[Any], bytes]:
    data_type = {8: DataType.UINT8, 16: DataType.UINT16, 32: DataType.UINT32}[bits]

    def encode(value: Any) -> bytes:
        # rctclient packs unsigned values through their signed twin, so hand it the signed reinterpretation.
        value = int(value) % (1 << bits)
        return encode_any(data_type, value - (1 << bits) if value >= 1 << (bits - 1) else value)
    return encode


def _simple(data_type: DataType, convert: Callable[[Any], Any]) -> Callable[[Any], bytes]:
    return lambda value: encode_any(data_type, convert(value))


def _string(value: Any) -> bytes:
    return encode_value(DataType.STRING, str(value)).ljust(STRING_LENGTH, b"\x00")


def _timeseries_payload(value: tuple[int, Sequence[tuple[int, float]]]) -> bytes:
    stamp, points = value
    return struct.pack(">I", stamp) + b"".join(struct.pack(">If", t, v) for t, v in points)


def _event_table_payload(value: tuple[int, Sequence[tuple[int, int, int, int, int]]]) -> bytes:
    stamp, entries = value
    return struct.pack(">I", stamp) + b"".join(struct.pack(">5I", *entry) for entry in entries)


#: How a value of each response type becomes a payload (rctclient's encode_value where it knows the type).
ENCODERS: dict[DataType, Callable[[Any], bytes]] = {
    DataType.BOOL: _simple(DataType.BOOL, bool),
    DataType.INT8: _simple(DataType.INT8, int),
    DataType.INT16: _simple(DataType.INT16, int),
    DataType.INT32: _simple(DataType.INT32, int),
    DataType.UINT8: _unsigned(8),
    DataType.ENUM: _unsigned(8),
    DataType.UINT16: _unsigned(16),
    DataType.UINT32: _unsigned(32),
    DataType.FLOAT: _simple(DataType.FLOAT, float),
    DataType.STRING: _string,
    DataType.TIMESERIES: _timeseries_payload,
    DataType.EVENT_TABLE: _event_table_payload,
    DataType.BATTERY_MODULE_STATISTICS: lambda v: b"".join(struct.pack("<IIf", *entry) for entry in v),
    DataType.BATTERY_MODULE_STATUS: lambda v: b"".join(struct.pack("<BHB", *cell) for cell in v),
    DataType.BATTERY_MODULE_RESISTANCE: lambda v: b"".join(struct.pack(">Hxx", raw) for raw in v),
}

#: The value of an object whose part is absent.
ZEROS: dict[DataType, Any] = {
    DataType.BOOL: False, DataType.INT8: 0, DataType.INT16: 0, DataType.INT32: 0, DataType.UINT8: 0,
    DataType.ENUM: 0, DataType.UINT16: 0, DataType.UINT32: 0, DataType.FLOAT: 0.0, DataType.STRING: "",
    DataType.TIMESERIES: (0, ()), DataType.EVENT_TABLE: (0, ()),
    DataType.BATTERY_MODULE_STATISTICS: ((0, 0, 0.0),) * 4,
    DataType.BATTERY_MODULE_STATUS: ((0, 0, 0),) * CELLS_PER_MODULE,
    DataType.BATTERY_MODULE_RESISTANCE: (0,) * CELLS_PER_MODULE,
}
_PYTHON_TYPES: dict[DataType, type] = {DataType.BOOL: bool, DataType.FLOAT: float, DataType.STRING: str}


def registry_default(info: ObjectInfo) -> Any:
    """Return the registry's simulation value when it has the right type and encodes, else the type's zero."""
    data_type = info.response_data_type
    wanted = _PYTHON_TYPES.get(data_type, int)
    if data_type in ENCODERS and type(info.sim_data) is wanted and data_type not in (
            DataType.TIMESERIES, DataType.EVENT_TABLE, DataType.BATTERY_MODULE_STATISTICS,
            DataType.BATTERY_MODULE_STATUS, DataType.BATTERY_MODULE_RESISTANCE):
        try:
            ENCODERS[data_type](info.sim_data)
            return info.sim_data
        except (ValueError, struct.error, OverflowError):
            pass
    return ZEROS.get(data_type)


@dataclass(frozen=True)
class Resolved:
    """The rule an object follows, found once: which rule matched and the index its name carries."""

    info: ObjectInfo
    rule: Rule
    index: int


@functools.lru_cache(maxsize=1)
def resolve_all() -> dict[int, Resolved]:
    """Return the rule of every registry object the simulator answers, by object id."""
    compiled = [(re.compile(rule.pattern), rule) for rule in RULES]
    resolved: dict[int, Resolved] = {}
    for info in REGISTRY.all():
        if info.response_data_type not in ENCODERS:
            continue
        for regex, rule in compiled:
            match = regex.fullmatch(info.name)
            if match:
                index = int(match.group(1)) if match.groups() and match.group(1) is not None and \
                    match.group(1).isdigit() else 0
                resolved[info.object_id] = Resolved(info, rule, index)
                break
    return resolved


class Answers:
    """Compute the payload and decoded value of the answer to a READ, for one simulated inverter.

    An answer is computed at most once per state of the plant: until the plant next moves (every REFRESH_SECONDS
    at most), a READ of the same object gets the same answer from a cache, and constant answers (absent parts,
    registry defaults) are computed once. Clients that read the same objects thousands of times a second (the
    benchmarks) so cost a dictionary look-up each.
    """

    def __init__(self, inverter: Inverter) -> None:
        self.inverter = inverter
        self._entries: dict[int, tuple[Callable[[Any], bytes], DataType, ValueFn | None, int, Any]] = {}
        for object_id, res in resolve_all().items():
            data_type = res.info.response_data_type
            encode = ENCODERS[data_type]
            if not inverter.present(res.rule.part, res.index):
                fn, constant = None, ZEROS[data_type]
            elif res.rule.value is None:
                fn, constant = None, registry_default(res.info)
            else:
                fn, constant = res.rule.value, None
            self._entries[object_id] = (encode, data_type, fn, res.index, constant)
        #: The latest answer per object: (the plant's step it was computed at, or None if constant; the answer).
        self._cache: dict[int, tuple[int | None, tuple[bytes, Any]]] = {}

    def __contains__(self, object_id: int) -> bool:
        return object_id in self._entries

    def answer(self, object_id: int) -> tuple[bytes, Any] | None:
        """Return (payload, value as a client decodes it) for a READ of `object_id`; None: do not answer."""
        entry = self._entries.get(object_id)
        if entry is None:
            return None
        encode, data_type, fn, index, constant = entry
        if fn is None:
            step = None
        else:
            plant = self.inverter.plant
            plant.refresh()
            step = plant.steps
        cached = self._cache.get(object_id)
        if cached is not None and cached[0] == step:
            return cached[1]
        payload = encode(constant if fn is None else fn(self.inverter, index))
        answer = payload, decode_any(data_type, payload)
        self._cache[object_id] = step, answer
        return answer
