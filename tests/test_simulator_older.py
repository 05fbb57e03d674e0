"""Every object the older rctmon (svalouch/rctmon) reads: the simulator answers each one plausibly."""

from __future__ import annotations

import math
from typing import Any, Callable
from collections.abc import Iterator

import pytest

from rctmon.simulator import SimulatorThread
from rctmon.simulator.values import BATTERY_TYPE_NONE, BATTERY_TYPE_RCT, resolve_all
from simclient import IDS, Client, connections, simulators

#: What the older rctmon's latest stored source reads (its `add_ids` calls), by file. The same list, with commits,
#: is in the notes for the catalog (OLDER_RCTMON_OBJECTS.md).
OLDER_RCTMON_OBJECTS: dict[str, tuple[str, ...]] = {
    "src/rctmon/device_manager.py": (
        "android_description", "inverter_sn", "svnversion", "parameter_file", "dc_conv.dc_conv_struct[0].enabled",
        "dc_conv.dc_conv_struct[1].enabled", "rb485.available", "power_mng.battery_type",
        "g_sync.p_ac_load_sum_lp", "g_sync.p_ac_load[0]", "g_sync.p_ac_load[1]", "g_sync.p_ac_load[2]",
        "g_sync.p_ac_grid_sum_lp", "g_sync.p_ac_sc[0]", "g_sync.p_ac_sc[1]", "g_sync.p_ac_sc[2]",
        "g_sync.u_l_rms[0]", "g_sync.u_l_rms[1]", "g_sync.u_l_rms[2]", "g_sync.u_ptp_rms[0]",
        "g_sync.u_ptp_rms[1]", "g_sync.u_ptp_rms[2]", "grid_pll[0].f", "db.temp1", "db.temp2", "db.core_temp",
        "prim_sm.state", "prim_sm.island_flag", "fault[0].flt", "fault[1].flt", "fault[2].flt", "fault[3].flt",
        "iso_struct.Riso", "iso_struct.Rp", "iso_struct.Rn", "energy.e_ac_day", "energy.e_ac_month",
        "energy.e_ac_year", "energy.e_ac_total", "energy.e_grid_feed_total", "energy.e_grid_load_total",
        "energy.e_load_total", "rb485.version_main", "rb485.version_boot", "rb485.u_l_grid[0]",
        "rb485.u_l_grid[1]", "rb485.u_l_grid[2]", "rb485.f_grid[0]", "rb485.f_grid[1]", "rb485.f_grid[2]",
        "rb485.f_wr[0]", "rb485.f_wr[1]", "rb485.f_wr[2]", "g_sync.u_sg_avg[0]",
        "dc_conv.dc_conv_struct[0].p_dc_lp", "dc_conv.dc_conv_struct[0].u_target",
        "dc_conv.dc_conv_struct[0].mpp.mpp_step", "energy.e_dc_total[0]", "g_sync.u_sg_avg[1]",
        "dc_conv.dc_conv_struct[1].p_dc_lp", "dc_conv.dc_conv_struct[1].u_target",
        "dc_conv.dc_conv_struct[1].mpp.mpp_step", "energy.e_dc_total[1]",
    ),
    "src/rctmon/battery_manager.py": (
        "battery.bms_sn", "battery.module_sn[0]", "battery.module_sn[1]", "battery.module_sn[2]",
        "battery.module_sn[3]", "battery.module_sn[4]", "battery.module_sn[5]", "battery.module_sn[6]",
        "power_mng.soc_min", "power_mng.soc_min_island", "power_mng.soc_max", "battery.soh", "battery.soc",
        "battery.soc_target", "adc.u_acc", "battery.temperature", "acc_conv.i_acc_lp_fast", "battery.bat_status",
        "battery.bat_impedance.impedance_fine", "battery.discharged_amp_hours", "battery.stored_energy",
        "battery.used_energy", "battery.efficiency", "battery.cycles", "g_sync.p_acc_lp", "battery.voltage",
        "power_mng.u_acc_mix_lp", "power_mng.battery_power", "battery.current", "battery.status",
        "battery.status2", "power_mng.state", "battery.stack_cycles[0]", "battery.stack_cycles[1]",
        "battery.stack_cycles[2]", "battery.stack_cycles[3]", "battery.stack_cycles[4]", "battery.stack_cycles[5]",
        "battery.stack_cycles[6]",
    ),
}
ALL = tuple(name for names in OLDER_RCTMON_OBJECTS.values() for name in names)
#: Objects whose plausible value, on a healthy installation, is zero or empty.
ZERO_WHEN_HEALTHY = {"prim_sm.island_flag", "fault[0].flt", "fault[1].flt", "fault[2].flt", "fault[3].flt",
                     "battery.status", "battery.status2", "battery.bat_status"}
EMPTY_SLOTS = {f"battery.{kind}[{m}]" for kind in ("module_sn", "stack_cycles") for m in range(3, 7)}


@pytest.fixture
def simulator() -> Iterator[Callable[..., SimulatorThread]]:
    with simulators() as start:
        yield start


@pytest.fixture
def clients() -> Iterator[Callable[[int], Client]]:
    with connections() as connect:
        yield connect


def test_the_list_is_the_registrys() -> None:
    assert len(ALL) == len(set(ALL)) == 102
    assert not [name for name in ALL if name not in IDS]


def test_every_object_has_a_value_of_its_own_not_a_registry_default() -> None:
    resolved = resolve_all()
    assert not [name for name in ALL if resolved[IDS[name]].rule.value is None]


def test_every_object_answers_plausibly_on_a_full_installation(
        simulator: Callable[..., SimulatorThread], clients: Callable[[int], Client]) -> None:
    sim = simulator(generators=2, battery_modules=3, power_switch=True, external_generator=True)
    values = clients(sim.port).read(ALL)
    for name in ALL:
        value: Any = values[name]
        assert value in sim.sent_values(name)
        if name in ZERO_WHEN_HEALTHY or name in EMPTY_SLOTS:
            assert not value, name
        else:
            assert value, name  # answered with something, not a zero of its type
        if isinstance(value, float):
            assert math.isfinite(value), name
    for i in range(2):
        assert values[f"g_sync.u_sg_avg[{i}]"] == pytest.approx(
            values[f"dc_conv.dc_conv_struct[{i}].u_target"] - 1.5, abs=5.0)
    assert values["power_mng.battery_type"] == BATTERY_TYPE_RCT
    assert values["power_mng.soc_min"] <= values["power_mng.soc_min_island"] < values["power_mng.soc_max"] <= 1.0
    assert 0.85 < values["battery.efficiency"] < 1.0
    assert values["battery.efficiency"] == pytest.approx(
        values["battery.used_energy"] / values["battery.stored_energy"], rel=1e-3)
    assert 0.05 < values["battery.bat_impedance.impedance_fine"] < 1.0  # ohm: 72 cells of about 2 milliohm and more
    for name in ("adc.u_acc", "power_mng.u_acc_mix_lp"):
        assert values[name] == pytest.approx(values["battery.voltage"], abs=3.0), name
    assert values["acc_conv.i_acc_lp_fast"] == pytest.approx(values["battery.current"], abs=3.0)
    assert values["power_mng.battery_power"] == pytest.approx(values["g_sync.p_acc_lp"], abs=300.0)


def test_the_insulation_resistances_are_megaohms_and_the_total_is_both_poles_in_parallel(
        simulator: Callable[..., SimulatorThread], clients: Callable[[int], Client]) -> None:
    sim = simulator()
    values = clients(sim.port).read(["iso_struct.Riso", "iso_struct.Rp", "iso_struct.Rn"])
    total, positive, negative = values["iso_struct.Riso"], values["iso_struct.Rp"], values["iso_struct.Rn"]
    assert 1e6 < total < min(positive, negative) and max(positive, negative) < 1e8
    assert total == pytest.approx(positive * negative / (positive + negative), rel=1e-6)
    assert values == {name: sim.sent_values(name)[-1] for name in values}


def test_without_a_battery_the_battery_type_says_so_and_battery_values_are_zero(
        simulator: Callable[..., SimulatorThread], clients: Callable[[int], Client]) -> None:
    sim = simulator(battery_modules=0)
    names = ["power_mng.battery_type", "battery.efficiency", "battery.bat_impedance.impedance_fine", "adc.u_acc",
             "power_mng.battery_power", "battery.cells[0]"]
    values = clients(sim.port).read(names)
    assert values["power_mng.battery_type"] == BATTERY_TYPE_NONE
    assert [values[name] for name in names[1:5]] == [0.0] * 4
    assert {c.voltage_mv for c in values["battery.cells[0]"]} == {0}
