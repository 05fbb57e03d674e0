"""Every output shows the same values and leaves out the same ones: units and plausibility are the catalog's.

One reading at a time (edge values: NaN, infinities, 1e13, negative energy, huge integers, a string where a number
belongs, a module with a broken cell) goes through the Prometheus exposition, the InfluxDB line protocol, the MQTT
payloads and `rctmon inventory`'s display; what each shows is mapped back to (catalog series, labels, value in the
base unit) and the four must be equal.
"""

from __future__ import annotations

import json
import math
import time

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from rctmon import catalog
from rctmon.collector.oneshot import _display
from rctmon.config import Config
from rctmon.exporters import homeassistant as ha
from rctmon.exporters import mqtt
from rctmon.exporters.lineprotocol import LineEncoder
from rctmon.exporters.prometheus import State, build_registry
from rctmon.inventory import Inventory
from rctmon.messages import ReadingBatch

INVENTORY = Inventory(name="x", serial="SN1", generators=("a", "b"), battery_modules=3, power_switch=True,
                      external_generator=True, complete=True)
Shown = dict[tuple[str, catalog.Labels], float]

_CELLS = tuple((3300 + c, 25) for c in range(24))
EDGE: list[tuple[str, object]] = [
    ("g_sync.p_ac_grid_sum_lp", math.nan), ("g_sync.p_ac_grid_sum_lp", math.inf),
    ("g_sync.p_ac_grid_sum_lp", -math.inf), ("g_sync.p_ac_grid_sum_lp", 1e13), ("g_sync.p_ac_grid_sum_lp", "12"),
    ("g_sync.p_ac_grid_sum_lp", -712.1903076171875),
    ("energy.e_ac_day", -202.20223999023438), ("energy.e_ac_day", 1e13),
    ("energy.e_ac_total", 2 ** 63), ("energy.e_ac_total", 10 ** 400), ("energy.e_ac_total", 5901940.0),
    ("energy.e_grid_feed_total", -2769942.25), ("prim_sm.state", 2 ** 63), ("prim_sm.state", 13),
    ("battery.soc", 1e30), ("battery.soc", 0.455), ("iso_struct.Riso", -1.0), ("iso_struct.Riso", 3.2e6),
    ("io_board.s0_external_power", 350.5), ("battery.bat_impedance.impedance_fine", 0.2),
    ("battery.cells[1]", _CELLS[:5] + ((65535, 25), (3290, 255)) + _CELLS[7:]),
    ("battery.cells[1]", _CELLS), ("battery.cells[1]", "not cells"),
    ("battery.cells_resist[2]", tuple((1.5 + c / 10,) for c in range(24))),
    ("battery.cells_resist[2]", ((math.nan,),) * 24),
]


def series_of(name: str) -> tuple[catalog.Series, ...]:
    return catalog.OBJECTS[catalog.SERIES_BY_NAME[name].object_id]


def prometheus(object_id: int, raw: object) -> Shown:
    config = Config()
    config.prometheus.exposition = True
    state = State()
    state.set_inventory(INVENTORY)
    state.add_batch(ReadingBatch(((object_id, raw, time.time_ns()),)))  # type: ignore[arg-type]
    text = generate_latest(build_registry(state, config)).decode()
    by_metric = {s.metric: s for s in catalog.OBJECTS[object_id]}
    shown: Shown = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in by_metric:
                labels = tuple((k, sample.labels[k]) for k in by_metric[sample.name].label_names)
                shown[(sample.name, labels)] = sample.value
    return shown


def influxdb(object_id: int, raw: object) -> Shown:
    by_field = {(s.row.measurement, s.row.field): s for s in catalog.OBJECTS[object_id]}
    shown: Shown = {}
    for line in LineEncoder("x").encode((object_id, raw, 1)):  # type: ignore[arg-type]
        head, fields, _ = line.decode().split(" ")
        measurement, *tags = head.split(",")
        tag = dict(t.split("=") for t in tags)
        for field in fields.split(","):
            key, value = field.split("=")
            series = by_field[(measurement, key)]
            labels = tuple((k, tag[k]) for k in series.label_names)
            shown[(series.metric, labels)] = float(value.rstrip("i"))
    return shown


def mqtt_payloads(object_id: int, raw: object) -> Shown:
    shown: Shown = {}
    for series in catalog.OBJECTS[object_id]:
        unit = series.row.display_unit
        for labels, text in mqtt.payloads(series, raw):
            assert mqtt.value_path(series, labels)  # every value has a topic
            shown[(series.metric, labels)] = float(text) / (unit.factor if unit else 1.0)
    return shown


def inventory_display(object_id: int, raw: object) -> set[str]:
    """Return the metrics `rctmon inventory` shows a value for (not "(implausible value)")."""
    return {s.metric for s in catalog.OBJECTS[object_id] if "implausible" not in _display(s, raw)}


@pytest.mark.parametrize("name, raw", EDGE, ids=[f"{n}={r!r:.30}" for n, r in EDGE])
def test_every_output_shows_the_same_values_and_drops_the_same(name: str, raw: object) -> None:
    object_id = catalog.SERIES_BY_NAME[name].object_id
    expected: Shown = {(s.metric, labels): float(v) for s, labels, v in catalog.samples(object_id, raw)}
    assert prometheus(object_id, raw) == expected
    assert influxdb(object_id, raw) == pytest.approx(expected, rel=1e-12)
    assert mqtt_payloads(object_id, raw) == pytest.approx(expected, rel=1e-6)  # 7 significant digits
    assert inventory_display(object_id, raw) == {metric for metric, _ in expected}


def test_the_edge_values_are_decided_as_a_person_would() -> None:
    def kept(name: str, raw: object) -> Shown:
        object_id = catalog.SERIES_BY_NAME[name].object_id
        return {(s.metric, labels): v for s, labels, v in catalog.samples(object_id, raw)}  # type: ignore[misc]

    assert not kept("g_sync.p_ac_grid_sum_lp", math.nan) and not kept("g_sync.p_ac_grid_sum_lp", 1e13)
    assert not kept("energy.e_ac_total", 10 ** 400) and not kept("prim_sm.state", 2 ** 63)
    assert kept("energy.e_ac_day", -202.20223999023438) == {
        ("rctmon_inverter_energy_day_joules", ()): -202.20223999023438 * 3600}
    assert kept("energy.e_grid_feed_total", -2769942.25) == {
        ("rctmon_grid_feed_energy_joules_total", ()): 2769942.25 * 3600}
    broken = kept("battery.cells[1]", EDGE[20][1])
    volts = {labels for metric, labels in broken if metric == "rctmon_battery_cell_voltage_volts"}
    temperatures = {labels for metric, labels in broken if metric == "rctmon_battery_cell_temperature_celsius"}
    assert len(volts) == len(temperatures) == 23
    assert (("module", "1"), ("cell", "5")) not in volts and (("module", "1"), ("cell", "6")) not in temperatures
    assert broken[("rctmon_battery_module_cell_voltage_min_volts", (("module", "1"),))] == 3.29


# --- MQTT topics and Home Assistant entities of cells and the external generator ------------------------------------


def discovery() -> dict[str, dict[str, object]]:
    configs = ha.discovery_configs(INVENTORY, "homeassistant", lambda s, labels: "p/" + mqtt.value_path(s, labels),
                                   "p/availability", {t: 10.0 for t in catalog.Tier}, {})
    return {json.loads(p)["state_topic"]: json.loads(p) for p in configs.values()}


def test_a_cell_has_a_topic_and_an_entity_of_its_module_that_is_disabled_by_default() -> None:
    (voltage,) = [s for s in series_of("battery.cells[1]") if s.metric == "rctmon_battery_cell_voltage_volts"]
    labels = voltage.element_labels[5]
    assert mqtt.value_path(voltage, labels) == "battery_cell/1/5/voltage"
    config = discovery()["p/battery_cell/1/5/voltage"]
    assert config["name"] == "Cell 5 voltage" and config["enabled_by_default"] is False
    assert config["unique_id"] == "rctmon_SN1_battery_cell_1_5_voltage"
    assert config["unit_of_measurement"] == "V" and config["suggested_display_precision"] == 3
    assert config["device"]["identifiers"] == ["rctmon_SN1_battery_module_1"]  # type: ignore[index]
    resistance = discovery()["p/battery_cell/2/23/resistance"]
    assert (resistance["name"], resistance["unit_of_measurement"]) == ("Cell 23 resistance", "mΩ")
    assert [text for _, text in mqtt.payloads(series_of("battery.cells_resist[2]")[0], EDGE[23][1])][:2] == \
        ["1.5", "1.6"]


def test_a_module_has_enabled_entities_for_its_lowest_highest_and_spread() -> None:
    configs = discovery()
    for field, unit in (("cell_voltage_min", "V"), ("cell_voltage_max", "V"), ("cell_voltage_spread", "mV")):
        config = configs[f"p/battery_module/0/{field}"]
        assert "enabled_by_default" not in config and config["unit_of_measurement"] == unit
    assert configs["p/battery_module/0/cell_voltage_spread"]["name"] == "Cell voltage spread"
    cells = [c for c in configs.values() if c.get("enabled_by_default") is False]
    assert len(cells) == 3 * 24 * 3  # three modules of 24 cells, three values each
    seven = Inventory(name="x", serial="SN1", battery_modules=7, complete=True)
    enabled = [s for s in catalog.enabled_series(seven) if not s.row.per_element and s.row.axis is catalog.MODULE]
    assert len(enabled) < 100  # what a 7-module battery adds to the entity list by default


def test_the_external_generator_has_energy_sensors_the_energy_dashboard_takes() -> None:
    configs = discovery()
    total = configs["p/external/energy_total"]
    assert (total["name"], total["device_class"], total["state_class"], total["unit_of_measurement"]) == (
        "External generator energy total", "energy", "total_increasing", "kWh")
    assert configs["p/external/power"]["device_class"] == "power"
    bare = ha.discovery_configs(Inventory(name="x", serial="SN1", complete=True), "homeassistant",
                                lambda s, labels: "p/" + mqtt.value_path(s, labels), "p/a", {}, {})
    assert not [t for t in bare if "external" in t]


def test_a_family_is_built_again_only_when_one_of_its_readings_is_new() -> None:
    from rctmon.exporters.prometheus import FAMILIES, Freshness, Memo, inverter_families

    state = State()
    cells_id = catalog.SERIES_BY_NAME["battery.cells[0]"].object_id
    power_id = catalog.SERIES_BY_NAME["g_sync.p_ac_grid_sum_lp"].object_id
    state.add_batch(ReadingBatch(((cells_id, _CELLS, time.time_ns()), (power_id, 100.0, time.time_ns()))))
    helps = {f.name: f.help for f in FAMILIES}
    memo: Memo = {}

    def render() -> dict[str, object]:
        families = inverter_families(state.snapshot().values, "x", helps, Freshness(Config().device.intervals), memo)
        return {m.name: m for m in families}

    first = render()
    state.add_batch(ReadingBatch(((power_id, 200.0, time.time_ns()),)))
    second = render()
    assert second["rctmon_battery_cell_voltage_volts"] is first["rctmon_battery_cell_voltage_volts"]
    assert second["rctmon_grid_power_watts"] is not first["rctmon_grid_power_watts"]
    assert second["rctmon_grid_power_watts"].samples[0].value == 200.0
    state.add_batch(ReadingBatch(((cells_id, _CELLS[::-1], time.time_ns()),)))
    third = render()["rctmon_battery_cell_voltage_volts"]
    assert third is not first["rctmon_battery_cell_voltage_volts"]
    assert third.samples[0].value == 3.323  # cell 0 now has what cell 23 had


@pytest.mark.parametrize("accept", ["text/plain", "application/openmetrics-text; version=1.0.0"])
def test_the_family_encoder_renders_byte_for_byte_what_prometheus_client_renders(accept: str) -> None:
    from prometheus_client.exposition import choose_encoder

    from rctmon.exporters.prometheus import FamilyEncoder

    config = Config()
    config.prometheus.exposition = True
    state = State()
    state.set_inventory(INVENTORY)
    registry = build_registry(state, config)
    encode, content_type = FamilyEncoder().choose(accept)
    reference, reference_type = choose_encoder(accept)
    now = time.time_ns()
    cells = catalog.SERIES_BY_NAME["battery.cells[0]"].object_id
    power = catalog.SERIES_BY_NAME["g_sync.p_ac_grid_sum_lp"].object_id
    for readings in [((cells, _CELLS, now), (power, 1.0, now)), ((power, 2.0, now + 1),),
                     ((cells, _CELLS[::-1], now + 2),), ((power, 3.0, now + 3),)]:
        state.add_batch(ReadingBatch(readings))  # type: ignore[arg-type]
        assert content_type == reference_type
        ours, theirs = encode(registry), reference(registry)
        assert same_but_own_usage(ours) == same_but_own_usage(theirs)
        assert b"rctmon_battery_cell_voltage_volts" in ours and ours.count(b"\n") == theirs.count(b"\n")


def same_but_own_usage(exposition: bytes) -> list[bytes]:
    """Return the lines, but those of the process' own CPU time and memory, which move between two renderings."""
    return [line for line in exposition.split(b"\n") if b'process="prometheus"' not in line]
