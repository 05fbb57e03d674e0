"""The catalog: every row resolves, names follow the conventions, units and plausibility are decided here."""

from __future__ import annotations

import math
import re

import pytest
from rctclient.registry import REGISTRY

from rctmon import catalog
from rctmon.inventory import Inventory

FULL = Inventory(name="x", generators=("a", "b"), battery_modules=3, power_switch=True, complete=True)
BARE = Inventory(name="x", generators=("a",), battery_modules=0, power_switch=False, complete=True)
PROM_NAME = re.compile(r"^rctmon_[a-z][a-z0-9_]*$")
BASE_UNITS = tuple(f"_{word}" for word in catalog.UNITS)


def test_every_series_resolves_in_the_registry_and_only_element_views_share_an_object():
    for s in catalog.SERIES:
        assert REGISTRY.get_by_name(s.object_name).object_id == s.object_id
    for series in catalog.OBJECTS.values():
        if len(series) > 1:  # a module's cells: voltage, temperature, and the module's summaries of the voltages
            assert all(s.elements is not None for s in series), series[0].object_name
            assert len({(s.tier, s.row.needs) for s in series}) == 1, series[0].object_name
    assert set(catalog.OBJECTS) == {s.object_id for s in catalog.SERIES}


def test_metric_names_follow_prometheus_conventions():
    for name, rows in catalog.metric_families().items():
        assert PROM_NAME.match(name), name
        kinds = {r.kind for r in rows}
        assert len(kinds) == 1, f"{name} mixes kinds {kinds}"
        kind = kinds.pop()
        assert name.endswith("_total") == (kind is catalog.Kind.COUNTER), name
        assert name.endswith("_info") == (kind is catalog.Kind.INFO), name
        assert len({r.help for r in rows}) == 1, f"{name} has differing HELP texts"
        if "energy" in name:
            assert "_joules" in name, name
        stem = name.removesuffix("_total")
        if any(unit in stem for unit in BASE_UNITS):
            assert rows[0].unit is not None and stem.endswith("_" + rows[0].unit.word), name


def test_series_of_one_family_have_the_same_label_names_and_distinct_values():
    by_metric: dict[str, list[catalog.Series]] = {}
    for s in catalog.SERIES:
        if s.row.kind is not catalog.Kind.INFO:
            by_metric.setdefault(s.metric, []).append(s)
    for name, series in by_metric.items():
        assert len({s.label_names for s in series}) == 1, name
        label_sets = [labels for s in series for labels in s.sample_labels]
        assert len(set(label_sets)) == len(label_sets), name
        assert all(tuple(k for k, _ in labels) == series[0].label_names for labels in label_sets), name


def test_influx_fields_are_unique_per_measurement_and_tags():
    seen = set()
    for s in catalog.SERIES:
        for labels in s.sample_labels:
            key = (s.row.measurement, labels, s.row.field)
            assert key not in seen, key
            seen.add(key)


def test_inventory_enables_rows_per_generator_module_switch_and_external_generator():
    full = catalog.enabled_series(FULL)
    bare = catalog.enabled_series(BARE)
    modules = {dict(s.labels)["module"] for s in full if s.row.axis is catalog.MODULE}
    assert modules == {"0", "1", "2"}
    assert {dict(s.labels)["generator"] for s in full if s.row.axis is catalog.GENERATOR} == {"a", "b"}
    assert {dict(s.labels)["generator"] for s in bare if s.row.axis is catalog.GENERATOR} == {"a"}
    assert not any(s.row.needs in (catalog.Needs.BATTERY, catalog.Needs.POWER_SWITCH) for s in bare)
    assert any(s.metric == "rctmon_power_switch_grid_voltage_volts" for s in full)
    assert not any(s.metric.startswith("rctmon_external_") for s in full)
    external = catalog.enabled_series(Inventory(name="x", external_generator=True, complete=True))
    assert {s.metric for s in external if s.row.needs is catalog.Needs.EXTERNAL} == {
        "rctmon_external_power_watts", "rctmon_external_energy_day_joules", "rctmon_external_energy_month_joules",
        "rctmon_external_energy_year_joules", "rctmon_external_energy_joules_total"}


def test_modules_in_slots_that_are_not_the_first_are_the_ones_enabled():
    inventory = Inventory(name="x", modules=(0, 3, 5), complete=True)
    assert inventory.battery_modules == 3
    modules = {dict(s.labels)["module"] for s in catalog.enabled_series(inventory) if s.row.axis is catalog.MODULE}
    assert modules == {"0", "3", "5"}
    polled = set(catalog.enabled_objects(inventory))
    assert REGISTRY.get_by_name("battery.cells[5]").object_id in polled
    assert REGISTRY.get_by_name("battery.cells[1]").object_id not in polled


def test_an_object_several_series_read_is_polled_once():
    objects = catalog.enabled_objects(FULL)
    assert len(objects) == len(set(objects))
    assert set(objects) == {s.object_id for s in catalog.enabled_series(FULL)}


def test_required_metric_names_exist():
    families = catalog.metric_families()
    for name in ("rctmon_generator_power_watts", "rctmon_battery_state_of_charge_ratio",
                 "rctmon_battery_cell_voltage_volts", "rctmon_battery_cell_temperature_celsius",
                 "rctmon_battery_cell_resistance_ohms", "rctmon_battery_module_cell_voltage_spread_volts",
                 "rctmon_battery_module_cell_voltage_min_volts", "rctmon_battery_module_cell_voltage_max_volts",
                 "rctmon_external_power_watts", "rctmon_inverter_insulation_resistance_ohms"):
        assert name in families, name
    poles = {dict(r.labels)["pole"] for r in families["rctmon_inverter_insulation_resistance_ohms"]}
    assert poles == {"total", "positive", "negative"}


# --- units and plausibility ----------------------------------------------------------------------------------------


def value_of(name: str, raw: object) -> object:
    """Return the one value a scalar series yields from `raw`, or None when the catalog leaves it out."""
    samples = catalog.SERIES_BY_NAME[name].samples(raw)
    return samples[0][1] if samples else None


def test_conversion_to_base_units_and_feed_in_sign():
    assert value_of("energy.e_grid_feed_total", -2769942.25) == 2769942.25 * 3600  # real inverters count it negative
    assert value_of("energy.e_ac_day", -202.0) == -202.0 * 3600  # a real day counter may be negative; kept as it is
    assert value_of("android_description", "PS 6.0 BA3L") == "PS 6.0 BA3L"
    assert value_of("battery.soc", 0.5) == 0.5
    assert value_of("battery.charged_amp_hours", 2.0) == 7200.0


def test_display_units_are_what_people_read():
    def shown(name: str, raw: object) -> object:
        return catalog.SERIES_BY_NAME[name].display_samples(raw)[0][1]

    assert shown("energy.e_ac_total", 1000.0) == pytest.approx(1.0)  # kWh
    assert shown("battery.soc", 0.5) == 50.0  # %
    assert shown("iso_struct.Riso", 2.5e6) == pytest.approx(2500.0)  # kOhm
    assert catalog.SERIES_BY_NAME["iso_struct.Riso"].row.display_unit.symbol == "kΩ"


@pytest.mark.parametrize("name, raw", [
    ("g_sync.p_ac_grid_sum_lp", math.nan), ("g_sync.p_ac_grid_sum_lp", math.inf),
    ("g_sync.p_ac_grid_sum_lp", -math.inf), ("g_sync.p_ac_grid_sum_lp", 1e13), ("g_sync.p_ac_grid_sum_lp", "12"),
    ("energy.e_ac_total", 1e13),  # Wh: 3.6e16 J, more than the world makes in a day
    ("energy.e_ac_total", 2 ** 63), ("energy.e_ac_total", 10 ** 400),  # too large even for a float
    ("prim_sm.state", 2 ** 63), ("prim_sm.state", None), ("battery.soc", 1e30), ("grid_pll[0].f", -50.0),
    ("db.temp1", 3.4e38), ("iso_struct.Riso", -1.0),
])
def test_implausible_values_are_left_out(name: str, raw: object):
    assert value_of(name, raw) is None
    assert catalog.rejected(catalog.SERIES_BY_NAME[name].object_id, raw) == 1


@pytest.mark.parametrize("name, raw", [
    ("energy.e_ac_day", -202.20223999023438),  # recorded from a real inverter
    ("energy.e_grid_feed_total", -2769942.25), ("energy.e_load_total", 7210942.0), ("battery.soc", 0.0),
    ("prim_sm.state", 13), ("prim_sm.island_flag", True), ("fault[0].flt", 2 ** 32 - 1), ("db.temp1", -20.0),
    ("g_sync.p_ac_grid_sum_lp", -712.19), ("iso_struct.Riso", 3.2e6), ("android_description", "PS 6.0 BA3L"),
    ("rb485.version_main", 0x0204),
])
def test_real_values_are_kept(name: str, raw: object):
    assert value_of(name, raw) is not None
    assert catalog.rejected(catalog.SERIES_BY_NAME[name].object_id, raw) == 0


def test_every_unit_of_every_row_has_a_range_that_holds_ordinary_values():
    for row in catalog.ROWS:
        low, high = row.bounds
        assert low < high and math.isfinite(low) and math.isfinite(high), row.metric
        if row.kind is not catalog.Kind.INFO:
            assert catalog.plausible(row, max(low, min(high, 1.0))), row.metric


# --- rows with one value per cell ---------------------------------------------------------------------------------


def cells(voltages_mv: list[int], temperatures: list[int] | None = None) -> tuple[tuple[int, int], ...]:
    temperatures = temperatures or [25] * len(voltages_mv)
    return tuple(zip(voltages_mv, temperatures))


def test_one_cell_row_yields_a_value_per_cell_and_the_summaries_one_per_module():
    voltages = [3300 + c for c in range(24)]
    voltages[7] = 3281
    raw = cells(voltages)
    series = catalog.OBJECTS[catalog.SERIES_BY_NAME["battery.cells[2]"].object_id]
    by_metric = {s.metric: s.samples(raw) for s in series}
    volts = by_metric["rctmon_battery_cell_voltage_volts"]
    assert len(volts) == 24
    assert volts[7] == ((("module", "2"), ("cell", "7")), 3.281)
    assert by_metric["rctmon_battery_module_cell_voltage_min_volts"] == [((("module", "2"),), 3.281)]
    assert by_metric["rctmon_battery_module_cell_voltage_max_volts"] == [((("module", "2"),), 3.323)]
    assert by_metric["rctmon_battery_module_cell_voltage_spread_volts"] == [((("module", "2"),), 0.042)]
    assert all(v == 25 for _, v in by_metric["rctmon_battery_cell_temperature_celsius"])


def test_an_implausible_cell_is_left_out_of_its_row_and_of_the_summaries():
    raw = cells([3300] * 23 + [65535], [25] * 22 + [255, 26])  # 65.535 V: no cell; 255 degC: no sensor
    series = catalog.OBJECTS[catalog.SERIES_BY_NAME["battery.cells[0]"].object_id]
    by_metric = {s.metric: s.samples(raw) for s in series}
    assert len(by_metric["rctmon_battery_cell_voltage_volts"]) == 23
    assert len(by_metric["rctmon_battery_cell_temperature_celsius"]) == 23
    assert by_metric["rctmon_battery_module_cell_voltage_spread_volts"][0][1] == 0.0
    assert catalog.rejected(series[0].object_id, raw) == 2


@pytest.mark.parametrize("raw", [None, 3.3, "cells", (), ((3300,),) * 24, (("a", "b"),) * 24, ((None, None),) * 24,
                                 ((True, 25),) * 24, ((3300, 25, 0, 9),) * 3])
def test_malformed_cell_readings_yield_nothing_that_is_not_a_cell(raw: object):
    series = catalog.OBJECTS[catalog.SERIES_BY_NAME["battery.cells[0]"].object_id]
    for s in series:
        for labels, value in s.samples(raw):
            assert isinstance(value, (int, float)) and math.isfinite(value)
            assert dict(labels)["module"] == "0"


def test_every_module_slot_has_its_cells_and_their_resistances():
    for m in range(7):
        metrics = {s.metric for s in catalog.OBJECTS[REGISTRY.get_by_name(f"battery.cells[{m}]").object_id]}
        assert "rctmon_battery_cell_voltage_volts" in metrics
        resist = catalog.OBJECTS[REGISTRY.get_by_name(f"battery.cells_resist[{m}]").object_id]
        assert [s.metric for s in resist] == ["rctmon_battery_cell_resistance_ohms"]
        assert all(s.tier is catalog.Tier.SLOW for s in resist)
