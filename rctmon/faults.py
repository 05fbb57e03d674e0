"""The inverter's fault words by name: one declarative row per fault bit, rctclient's table.

The inverter reports its faults as a 128-bit field in four 32-bit objects, `fault[0..3].flt` (bits 0-31 in word 0,
32-63 in word 1, and so on); a set bit is a fault present now, and four zeros mean all is well. rctclient's
documentation (inverter_faults) lists what each bit means, as far as its authors know: bits 0 to 126. `FAULTS` is
that table, with a name of rctmon's own for each bit (a Prometheus label value and a Home Assistant attribute, so it
must stay stable) beside rctclient's description, kept word for word. A set bit the table does not know is named
`bit_<n>`, so that it is shown rather than hidden.

This module is the one place fault words are decoded: the catalog's `fault[{}].flt` row reads the words (exported
raw as `rctmon_inverter_fault_flags`), and every output that names faults (Prometheus' `rctmon_inverter_fault_active`,
MQTT and Home Assistant's problem sensor, the simulator's switchable faults, docs/metrics.md) takes the names from
here. It imports nothing but the standard library, so that any process can load it for little.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Iterable, Iterator, Mapping

WORDS = 4  # fault[0..3].flt
BITS_PER_WORD = 32
#: The rctclient objects carrying the words, in bit order (word i holds bits 32 i .. 32 i + 31).
WORD_OBJECTS: tuple[str, ...] = tuple(f"fault[{i}].flt" for i in range(WORDS))


@dataclass(frozen=True)
class Fault:
    """One bit of the fault field."""

    bit: int  # 0..127 over all four words
    name: str  # rctmon's name: the `fault` label, the Home Assistant attribute
    description: str  # rctclient's words

    @property
    def word(self) -> int:
        return self.bit // BITS_PER_WORD

    @property
    def mask(self) -> int:
        """Return the bit's mask within its word."""
        return 1 << (self.bit % BITS_PER_WORD)


# fmt: off
_TABLE: tuple[tuple[str, str], ...] = (
    ("trap", "TRAP occured"),
    ("rtc_configuration", "RTC can't be configured"),
    ("rtc_1hz_timeout", "RTC 1Hz signal timeout"),
    ("hardware_stop_3v3", "Hardware Stop by 3.3V fault"),
    ("hardware_stop_pwm_logic", "Hardware Stop by PWM Logic"),
    ("hardware_stop_uzk_overvoltage", "Hardware Stop by Uzk overvoltage"),
    ("uzk_plus_above_limit", "Uzk+ is above limit"),
    ("uzk_minus_above_limit", "Uzk- is above limit"),
    ("throttle_l1_overcurrent", "Throttle phase L1 overcurrent"),
    ("throttle_l2_overcurrent", "Throttle phase L2 overcurrent"),
    ("throttle_l3_overcurrent", "Throttle phase L3 overcurrent"),
    ("buffer_capacitor_voltage", "Buffer capacitor voltage"),
    ("quartz", "Quartz fault"),
    ("grid_undervoltage_l1", "Grid under-voltage phase 1"),
    ("grid_undervoltage_l2", "Grid under-voltage phase 2"),
    ("grid_undervoltage_l3", "Grid under-voltage phase 3"),
    ("battery_overcurrent", "Battery overcurrent"),
    ("relay_test_failed", "Relais test failed"),
    ("board_overtemperature", "Board overtemperature"),
    ("core_overtemperature", "Core overtemperature"),
    ("sink1_overtemperature", "(Heat)Sink 1 overtemperature"),
    ("sink2_overtemperature", "(Heat)Sink 2 overtemperature"),
    ("power_board_i2c", "Error in I2C communication with Power Board"),
    ("power_board", "Power Board error"),
    ("pwm_output_ports", "PWM output ports defective"),
    ("insulation", "Insulation to small or not plausible"),
    ("dc_component_max", "I DC component max (1A)"),
    ("dc_component_max_slow", "I DC component max slow (47mA)"),
    ("dsd_channel", "Possible defect in one of the DSD channels (current offset too large)"),
    ("relay_box_rs485", "Error in RS485 communication with Relais Box IGBT L1 BH defective"),
    ("phase_to_phase_overvoltage", "Phase to phase overvoltage"),
    ("igbt_l1_bh", "IGBT L1 BH defective"),
    ("igbt_l1_bl", "IGBT L1 BL defective"),
    ("igbt_l2_bh", "IGBT L2 BH defective"),
    ("igbt_l2_bl", "IGBT L2 BL defective"),
    ("igbt_l3_bh", "IGBT L3 BH defective"),
    ("igbt_l3_bl", "IGBT L3 BL defective"),
    ("long_term_overvoltage_l1", "Long-term overvoltage phase 1"),
    ("long_term_overvoltage_l2", "Long-term overvoltage phase 2"),
    ("long_term_overvoltage_l3", "Long-term overvoltage phase 3"),
    ("overvoltage_l1_level1", "Overvoltage phase 1, level 1"),
    ("overvoltage_l1_level2", "Overvoltage phase 1, level 2"),
    ("overvoltage_l2_level1", "Overvoltage phase 2, level 1"),
    ("overvoltage_l2_level2", "Overvoltage phase 2, level 2"),
    ("overvoltage_l3_level1", "Overvoltage phase 3, level 1"),
    ("overvoltage_l3_level2", "Overvoltage phase 3, level 2"),
    ("overfrequency_level1", "Overfrequency, level 1"),
    ("overfrequency_level2", "Overfrequency, level 2"),
    ("undervoltage_l1_level1", "Undervoltage phase 1, level 1"),
    ("undervoltage_l1_level2", "Undervoltage phase 1, level 2"),
    ("undervoltage_l2_level1", "Undervoltage phase 2, level 1"),
    ("undervoltage_l2_level2", "Undervoltage phase 2, level 2"),
    ("undervoltage_l3_level1", "Undervoltage phase 3, level 1"),
    ("undervoltage_l3_level2", "Undervoltage phase 3, level 2"),
    ("underfrequency_level1", "Underfrequency, level 1"),
    ("underfrequency_level2", "Underfrequency, level 2"),
    ("cpu_nmi", "CPU exception NMI"),
    ("cpu_hard_fault", "CPU exception HardFault"),
    ("cpu_mem_manage", "CPU exception MemManage"),
    ("cpu_bus_fault", "CPU exception BusFault"),
    ("cpu_usage_fault", "CPU exception UsageFault"),
    ("rtc_power_on_reset", "RTC Power on reset"),
    ("rtc_oscillation_stops", "RTC Oscillation stops"),
    ("rtc_supply_voltage_drop", "RTC Supply voltage drop"),
    ("rcd_jump_30ma", "Jump of RCD current DC + AC > 30mA was noticed"),
    ("rcd_jump_dc_60ma", "Jump of RCD current DC > 60mA was noticed"),
    ("rcd_jump_ac_150ma", "Jump of RCD current AC > 150mA was noticed"),
    ("rcd_300ma", "RCD current > 300mA was notices"),
    ("supply_plus_5v", "Incorrect +5V was noticed"),
    ("supply_minus_9v", "Incorrect -9V was noticed"),
    ("supply_plus_9v", "Incorrect +9V was noticed"),
    ("supply_plus_3v3", "Incorrect +3V3 was noticed"),
    ("rdc_calibration", "Failure of RDC calibration was noticed"),
    ("i2c", "Failure of I2C was noticed"),
    ("afi_frequency_generator", "afi frequency generator failure"),
    ("sink_temperature_high", "(Heat)sink temperature too high"),
    ("uzk_over_limit", "Uzk is over limit"),
    ("usg_a_over_limit", "Usg A is over limit"),
    ("usg_b_over_limit", "Usg B is over limit"),
    ("switch_on_umin_l1", "Switching On Conditions Umin phase 1"),
    ("switch_on_umax_l1", "Switching On Conditions Umax phase 1"),
    ("switch_on_fmin_l1", "Switching On Conditions Fmin phase 1"),
    ("switch_on_fmax_l1", "Switching On Conditions Fmax phase 1"),
    ("switch_on_umin_l2", "Switching On Conditions Umin phase 2"),
    ("switch_on_umax_l2", "Switching On Conditions Umax phase 2"),
    ("battery_current_sensor", "Battery current sensor defective"),
    ("battery_booster", "Battery booster damaged"),
    ("switch_on_umin_l3", "Switching On Conditions Umin phase 3"),
    ("switch_on_umax_l3", "Switching On Conditions Umax phase 3"),
    ("phase_failure", "Voltage surge or average offset is too large on AC-terminals (phase failure detected)"),
    ("household_grid_disconnected", "Inverter is disconnected from the household grid"),
    ("plus_9v_dsp_pic_difference", "Difference of the measured +9V between DSP and PIC is too large"),
    ("error_1v5", "1.5V error"),
    ("error_2v5", "2.5V error"),
    ("measurement_difference_1v5", "1.5V measurement difference"),
    ("measurement_difference_2v5", "2.5V measurement difference"),
    ("battery_voltage_range", "The battery voltage is outside of the expected range"),
    ("pic_start", "Unable to start the main PIC software"),
    ("pic_bootloader", "PIC bootloader detected unexpectedly"),
    ("phase_position", "Phase position error (not 120° as expected)"),
    ("battery_overvoltage", "Battery overvoltage"),
    ("throttle_current_unstable", "Throttle current is unstable"),
    ("grid_voltage_difference_l1",
     "Difference between internally and externally measured grid voltage is too large in phase 1"),
    ("grid_voltage_difference_l2",
     "Difference between internally and externally measured grid voltage is too large in phase 2"),
    ("grid_voltage_difference_l3",
     "Difference between internally and externally measured grid voltage is too large in phase 3"),
    ("external_emergency_off", "External emergency turn-off signal is active"),
    ("battery_empty", "Battery is empty, not enough energy for standby"),
    ("battery_can_timeout", "CAN communication timeout with battery"),
    ("timing", "Timing problem"),
    ("battery_igbt_sink_overtemperature", "Battery IGBT's heat sink overtemperature"),
    ("battery_sink_temperature_high", "Battery heat sink temperature too high"),
    ("relay_box_internal", "Internal relais box error"),
    ("relay_box_pe_off", "Relais box PE off error"),
    ("relay_box_pe_on", "Relais box PE on error"),
    ("battery_internal", "Internal battery error"),
    ("parameter_changed", "Parameter changed"),
    ("island_building_failed", "3 attempts of island building are failing"),
    ("phase_to_phase_undervoltage", "Phase to phase undervoltage"),
    ("system_reset", "System reset detected"),
    ("update_detected", "Update detected"),
    ("frt_overvoltage", "FRT overvoltage"),
    ("frt_undervoltage", "FRT undervoltage"),
    ("igbt_l1_diode", "IGBT L1 free-wheeling diode defective"),
    ("igbt_l2_diode", "IGBT L2 free-wheeling diode defective"),
    ("igbt_l3_diode", "IGBT L3 free-wheeling diode defective"),
    ("single_phase_not_allowed", "Single-phase mode is activated but not allowed for this device class (e.g. 10K)"),
    ("island_detected", "Island detected"),
)
# fmt: on

#: Every fault rctclient documents, in bit order (bit 127 is not documented).
FAULTS: tuple[Fault, ...] = tuple(Fault(bit, name, text) for bit, (name, text) in enumerate(_TABLE))
FAULTS_BY_NAME: Mapping[str, Fault] = {f.name: f for f in FAULTS}
#: The documented faults of each word, in bit order.
FAULTS_BY_WORD: tuple[tuple[Fault, ...], ...] = tuple(tuple(f for f in FAULTS if f.word == w) for w in range(WORDS))


def fault(bit: int) -> Fault:
    """Return the fault of a bit (0..127); a bit rctclient does not document is named `bit_<n>`."""
    if 0 <= bit < len(FAULTS):
        return FAULTS[bit]
    return Fault(bit, f"bit_{bit}", "not documented by rctclient")


def word_value(raw: object) -> int | None:
    """Return a fault word as the unsigned 32-bit integer it is, or None for anything that is not one."""
    if isinstance(raw, bool) or not isinstance(raw, int):
        return None
    return raw & 0xFFFFFFFF if -(1 << 31) <= raw < (1 << 32) else None


def states(word: int, raw: object) -> Iterator[tuple[Fault, bool]]:
    """Yield (fault, set) for every documented bit of a word, then (fault, True) for each undocumented bit set.

    Nothing for a value that is no 32-bit word (a garbled reading says nothing about faults).
    """
    value = word_value(raw)
    if value is None or not 0 <= word < WORDS:
        return
    known = 0
    for entry in FAULTS_BY_WORD[word]:
        known |= entry.mask
        yield entry, bool(value & entry.mask)
    rest = value & ~known
    for offset in range(BITS_PER_WORD):
        if rest >> offset & 1:
            yield fault(word * BITS_PER_WORD + offset), True


def active(words: Mapping[int, object]) -> list[Fault]:
    """Return the faults set in the words given (word index -> value as read), in bit order."""
    return [entry for word in sorted(words) for entry, on in states(word, words[word]) if on]


def words_for(names: Iterable[str]) -> tuple[int, ...]:
    """Return the four words with the named faults set (`bit_<n>` names a bit by number): for the simulator."""
    words = [0] * WORDS
    for name in names:
        entry = FAULTS_BY_NAME.get(name)
        if entry is None and name.startswith("bit_") and name[4:].isdigit() and int(name[4:]) < WORDS * 32:
            entry = fault(int(name[4:]))
        if entry is None:
            raise ValueError(f"unknown fault {name!r} (names: rctmon.faults.FAULTS, or bit_<0..127>)")
        words[entry.word] |= entry.mask
    return tuple(words)


def faults_markdown() -> str:
    """Return the table of faults docs/metrics.md carries between its fault markers."""
    lines = ["| bit | word | `fault` | rctclient's description |", "| --- | --- | --- | --- |"]
    for entry in FAULTS:
        lines.append(f"| {entry.bit} | {entry.word} | `{entry.name}` | {entry.description} |")
    return "\n".join(lines) + "\n"
